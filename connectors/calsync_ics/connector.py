"""The subscribed-calendar :class:`Connector`: one read-only feed, pulled by conditional GET.

Token (versioned, what the engine stores after each successful pull)::

    ics1:<base64(zlib(json {"etag", "last_modified", "fetched_at", "wait", "body", "ids"}))>

``changes`` with a token fetches only when the feed is due: ``wait`` seconds after the last
successful fetch, where ``wait`` is the feed's ``REFRESH-INTERVAL`` (or ``X-PUBLISHED-TTL``)
but never under :data:`MIN_REFRESH` (5 minutes) nor over ``[ics] max_refresh_seconds``;
without a hint it is :data:`MIN_REFRESH`, so the feed is fetched at every sync (every
``sync.interval_seconds``). Not due: no request, no change. Due: ``If-None-Match`` /
``If-Modified-Since``; ``304`` (or the same body again) is no change; a new body is read
whole and compared with the listing in the token (``ids``: remote id -> digest of the
event's text): new and changed events are reported as changed, vanished ones as deleted,
as a CalDAV ``sync-collection`` would (so the engine's guard treats a feed that suddenly
empties like any other calendar). The first fetch is a full listing.

A failed fetch (unreachable, 5xx, not iCalendar, too large) raises: the engine stores
nothing from it, so the last good busy blocks stay while the calendar shows the error
(availability fails closed on it). Its token is not advanced, so the next sync tries again.
Writes raise: the calendar is read-only (the engine never plans any for it).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import zlib
from collections.abc import Callable
from typing import Any

from calsync.errors import ProviderError, SyncError, SyncTokenInvalid
from calsync.ical import ParseOptions, parse_resource, unreadable_reason
from calsync.sync.connector import (
    ChangeSet,
    Occurrence,
    OutgoingEvent,
    RemoteCalendar,
    RemoteEvent,
    Window,
)
from calsync_ics.feed import FeedContents, FeedInvalid, read_feed
from calsync_ics.fetch import FeedFetcher, feed_digest, feed_label

TOKEN_PREFIX = "ics1:"
MIN_REFRESH = dt.timedelta(minutes=5)
DEFAULT_MAX_REFRESH = dt.timedelta(hours=24)
Clock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_token(state: dict[str, Any]) -> str:
    raw = json.dumps(state, sort_keys=True, separators=(",", ":")).encode()
    return TOKEN_PREFIX + base64.urlsafe_b64encode(zlib.compress(raw, 6)).decode()


def decode_token(token: str) -> dict[str, Any]:
    if not token.startswith(TOKEN_PREFIX):
        raise SyncTokenInvalid("not a subscribed-calendar token")
    try:
        state = json.loads(zlib.decompress(base64.urlsafe_b64decode(
            token[len(TOKEN_PREFIX):])))
        dt.datetime.fromisoformat(state["fetched_at"])
        float(state["wait"])
    except (ValueError, KeyError, TypeError, zlib.error) as exc:
        raise SyncTokenInvalid("unreadable subscribed-calendar token") from exc
    return dict(state)


def refresh_wait(hint: dt.timedelta | None, max_refresh: dt.timedelta) -> dt.timedelta:
    """How long after a fetch the feed is due again (see the module docstring)."""
    wait = max(MIN_REFRESH, hint or MIN_REFRESH)
    return min(wait, max(max_refresh, MIN_REFRESH))


class IcsConnector:
    """One feed, served as one read-only calendar whose id is :func:`feed_digest`."""

    def __init__(self, fetcher: FeedFetcher, parse_options: ParseOptions, *,
                 max_refresh: dt.timedelta = DEFAULT_MAX_REFRESH,
                 clock: Clock = _utcnow) -> None:
        self.fetcher = fetcher
        self.parse_options = parse_options
        self.max_refresh = max_refresh
        self.clock = clock
        self.calendar_id = feed_digest(fetcher.url)
        self.label = f"subscribed calendar {feed_label(fetcher.url)}"

    # -- reading -------------------------------------------------------------------------
    def _read(self, body: bytes, window: Window) -> FeedContents:
        try:
            return read_feed(body, window, self.parse_options)
        except FeedInvalid as exc:
            raise FeedInvalid(f"{self.label}: {exc.message}; the last fetched busy times "
                              f"are kept") from exc

    def _check(self, calendar_id: str) -> None:
        if calendar_id != self.calendar_id:
            raise SyncError(f"{self.label} serves calendar {self.calendar_id}, not "
                            f"{calendar_id!r}", calendar=calendar_id)

    def list_calendars(self) -> list[RemoteCalendar]:
        fetched = self.fetcher.get()
        name = None
        if fetched.body is not None:
            name = self._read(fetched.body, Window(self.clock(), self.clock())).name
        return [RemoteCalendar(id=self.calendar_id, name=name or feed_label(self.fetcher.url),
                               read_only=True)]

    def changes(self, calendar_id: str, token: str | None, window: Window) -> ChangeSet:
        self._check(calendar_id)
        now = self.clock()
        state = decode_token(token) if token else None
        if state is not None:
            due = dt.datetime.fromisoformat(state["fetched_at"]) \
                + dt.timedelta(seconds=float(state["wait"]))
            if now < due:
                return ChangeSet(token=token, requests=0)
            fetched = self.fetcher.get(state.get("etag"), state.get("last_modified"))
        else:
            fetched = self.fetcher.get()
        body_hash = hashlib.sha256(fetched.body).hexdigest() if fetched.body is not None \
            else None
        if state is not None and (fetched.body is None or body_hash == state.get("body")):
            state.update(fetched_at=now.isoformat(),
                         etag=fetched.etag or state.get("etag"),
                         last_modified=fetched.last_modified or state.get("last_modified"))
            return ChangeSet(token=encode_token(state), requests=1)
        if fetched.body is None:  # a 304 to a request that asked for none
            raise ProviderError(f"{self.label}: the server answered 304 to an "
                                f"unconditional request")
        contents = self._read(fetched.body, window)
        wait = refresh_wait(contents.refresh, self.max_refresh)
        listed = {ev.remote_id: _digest(ev.source or "") for ev in contents.events}
        listed.update({q.remote_id: "" for q in contents.quarantined})
        new_state = {"etag": fetched.etag, "last_modified": fetched.last_modified,
                     "fetched_at": now.isoformat(), "wait": wait.total_seconds(),
                     "body": body_hash, "ids": listed}
        known = state.get("ids") if state is not None else None
        if not isinstance(known, dict):  # first fetch, or a token without the listing
            return ChangeSet(changed=contents.events, quarantined=contents.quarantined,
                             token=encode_token(new_state), full=True, requests=1)
        # the difference to the last listing, as a CalDAV sync-collection reports it
        return ChangeSet(changed=[ev for ev in contents.events
                                  if known.get(ev.remote_id) != listed[ev.remote_id]],
                         deleted=sorted(set(known) - set(listed)),
                         quarantined=contents.quarantined, token=encode_token(new_state),
                         requests=1)

    def expand(self, source: str, window: Window) -> list[Occurrence]:
        """The occurrences inside ``window`` of an event whose text a pull returned as
        ``RemoteEvent.source``; no request."""
        try:
            parsed = parse_resource(source, "", None, window, self.parse_options)
        except Exception as exc:  # noqa: BLE001 - as a pull: a reason, not a crash
            raise SyncError(f"{self.label}: stored event cannot be expanded: "
                            f"{unreadable_reason(exc, source)}") from exc
        if parsed.quarantined is not None:
            raise SyncError(f"{self.label}: stored event cannot be expanded: "
                            f"{parsed.quarantined.reason}")
        return list(parsed.event.occurrences) if parsed.event is not None else []

    def get(self, calendar_id: str, remote_id: str, window: Window) -> RemoteEvent | None:
        self._check(calendar_id)
        fetched = self.fetcher.get()
        if fetched.body is None:
            return None
        for event in self._read(fetched.body, window).events:
            if event.remote_id == remote_id:
                return event
        return None

    def find_by_key(self, calendar_id: str, key: str, window: Window) -> RemoteEvent | None:
        return None  # calsync never writes to a subscribed calendar

    # -- writing: refused ------------------------------------------------------------------
    def _read_only(self) -> SyncError:
        return SyncError(f"{self.label} is read-only: calsync only reads it for conflicts")

    def create(self, calendar_id: str, event: OutgoingEvent) -> RemoteEvent:
        raise self._read_only()

    def update(self, calendar_id: str, remote_id: str, event: OutgoingEvent,
               etag: str | None) -> RemoteEvent:
        raise self._read_only()

    def delete(self, calendar_id: str, remote_id: str, etag: str | None) -> None:
        raise self._read_only()

    def credentials(self) -> dict[str, Any] | None:
        return None

    def close(self) -> None:
        self.fetcher.close()
