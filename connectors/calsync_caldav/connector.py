"""The CalDAV :class:`Connector`: incremental pull, expansion, conditional writes.

Pull: RFC 6578 ``sync-collection`` with the stored token, asking for the changed objects'
data in the same answer: one request per calendar, changes or not (servers that leave
calendar-data out get a ``calendar-multiget`` after it). Servers without it get the
fallback: ``getctag`` (one request when nothing changed), then an etag listing compared
with the etags carried in the token. Tokens are versioned strings::

    caldav1:sync:<server sync-token>
    caldav1:sync-recheck:<base64(zlib(json {"token": ..., "recheck": [href, ...]}))>
    caldav1:ctag:<base64(zlib(json {"ctag": ..., "etags": {href: etag}}))>

(``sync-recheck``: a server token plus objects the next pull reads again, see below.)

Write: deterministic href ``<calendar-url>/<key>.ics``; PUT with ``If-None-Match: *`` to
create, ``If-Match`` to update and delete. Up to ``sync.calendar_write_concurrency`` writes
to one calendar run at once; a write the server refuses as locked (423: Xandikos takes one
at a time) is sent again and that calendar's writes go one at a time (``writegate``).

Own writes and tokens: some servers (Xandikos) use a hash of the collection's state as
sync-token and answer with the difference between two states, so an object created and
deleted after a token is never reported, and a token recurs when a state does. A token
taken *before* calsync's writes would thus hide a later delete of a copy it wrote. After
the engine's writes, :meth:`CaldavConnector.token_after_writes` returns a token that covers
them (one request), so any process pulling from it later sees what happens to those copies.
Changes by others that the server lists in between are not lost: the token then names them
for the next pull to read again (``sync-recheck``; in a ctag token their etags are blanked).

A full listing has no time-range: every object is listed and parsed (events outside the
window come back with no occurrences), and each external event carries its iCalendar text
in ``RemoteEvent.source`` so :meth:`CaldavConnector.expand` can re-expand it as the window
slides. A collection that answers 404/410 raises ``CalendarGone``.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import logging
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urljoin

import httpx

from calsync.errors import (
    AlreadyExists,
    CalendarGone,
    CalsyncError,
    PreconditionFailed,
    ProviderError,
    ProviderUnavailable,
    SyncError,
    SyncTokenInvalid,
)
from calsync.ical import ParseOptions, parse_resource, unreadable_reason
from calsync.sync.connector import (
    ChangeSet,
    Occurrence,
    OutgoingEvent,
    Quarantined,
    RemoteCalendar,
    RemoteEvent,
    Window,
)
from calsync_caldav import davxml
from calsync_caldav.davxml import CS, DAV, norm_href, q
from calsync_caldav.discovery import find_home, list_collections
from calsync_caldav.render import render_event
from calsync_caldav.transport import DavSession
from calsync_caldav.writegate import LOCKED, PROCESS_GATE, WriteGate

log = logging.getLogger("calsync.connectors.caldav")
TOKEN_PREFIX = "caldav1:"
MULTIGET_BATCH = 200
_NOT_SUPPORTED = (400, 403, 404, 405, 415, 422, 501)
_GONE = (404, 410)


def encode_ctag_token(ctag: str | None, etags: dict[str, str]) -> str:
    blob = json.dumps({"ctag": ctag, "etags": etags}, separators=(",", ":")).encode()
    return TOKEN_PREFIX + "ctag:" + base64.urlsafe_b64encode(zlib.compress(blob, 6)).decode()


def decode_ctag_token(token: str) -> tuple[str | None, dict[str, str]]:
    raw = token[len(TOKEN_PREFIX + "ctag:"):]
    data = json.loads(zlib.decompress(base64.urlsafe_b64decode(raw.encode())))
    return data.get("ctag"), dict(data.get("etags") or {})


RECHECK_PREFIX = TOKEN_PREFIX + "sync-recheck:"


def encode_recheck_token(server_token: str, hrefs: set[str]) -> str:
    blob = json.dumps({"token": server_token, "recheck": sorted(hrefs)},
                      separators=(",", ":")).encode()
    return RECHECK_PREFIX + base64.urlsafe_b64encode(zlib.compress(blob, 6)).decode()


def decode_recheck_token(token: str) -> tuple[str, list[str]]:
    raw = token[len(RECHECK_PREFIX):]
    data = json.loads(zlib.decompress(base64.urlsafe_b64decode(raw.encode())))
    return str(data["token"]), [str(h) for h in data.get("recheck") or []]


class WriteLedger:
    """What this process wrote to each calendar since its recent pulls of it.

    For each of the last few tokens a pull returned, the etag every later write got. A
    pull *with one of those tokens* is then known to come after those writes:
    an object whose etag is still the one the write got is calsync's own echo (the link
    already holds it: not fetched, not reported); an object written since but absent from
    the server's answer is fetched to check whether it is gone (some servers leave out
    objects created and deleted after a token, and state-hash tokens can repeat). With any
    other token the ledger is ignored. Lost on restart, which only costs fetches.
    """

    def __init__(self, calendars: int = 10_000, tokens_per_calendar: int = 8) -> None:
        self._calendars: OrderedDict[str, OrderedDict[str, dict[str, str | None]]] = \
            OrderedDict()
        self._limit = calendars
        self._per_calendar = tokens_per_calendar
        self._lock = threading.Lock()

    def pulled(self, calendar_id: str, token: str | None) -> None:
        """A pull of ``calendar_id`` returned ``token``: later writes follow it."""
        if token is None:
            return
        with self._lock:
            tokens = self._calendars.setdefault(calendar_id, OrderedDict())
            self._calendars.move_to_end(calendar_id)
            tokens.setdefault(token, {})  # a token seen again (state-hash tokens) keeps
            tokens.move_to_end(token)        # the writes made after its first pull
            while len(tokens) > self._per_calendar:
                tokens.popitem(last=False)
            while len(self._calendars) > self._limit:
                self._calendars.popitem(last=False)

    def wrote(self, calendar_id: str, url: str, etag: str | None) -> None:
        """A write (etag) or a delete (None) of ``url``, after every pull held."""
        with self._lock:
            for writes in self._calendars.get(calendar_id, {}).values():
                writes[url] = etag

    def forget(self) -> None:
        """Drop everything (what a process restart does)."""
        with self._lock:
            self._calendars.clear()

    def since(self, calendar_id: str, token: str) -> dict[str, str | None]:
        """The writes made after the pull that returned ``token`` ({} when unknown)."""
        with self._lock:
            tokens = self._calendars.get(calendar_id)
            return dict(tokens.get(token) or {}) if tokens is not None else {}


PROCESS_LEDGER = WriteLedger()


class CaldavConnector:
    """One CalDAV account. ``url`` is where discovery starts (or the home set found)."""

    # The engine runs up to sync.calendar_write_concurrency writes to one calendar at
    # once: the httpx client, the ledger and the write gate are thread-safe, and a server
    # that refuses concurrent writes (Xandikos: 423 Locked) gets them one at a time
    # (calsync_caldav.writegate).
    parallel_writes = True

    def __init__(self, session: DavSession, url: str, parse_options: ParseOptions, *,
                 use_sync_collection: bool = True,
                 clock: Callable[[], dt.datetime] | None = None,
                 ledger: WriteLedger | None = None,
                 gate: WriteGate | None = None) -> None:
        self.session = session
        self.ledger = PROCESS_LEDGER if ledger is None else ledger
        self.gate = PROCESS_GATE if gate is None else gate
        self.url = url
        self.parse_options = parse_options
        self.use_sync_collection = use_sync_collection
        self._clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))
        self._home: str | None = None

    # -- calendars ---------------------------------------------------------------------
    def home(self) -> str:
        if self._home is None:
            self._home = find_home(self.session, self.url)
        return self._home

    def list_calendars(self) -> list[RemoteCalendar]:
        """Event calendars of the home set; ids are canonical collection URLs."""
        return list_collections(self.session, self.home())

    # -- helpers -----------------------------------------------------------------------
    def _ledger_key(self, calendar_id: str) -> str:
        # per account: two connections sharing one calendar each see the other's writes
        return f"{self.session.label}\n{calendar_id}"

    def _abs(self, calendar_id: str, remote_id: str) -> str:
        return urljoin(calendar_id, remote_id)

    def href_for_key(self, calendar_id: str, key: str) -> str:
        return norm_href(calendar_id.rstrip("/") + "/" + quote(key, safe="") + ".ics")

    def _report(self, calendar_id: str, body: bytes, depth: str, what: str) -> httpx.Response:
        return self.session.request("REPORT", calendar_id, body=body, depth=depth, what=what)

    def _gone(self, calendar_id: str, status: int, what: str) -> CalendarGone:
        return CalendarGone(
            f"{self.session.label}: the calendar at {calendar_id} no longer exists on the "
            f"server (HTTP {status} to {what}); choose another calendar in its place or "
            f"remove it from the connection (calsync calendars set)",
            calendar=calendar_id, url=calendar_id, status=status)

    def _multistatus(self, resp: httpx.Response, calendar_id: str,
                     what: str) -> davxml.Multistatus:
        """The multistatus a request on the collection ``calendar_id`` answered."""
        if resp.status_code in _GONE:
            raise self._gone(calendar_id, resp.status_code, what)
        if resp.status_code != 207:
            raise self.session.unexpected(resp, calendar_id, what)
        try:
            found = davxml.parse_multistatus(resp.content)
        except ValueError as exc:
            raise ProviderError(f"{self.session.label}: {what} at {calendar_id}: unreadable "
                                f"answer ({exc})", url=calendar_id) from exc
        for item in found.responses:  # Xandikos: 207 naming the collection itself as 404
            if item.status in _GONE and self._is_collection(calendar_id, item.href):
                raise self._gone(calendar_id, item.status, what)
        return found

    def _is_collection(self, calendar_id: str, href: str) -> bool:
        return norm_href(href).rstrip("/") == norm_href(calendar_id).rstrip("/")

    def _read(self, calendar_id: str, hrefs: list[str], window: Window,
              out: ChangeSet) -> None:
        """Fetch ``hrefs`` with calendar-multiget into ``out`` (changed/quarantined)."""
        for i in range(0, len(hrefs), MULTIGET_BATCH):
            batch = hrefs[i:i + MULTIGET_BATCH]
            resp = self._report(calendar_id, davxml.multiget(batch), "1", "calendar-multiget")
            found = self._multistatus(resp, calendar_id, "calendar-multiget")
            seen: set[str] = set()
            for item in found.responses:
                href = norm_href(item.href)
                data = item.text(q(davxml.CALDAV, "calendar-data"))
                if item.status in (404, 410):
                    continue
                seen.add(href)
                if data is None:  # listed but not readable: never taken as deleted
                    out.quarantined.append(Quarantined(
                        href, f"the server returned no calendar-data for {href} "
                              f"(status {item.status or 'of the properties not 200'})"))
                    continue
                self._add_object(href, item.text(q(DAV, "getetag")), data, window, out)
            for href in batch:
                if href not in seen:
                    out.deleted.append(href)  # gone between listing and fetching

    def _add_object(self, href: str, etag: str | None, data: str, window: Window,
                    out: ChangeSet) -> None:
        try:
            parsed = parse_resource(data, href, etag, window, self.parse_options)
        except Exception as exc:  # noqa: BLE001 - never let one object stop the calendar
            out.quarantined.append(Quarantined(href, unreadable_reason(exc, data), data))
            return
        for note in parsed.notes:
            log.info("%s: %s", self.session.label, note)
        if parsed.quarantined is not None:
            out.quarantined.append(parsed.quarantined)
        elif parsed.event is not None:
            out.changed.append(parsed.event)

    # -- pull --------------------------------------------------------------------------
    def changes(self, calendar_id: str, token: str | None, window: Window) -> ChangeSet:
        before = self.session.requests
        if token is None:
            out = self._full(calendar_id, window)
        elif token.startswith(TOKEN_PREFIX + "sync:"):
            out = self._sync_collection(calendar_id, token[len(TOKEN_PREFIX + "sync:"):],
                                        window)
        elif token.startswith(RECHECK_PREFIX):
            try:
                server_token, recheck = decode_recheck_token(token)
            except Exception as exc:  # noqa: BLE001 - a damaged token means a full resync
                raise SyncTokenInvalid(f"{self.session.label}: damaged sync token for "
                                       f"{calendar_id}; full resync",
                                       calendar=calendar_id) from exc
            out = self._sync_collection(calendar_id, server_token, window,
                                        ledger_token=token, recheck=recheck)
        elif token.startswith(TOKEN_PREFIX + "ctag:"):
            out = self._ctag_changes(calendar_id, token, window)
        else:
            raise SyncTokenInvalid(f"{self.session.label}: sync token for {calendar_id} is "
                                   "not a CalDAV token of this version; full resync",
                                   calendar=calendar_id)
        out.requests = self.session.requests - before
        self.ledger.pulled(self._ledger_key(calendar_id), out.token)
        return out

    def _full(self, calendar_id: str, window: Window) -> ChangeSet:
        if self.use_sync_collection:
            resp = self._report(calendar_id, davxml.sync_collection(None), "1",
                                "sync-collection")
            found = (self._multistatus(resp, calendar_id, "sync-collection")
                     if resp.status_code == 207 else None)
            if found is not None and found.sync_token:
                out = ChangeSet(full=True, token=TOKEN_PREFIX + "sync:" + found.sync_token)
                missing: list[str] = []
                for item in found.responses:
                    if item.status in (404, 410) or self._is_collection(calendar_id, item.href):
                        continue
                    self._take(calendar_id, item, window, out, missing)
                self._read(calendar_id, sorted(missing), window, out)
                out.deleted = []
                return out
            if found is None and resp.status_code not in _NOT_SUPPORTED:
                raise self.session.unexpected(resp, calendar_id, "sync-collection")
            log.info("%s: %s has no sync-collection; using ctag/etag listing",
                     self.session.label, calendar_id)
        ctag, etags = self._etag_listing(calendar_id)
        out = ChangeSet(full=True, token=encode_ctag_token(ctag, etags))
        self._read(calendar_id, sorted(etags), window, out)
        out.deleted = []
        return out

    def _take(self, calendar_id: str, item: davxml.DavResponse, window: Window,
              out: ChangeSet, missing: list[str]) -> None:
        """An object listed by sync-collection: read it, or note it for a multiget."""
        href = norm_href(item.href)
        data = item.text(q(davxml.CALDAV, "calendar-data"))
        if data:
            self._add_object(href, item.text(q(DAV, "getetag")), data, window, out)
        else:
            missing.append(href)

    def _sync_collection(self, calendar_id: str, sync_token: str, window: Window, *,
                         ledger_token: str | None = None,
                         recheck: list[str] | tuple[str, ...] = ()) -> ChangeSet:
        """Changes since the server token ``sync_token``, plus the objects in ``recheck``
        read again (a 404 is a delete). ``ledger_token`` is the token as stored."""
        out = ChangeSet()
        changed: dict[str, davxml.DavResponse] = {}
        deleted: set[str] = set()
        current = sync_token
        for _ in range(50):  # a truncated answer (507) continues from its token
            resp = self._report(calendar_id, davxml.sync_collection(current), "1",
                                "sync-collection")
            if resp.status_code in (403, 409, 412):
                conditions = davxml.error_conditions(resp.content)
                if "valid-sync-token" in conditions or resp.status_code == 412 or \
                        not conditions:
                    raise SyncTokenInvalid(
                        f"{self.session.label}: the server no longer knows the sync token "
                        f"of {calendar_id} (HTTP {resp.status_code}); full resync",
                        calendar=calendar_id)
            found = self._multistatus(resp, calendar_id, "sync-collection")
            truncated = False
            for item in found.responses:
                if self._is_collection(calendar_id, item.href):
                    truncated = truncated or item.status == 507
                    continue
                href = norm_href(item.href)
                if item.status in (404, 410):
                    deleted.add(href)
                    changed.pop(href, None)
                else:
                    changed[href] = item
                    deleted.discard(href)
            current = found.sync_token or current
            if not truncated:
                break
        out.token = TOKEN_PREFIX + "sync:" + current
        written = self.ledger.since(self._ledger_key(calendar_id),
                                    ledger_token or TOKEN_PREFIX + "sync:" + sync_token)
        missing: list[str] = []
        for href in sorted(changed):
            etag = changed[href].text(q(DAV, "getetag"))
            url = self._abs(calendar_id, href)
            if url in written and etag and written[url] == etag:
                continue  # calsync's own write, unchanged since
            self._take(calendar_id, changed[href], window, out, missing)
        for url, etag in written.items():
            href = norm_href(url)
            if etag is not None and href not in changed and href not in deleted:
                # written after the token yet not listed: some servers leave out what was
                # created and deleted since; ask (404 -> deleted)
                missing.append(href)
        for href in recheck:  # changed by others around calsync's last writes: read again
            href = norm_href(href)
            if href not in changed and href not in deleted and href not in missing:
                missing.append(href)
        self._read(calendar_id, missing, window, out)
        out.deleted = sorted(deleted | set(out.deleted))
        return out

    def _ctag(self, calendar_id: str) -> str | None:
        resp = self.session.request("PROPFIND", calendar_id,
                                    body=davxml.propfind("cs:getctag", "d:sync-token"),
                                    depth="0", what="getctag")
        found = self._multistatus(resp, calendar_id, "getctag")
        for item in found.responses:
            value = item.text(q(CS, "getctag")) or item.text(q(DAV, "sync-token"))
            if value:
                return value
        return None

    def _etags(self, calendar_id: str) -> dict[str, str]:
        resp = self._report(calendar_id, davxml.etag_query(), "1", "calendar-query")
        found = self._multistatus(resp, calendar_id, "calendar-query")
        return {norm_href(r.href): r.text(q(DAV, "getetag")) or ""
                for r in found.responses
                if r.status not in (404, 410) and not self._is_collection(calendar_id, r.href)}

    def _etag_listing(self, calendar_id: str) -> tuple[str | None, dict[str, str]]:
        ctag = self._ctag(calendar_id)
        return ctag, self._etags(calendar_id)

    def _ctag_changes(self, calendar_id: str, token: str, window: Window) -> ChangeSet:
        try:
            old_ctag, old_etags = decode_ctag_token(token)
        except Exception as exc:  # noqa: BLE001 - a damaged token means a full resync
            raise SyncTokenInvalid(f"{self.session.label}: damaged ctag token for "
                                   f"{calendar_id}; full resync", calendar=calendar_id) from exc
        ctag = self._ctag(calendar_id)
        if ctag is not None and ctag == old_ctag:
            return ChangeSet(token=token)
        etags = self._etags(calendar_id)
        out = ChangeSet(token=encode_ctag_token(ctag, etags))
        written = self.ledger.since(self._ledger_key(calendar_id), token)
        changed = sorted(h for h, e in etags.items() if (old_etags.get(h) != e or not e)
                         and not (e and written.get(self._abs(calendar_id, h)) == e))
        self._read(calendar_id, changed, window, out)
        out.deleted = sorted(set(old_etags) - set(etags) | set(out.deleted))
        return out

    # -- after calsync's writes ----------------------------------------------------------
    def token_after_writes(self, calendar_id: str, token: str | None) -> str | None:
        """The token to store once calsync's writes to ``calendar_id`` since the pull that
        returned ``token`` are done: one that covers them, so a later pull (in any process)
        reports what then happens to those objects (one request; none when nothing was
        written, then ``token`` itself). Changes by others that the server lists in between
        are named in the token for the next pull to read again. When asking fails,
        ``token`` is returned and the next pull reads from it as before."""
        if token is None:
            return None
        written = self.ledger.since(self._ledger_key(calendar_id), token)
        if not written:
            return token
        try:
            if token.startswith((TOKEN_PREFIX + "sync:", RECHECK_PREFIX)):
                settled = self._settle_sync(calendar_id, token, written)
            elif token.startswith(TOKEN_PREFIX + "ctag:"):
                settled = self._settle_ctag(calendar_id, token, written)
            else:
                return token
        except CalsyncError as exc:
            log.info("%s: %s: keeping the token from before calsync's writes (%s)",
                     self.session.label, calendar_id, exc)
            return token
        if settled is None:
            return token
        self.ledger.pulled(self._ledger_key(calendar_id), settled)
        return settled

    def _not_own_writes(self, calendar_id: str, written: dict[str, str | None],
                        changed: dict[str, str | None], deleted: set[str]) -> set[str]:
        """Of the changes a server lists (href -> etag, removed hrefs), the hrefs that are
        not calsync's writes (url -> etag, None for a delete); also calsync's copies that
        are no longer listed (someone removed them in between)."""
        foreign: set[str] = set()
        for href, etag in changed.items():
            url = self._abs(calendar_id, href)
            if not etag or url not in written or written[url] != etag:
                foreign.add(href)
        for href in deleted:
            url = self._abs(calendar_id, href)
            if url not in written or written[url] is not None:
                foreign.add(href)
        listed = {self._abs(calendar_id, h) for h in set(changed) | deleted}
        foreign.update(norm_href(url) for url, etag in written.items()
                       if etag is not None and url not in listed)
        return foreign

    def _settle_sync(self, calendar_id: str, token: str,
                     written: dict[str, str | None]) -> str | None:
        if token.startswith(RECHECK_PREFIX):
            current, pending = decode_recheck_token(token)
        else:
            current, pending = token[len(TOKEN_PREFIX + "sync:"):], []
        changed: dict[str, str | None] = {}
        deleted: set[str] = set()
        for _ in range(50):
            resp = self._report(calendar_id, davxml.sync_collection(current, with_data=False),
                                "1", "sync-collection")
            if resp.status_code in (403, 409, 412):
                return None
            found = self._multistatus(resp, calendar_id, "sync-collection")
            truncated = False
            for item in found.responses:
                if self._is_collection(calendar_id, item.href):
                    truncated = truncated or item.status == 507
                    continue
                href = norm_href(item.href)
                if item.status in _GONE:
                    deleted.add(href)
                    changed.pop(href, None)
                else:
                    changed[href] = item.text(q(DAV, "getetag"))
                    deleted.discard(href)
            current = found.sync_token or current
            if not truncated:
                break
        foreign = self._not_own_writes(calendar_id, written, changed, deleted)
        foreign.update(norm_href(h) for h in pending)  # still unread by any pull
        if foreign:
            return encode_recheck_token(current, foreign)
        return TOKEN_PREFIX + "sync:" + current

    def _settle_ctag(self, calendar_id: str, token: str,
                     written: dict[str, str | None]) -> str | None:
        try:
            _, old_etags = decode_ctag_token(token)
        except Exception:  # noqa: BLE001 - a damaged token is re-read in full anyway
            return None
        ctag, etags = self._etag_listing(calendar_id)
        changed: dict[str, str | None] = {h: e for h, e in etags.items()
                                          if old_etags.get(h) != e or not e}
        deleted = set(old_etags) - set(etags)
        foreign = self._not_own_writes(calendar_id, written, changed, deleted)
        if foreign:  # blank etags are read again; no ctag makes the next pull list etags
            return encode_ctag_token(None, {**etags, **{h: "" for h in foreign}})
        return encode_ctag_token(ctag, etags)

    # -- expansion as the window slides ----------------------------------------------------
    def expand(self, source: str, window: Window) -> list[Occurrence]:
        """The occurrences inside ``window`` of an external event whose iCalendar text a
        pull returned as ``RemoteEvent.source``; no request. The same parsing and bounds as
        a pull: an object a pull would quarantine raises SyncError with the reason."""
        try:
            parsed = parse_resource(source, "", None, window, self.parse_options)
        except Exception as exc:  # noqa: BLE001 - same as a pull: a reason, not a crash
            raise SyncError(f"{self.session.label}: stored event cannot be expanded: "
                            f"{unreadable_reason(exc, source)}") from exc
        if parsed.quarantined is not None:
            raise SyncError(f"{self.session.label}: stored event cannot be expanded: "
                            f"{parsed.quarantined.reason}", reason=parsed.quarantined.reason)
        return list(parsed.event.occurrences) if parsed.event is not None else []

    # -- single objects ----------------------------------------------------------------
    def _get_href(self, calendar_id: str, href: str,
                  window: Window) -> tuple[RemoteEvent | None, Quarantined | None, str | None]:
        url = self._abs(calendar_id, href)
        resp = self.session.request("GET", url, what="GET")
        if resp.status_code in (404, 410):
            return None, None, None
        if resp.status_code != 200:
            raise self.session.unexpected(resp, url, "GET")
        etag = resp.headers.get("etag")
        parsed = parse_resource(resp.content, norm_href(href), etag, window,
                                self.parse_options)
        return parsed.event, parsed.quarantined, etag

    def get(self, calendar_id: str, remote_id: str, window: Window) -> RemoteEvent | None:
        """The object, None when gone (or not an event). An unreadable object raises
        SyncError naming the property (not a provider failure: the sync goes on)."""
        event, bad, _ = self._get_href(calendar_id, remote_id, window)
        if bad is not None:
            raise SyncError(f"{self.session.label}: {self._abs(calendar_id, remote_id)} "
                            f"cannot be read: {bad.reason}", calendar=calendar_id)
        return event

    def find_by_key(self, calendar_id: str, key: str, window: Window) -> RemoteEvent | None:
        """calsync's copy at its deterministic href. A copy that was damaged there is still
        returned (with its etag, no content), so the engine overwrites it with If-Match."""
        href = self.href_for_key(calendar_id, key)
        event, bad, etag = self._get_href(calendar_id, href, window)
        if bad is not None:
            log.warning("%s: calsync's copy %s is unreadable (%s); it will be rewritten",
                        self.session.label, href, bad.reason)
            return RemoteEvent(remote_id=href, etag=etag, calsync_key=key, raw=bad.raw)
        return event

    # -- writes ------------------------------------------------------------------------
    def _written(self, calendar_id: str, href: str, ics: str,
                 resp: httpx.Response, event: OutgoingEvent) -> RemoteEvent:
        etag = resp.headers.get("etag")
        if not etag:  # the server changed what we sent, or does not say: ask
            pf = self.session.request("PROPFIND", self._abs(calendar_id, href),
                                      body=davxml.propfind("d:getetag"), depth="0",
                                      what="getetag")
            if pf.status_code == 207:
                try:
                    found = davxml.parse_multistatus(pf.content).responses
                except ValueError:
                    found = []  # no etag: the next pull reads the object again
                for item in found:
                    etag = item.text(q(DAV, "getetag")) or etag
        self.ledger.wrote(self._ledger_key(calendar_id), self._abs(calendar_id, href), etag)
        span = Window(_utc(event.start) - dt.timedelta(days=1),
                      _utc(event.end) + dt.timedelta(days=1))
        parsed = parse_resource(ics, href, etag, span, self.parse_options)
        if parsed.event is None:  # cannot happen for what render_event writes
            raise ProviderError(f"{self.session.label}: wrote {href} but cannot read it back")
        return parsed.event

    def _put(self, calendar_id: str, href: str, event: OutgoingEvent,
             headers: dict[str, str], what: str) -> tuple[httpx.Response, str]:
        ics = render_event(event, self._clock())
        headers = {"Content-Type": "text/calendar; charset=utf-8", **headers}
        url = self._abs(calendar_id, href)
        resp = self._write(calendar_id, url, what, functools.partial(
            self.session.request, "PUT", url, body=ics.encode("utf-8"), headers=headers,
            what=what))
        return resp, ics

    def _write(self, calendar_id: str, url: str, what: str,
               attempt: Callable[[], httpx.Response]) -> httpx.Response:
        """One write through the gate (423 Locked: sent again, then one at a time)."""
        resp = self.gate.send(self._ledger_key(calendar_id), attempt)
        if resp.status_code == LOCKED:
            raise ProviderUnavailable(f"{self.session.label}: {what} at {url}: the server "
                                      f"keeps the calendar locked (HTTP 423); will retry",
                                      url=url, status=LOCKED)
        return resp

    def create(self, calendar_id: str, event: OutgoingEvent) -> RemoteEvent:
        href = self.href_for_key(calendar_id, event.key)
        resp, ics = self._put(calendar_id, href, event, {"If-None-Match": "*"}, "create")
        if resp.status_code == 412:
            raise AlreadyExists(f"{self.session.label}: {href} already exists in "
                                f"{calendar_id}", remote_id=href, calendar=calendar_id)
        if resp.status_code not in (200, 201, 204):
            raise self.session.unexpected(resp, self._abs(calendar_id, href), "create")
        return self._written(calendar_id, href, ics, resp, event)

    def update(self, calendar_id: str, remote_id: str, event: OutgoingEvent,
               etag: str | None) -> RemoteEvent:
        href = norm_href(remote_id)
        headers = {"If-Match": etag} if etag else {}
        resp, ics = self._put(calendar_id, href, event, headers, "update")
        if resp.status_code == 412:
            raise PreconditionFailed(f"{self.session.label}: {href} changed on the server "
                                     f"since etag {etag}", remote_id=href, calendar=calendar_id)
        if resp.status_code not in (200, 201, 204):
            raise self.session.unexpected(resp, self._abs(calendar_id, href), "update")
        return self._written(calendar_id, href, ics, resp, event)

    def delete(self, calendar_id: str, remote_id: str, etag: str | None) -> None:
        url = self._abs(calendar_id, norm_href(remote_id))
        headers = {"If-Match": etag} if etag else {}
        self.ledger.wrote(self._ledger_key(calendar_id), url, None)
        resp = self._write(calendar_id, url, "delete", functools.partial(
            self.session.request, "DELETE", url, headers=headers, what="delete"))
        if resp.status_code in (200, 202, 204, 404, 410):
            return
        if resp.status_code == 412:
            raise PreconditionFailed(f"{self.session.label}: {url} changed on the server "
                                     f"since etag {etag}", remote_id=remote_id,
                                     calendar=calendar_id)
        raise self.session.unexpected(resp, url, "delete")

    def credentials(self) -> dict[str, Any] | None:
        return None

    def close(self) -> None:
        self.session.close()


def _utc(value: dt.date | dt.datetime) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    return dt.datetime.combine(value, dt.time(), tzinfo=dt.timezone.utc)
