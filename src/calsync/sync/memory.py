"""The in-memory connector: a real, shipped calendar provider that lives in the process.

Used by the planner's state-machine test, by the connector contract suite, and by the demo
(provider name ``memory``, registered through the ``calsync.connectors`` entry point).

- :class:`MemoryServer` holds accounts' calendars and their objects, keeps a change log per
  calendar (sync tokens ``<epoch>:<seq>``), counts requests, and lets tests act as "the user"
  (``put_external``, ``edit``, ``delete``), expire tokens and inject failures.
- :class:`MemoryConnector` is the :class:`~calsync.sync.connector.Connector` over one server.
- :class:`MemoryFactory` builds connectors: ``ctx.http`` may carry the server to use; else the
  process-wide server named by ``ctx.url`` (default ``"default"``) is used, created on demand.
  ``verify`` checks ``credentials["password"]`` against the server's password when one is set.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from dateutil.rrule import rrulestr

from calsync.errors import (
    AlreadyExists,
    CalendarGone,
    NotFound,
    PreconditionFailed,
    SyncError,
    SyncTokenInvalid,
    UserError,
)
from calsync.sync.connector import (
    ChangeSet,
    ConnectContext,
    Occurrence,
    OutgoingEvent,
    Quarantined,
    RemoteCalendar,
    RemoteEvent,
    Window,
)
from calsync.sync.retry import RetryPolicy

UTC = dt.timezone.utc
Override = tuple[dt.datetime | dt.date, dt.datetime | dt.date, dt.datetime | dt.date, str | None]


@dataclass
class MemoryObject:
    """One stored event (a master with its recurrence data)."""

    remote_id: str
    uid: str
    summary: str
    start: dt.datetime | dt.date
    end: dt.datetime | dt.date
    all_day: bool = False
    key: str | None = None
    description: str | None = None
    location: str | None = None
    tzid: str | None = None
    status: str = "confirmed"
    busy: str = "busy"
    private: bool = False
    rrule: str | None = None
    exdates: tuple[dt.datetime | dt.date, ...] = ()
    overrides: tuple[Override, ...] = ()
    etag: str = ""
    last_modified: dt.datetime | None = None


@dataclass
class MemoryCalendar:
    id: str
    name: str
    read_only: bool = False
    objects: dict[str, MemoryObject] = field(default_factory=dict)
    log: list[tuple[int, str]] = field(default_factory=list)  # (seq, remote_id) per change
    unreadable: dict[str, str] = field(default_factory=dict)  # remote_id -> why (quarantine)
    seq: int = 0
    epoch: int = 1


def _as_utc(value: dt.datetime | dt.date) -> dt.datetime:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
    return dt.datetime.combine(value, dt.time(), UTC)


def expand(obj: MemoryObject, window: Window, limit: int = 1000) -> list[Occurrence]:
    """Occurrences of ``obj`` overlapping ``window`` (RRULE, EXDATE and overrides)."""
    start, end = _as_utc(obj.start), _as_utc(obj.end)
    if obj.all_day and end <= start:  # RFC 5545 3.6.1: a date without a later end is a day
        end = start + dt.timedelta(days=1)
    length = end - start
    if not obj.rrule:
        spans = [(start, end)]
    else:
        excluded = {_as_utc(x) for x in obj.exdates}
        moved = {_as_utc(rid): (_as_utc(s), _as_utc(e)) for rid, s, e, _ in obj.overrides}
        rule = rrulestr(obj.rrule, dtstart=start)
        spans = []
        for inst in rule:
            if inst >= window.end or len(spans) >= limit:
                break
            if inst in excluded or inst + length <= window.start:
                continue
            spans.append(moved.pop(inst, (inst, inst + length)))
        spans.extend(moved.values())
    return [Occurrence(s, e) for s, e in sorted(spans) if s < window.end and e > window.start]


def _when(value: dt.datetime | dt.date) -> list[str]:
    return ["t" if isinstance(value, dt.datetime) else "d", value.isoformat()]


def _unwhen(doc: list[str]) -> dt.datetime | dt.date:
    kind, text = doc
    return dt.datetime.fromisoformat(text) if kind == "t" else dt.date.fromisoformat(text)


def object_source(obj: MemoryObject) -> str:
    """What :func:`expand_source` needs to expand ``obj`` again (the recurrence data)."""
    return json.dumps({"v": 1, "start": _when(obj.start), "end": _when(obj.end),
                       "all_day": obj.all_day,
                       "rrule": obj.rrule, "exdates": [_when(x) for x in obj.exdates],
                       "overrides": [[_when(r), _when(a), _when(b)]
                                     for r, a, b, _ in obj.overrides]})


def expand_source(source: str, window: Window, limit: int = 1000) -> list[Occurrence]:
    try:
        doc = json.loads(source)
        obj = MemoryObject(remote_id="", uid="", summary="", start=_unwhen(doc["start"]),
                           end=_unwhen(doc["end"]), all_day=bool(doc.get("all_day")),
                           rrule=doc["rrule"],
                           exdates=tuple(_unwhen(x) for x in doc["exdates"]),
                           overrides=tuple((_unwhen(r), _unwhen(a), _unwhen(b), None)
                                           for r, a, b in doc["overrides"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise SyncError(f"unreadable memory event source ({type(exc).__name__})") from exc
    return expand(obj, window, limit)


class MemoryServer:
    """Accounts' calendars in memory. Thread-safe; every connector call counts a request."""

    def __init__(self, password: str | None = None) -> None:
        self.password = password
        self.calendars: dict[str, MemoryCalendar] = {}
        self.requests = 0
        self.failures: dict[str, list[BaseException]] = {}
        self._ids = itertools.count(1)
        self._etags = itertools.count(1)
        self._lock = threading.RLock()
        # Provider latency (seconds slept per request, outside the lock), and how many
        # requests were in flight at once: what tests of concurrent workers look at.
        self.latency = 0.0
        self.in_flight = 0
        self.max_in_flight = 0

    # -- set-up and "the user" ------------------------------------------------------------

    def add_calendar(self, calendar_id: str | None = None, name: str = "Calendar",
                     read_only: bool = False) -> str:
        with self._lock:
            cid = calendar_id or f"cal-{next(self._ids)}"
            self.calendars.setdefault(cid, MemoryCalendar(cid, name, read_only))
            return cid

    def cal(self, calendar_id: str) -> MemoryCalendar:
        try:
            return self.calendars[calendar_id]
        except KeyError:
            raise CalendarGone(f"memory calendar {calendar_id!r} does not exist") from None

    def remove_calendar(self, calendar_id: str) -> None:
        """The user deletes a whole calendar: its requests answer "gone" from now on."""
        with self._lock:
            self.calendars.pop(calendar_id, None)

    def _touch(self, cal: MemoryCalendar, obj: MemoryObject, now: dt.datetime | None) -> None:
        obj.etag = f'"e{next(self._etags)}"'
        obj.last_modified = now or dt.datetime.now(UTC)
        cal.seq += 1
        cal.log.append((cal.seq, obj.remote_id))

    def put_object(self, calendar_id: str, obj: MemoryObject,
                   now: dt.datetime | None = None) -> MemoryObject:
        """Store ``obj`` as the user (no preconditions, read-only ignored)."""
        with self._lock:
            cal = self.cal(calendar_id)
            cal.objects[obj.remote_id] = obj
            self._touch(cal, obj, now)
            return obj

    def put_external(self, calendar_id: str, summary: str, start: dt.datetime | dt.date,
                     end: dt.datetime | dt.date, now: dt.datetime | None = None,
                     **fields: Any) -> str:
        """Add an event as the user would (no calsync key). Returns its remote id."""
        rid = fields.pop("remote_id", None) or f"ext-{next(self._ids)}.ics"
        obj = MemoryObject(remote_id=rid, uid=fields.pop("uid", None) or f"{rid}@memory",
                           summary=summary, start=start, end=end, **fields)
        self.put_object(calendar_id, obj, now)
        return rid

    def edit(self, calendar_id: str, remote_id: str, now: dt.datetime | None = None,
             **changes: Any) -> None:
        """Change fields of an object as the user would."""
        with self._lock:
            cal = self.cal(calendar_id)
            obj = cal.objects.get(remote_id)
            if obj is None:
                raise NotFound(f"no object {remote_id!r} in {calendar_id!r}")
            new = replace(obj, **changes)
            cal.objects[remote_id] = new
            self._touch(cal, new, now)

    def remove(self, calendar_id: str, remote_id: str) -> None:
        """Delete an object as the user would."""
        with self._lock:
            cal = self.cal(calendar_id)
            if cal.objects.pop(remote_id, None) is not None:
                cal.seq += 1
                cal.log.append((cal.seq, remote_id))

    def clear(self, calendar_id: str) -> None:
        for rid in list(self.cal(calendar_id).objects):
            self.remove(calendar_id, rid)

    def invalidate_tokens(self, calendar_id: str) -> None:
        """Every token issued so far for the calendar stops working (410 / valid-sync-token)."""
        with self._lock:
            self.cal(calendar_id).epoch += 1

    def make_unreadable(self, calendar_id: str, remote_id: str, reason: str) -> None:
        """From now on the object cannot be read: pulls report it quarantined."""
        with self._lock:
            cal = self.cal(calendar_id)
            cal.unreadable[remote_id] = reason
            cal.seq += 1
            cal.log.append((cal.seq, remote_id))

    def make_readable(self, calendar_id: str, remote_id: str) -> None:
        with self._lock:
            cal = self.cal(calendar_id)
            cal.unreadable.pop(remote_id, None)
            cal.seq += 1
            cal.log.append((cal.seq, remote_id))

    def fail_next(self, method: str, *errors: BaseException) -> None:
        """The next calls of ``method`` (``changes``, ``create``, ...) raise these, in order."""
        with self._lock:
            self.failures.setdefault(method, []).extend(errors)

    def objects(self, calendar_id: str) -> list[MemoryObject]:
        return list(self.cal(calendar_id).objects.values())

    # -- the provider side (what connectors call) -------------------------------------------

    def request(self, method: str) -> None:
        with self._lock:
            self.requests += 1
            queue = self.failures.get(method)
            if queue:
                raise queue.pop(0)
            if not self.latency:
                return
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.latency)
        finally:
            with self._lock:
                self.in_flight -= 1

    def event(self, obj: MemoryObject, window: Window, limit: int = 1000) -> RemoteEvent:
        return RemoteEvent(
            remote_id=obj.remote_id, etag=obj.etag, uid=obj.uid, calsync_key=obj.key,
            summary=obj.summary, description=obj.description, location=obj.location,
            start=obj.start, end=obj.end, all_day=obj.all_day, tzid=obj.tzid,
            busy=obj.busy,  # type: ignore[arg-type]
            status=obj.status,  # type: ignore[arg-type]
            private=obj.private, recurring=bool(obj.rrule),
            occurrences=expand(obj, window, limit), last_modified=obj.last_modified,
            source=None if obj.key else object_source(obj))


class MemoryConnector:
    """A :class:`~calsync.sync.connector.Connector` over a :class:`MemoryServer`. Every
    request goes through ``retry`` (failures injected with ``fail_next`` are retried
    there, as a network connector retries at its HTTP edge)."""

    def __init__(self, server: MemoryServer, max_occurrences: int = 1000,
                 retry: RetryPolicy | None = None) -> None:
        self.server = server
        self.max_occurrences = max_occurrences
        self.retry = retry or RetryPolicy()
        self.closed = False

    def _request(self, method: str) -> None:
        self.retry.call(lambda: self.server.request(method))

    def expand(self, source: str, window: Window) -> list[Occurrence]:
        return expand_source(source, window, self.max_occurrences)

    def list_calendars(self) -> list[RemoteCalendar]:
        self._request("list_calendars")
        return [RemoteCalendar(c.id, c.name, c.read_only) for c in self.server.calendars.values()]

    def changes(self, calendar_id: str, token: str | None, window: Window) -> ChangeSet:
        s = self.server
        self._request("changes")
        with s._lock:
            cal = s.cal(calendar_id)
            new_token = f"{cal.epoch}:{cal.seq}"
            if token is None:
                touched = set(cal.objects)
            else:
                touched = self._since(calendar_id, cal, token)
            bad = [Quarantined(r, cal.unreadable[r]) for r in sorted(touched)
                   if r in cal.unreadable and r in cal.objects]
            changed = [s.event(cal.objects[r], window, self.max_occurrences)
                       for r in sorted(touched)
                       if r in cal.objects and r not in cal.unreadable]
            deleted = [] if token is None else sorted(r for r in touched if r not in cal.objects)
            return ChangeSet(changed=changed, deleted=deleted, quarantined=bad, token=new_token,
                             full=token is None, requests=1)

    @staticmethod
    def _since(calendar_id: str, cal: MemoryCalendar, token: str) -> set[str]:
        try:
            epoch, since = (int(x) for x in token.split(":"))
        except ValueError:
            raise SyncTokenInvalid(f"malformed sync token for {calendar_id!r}") from None
        if epoch != cal.epoch or since > cal.seq:
            raise SyncTokenInvalid(f"sync token of {calendar_id!r} expired")
        return {rid for seq, rid in cal.log if seq > since}

    def get(self, calendar_id: str, remote_id: str, window: Window) -> RemoteEvent | None:
        self._request("get")
        obj = self.server.cal(calendar_id).objects.get(remote_id)
        return None if obj is None else self.server.event(obj, window, self.max_occurrences)

    def find_by_key(self, calendar_id: str, key: str, window: Window) -> RemoteEvent | None:
        return self.get(calendar_id, f"{key}.ics", window)

    def _writable(self, calendar_id: str) -> MemoryCalendar:
        cal = self.server.cal(calendar_id)
        if cal.read_only:
            raise PreconditionFailed(f"memory calendar {calendar_id!r} is read-only")
        return cal

    def _store(self, calendar_id: str, rid: str, event: OutgoingEvent) -> RemoteEvent:
        obj = MemoryObject(remote_id=rid, uid=event.uid, key=event.key, summary=event.summary,
                           description=event.description or None,
                           location=event.location or None, start=event.start, end=event.end,
                           all_day=event.all_day, tzid=event.tzid, status=event.status,
                           busy=event.busy)
        self.server.put_object(calendar_id, obj)
        return self.server.event(obj, _everything(), self.max_occurrences)

    def create(self, calendar_id: str, event: OutgoingEvent) -> RemoteEvent:
        self._request("create")
        with self.server._lock:
            cal = self._writable(calendar_id)
            rid = f"{event.key}.ics"  # deterministic: the "If-None-Match: *" of this provider
            if rid in cal.objects:
                raise AlreadyExists(f"{rid} already exists in {calendar_id!r}")
            return self._store(calendar_id, rid, event)

    def update(self, calendar_id: str, remote_id: str, event: OutgoingEvent,
               etag: str | None) -> RemoteEvent:
        self._request("update")
        with self.server._lock:
            cal = self._writable(calendar_id)
            current = cal.objects.get(remote_id)
            if current is None:
                raise PreconditionFailed(f"{remote_id} is gone from {calendar_id!r}")
            if etag is not None and current.etag != etag:
                raise PreconditionFailed(f"{remote_id} changed remotely (etag mismatch)")
            return self._store(calendar_id, remote_id, event)

    def delete(self, calendar_id: str, remote_id: str, etag: str | None) -> None:
        self._request("delete")
        with self.server._lock:
            cal = self._writable(calendar_id)
            current = cal.objects.get(remote_id)
            if current is None:
                return
            if etag is not None and current.etag != etag:
                raise PreconditionFailed(f"{remote_id} changed remotely (etag mismatch)")
            self.server.remove(calendar_id, remote_id)

    def credentials(self) -> dict[str, Any] | None:
        return None

    def close(self) -> None:
        self.closed = True


def _everything() -> Window:
    return Window(dt.datetime(1900, 1, 1, tzinfo=UTC), dt.datetime(2200, 1, 1, tzinfo=UTC))


_servers: dict[str, MemoryServer] = {}
_servers_lock = threading.Lock()


def shared_server(name: str = "default") -> MemoryServer:
    """The process-wide server called ``name`` (created with one calendar on first use)."""
    with _servers_lock:
        server = _servers.get(name)
        if server is None:
            server = _servers[name] = MemoryServer()
            server.add_calendar("personal", "Personal")
            server.add_calendar("work", "Work")
        return server


class MemoryFactory:
    """Factory for provider ``memory`` (entry point ``calsync.sync.memory:MemoryFactory``)."""

    providers = ("memory",)

    def _server(self, ctx: ConnectContext) -> MemoryServer:
        if isinstance(ctx.http, MemoryServer):
            return ctx.http
        return shared_server(ctx.url or "default")

    def connect(self, ctx: ConnectContext) -> MemoryConnector:
        limit = getattr(getattr(ctx.settings, "sync", None), "max_occurrences", 1000)
        retry = RetryPolicy.from_settings(ctx.settings, sleep=ctx.options.get("sleep"),
                                          rng=ctx.options.get("rng")) \
            if getattr(ctx.settings, "sync", None) is not None else None
        server = self._server(ctx)
        if ctx.options.get("latency") is not None:  # seconds per request (benchmarks, tests)
            server.latency = float(ctx.options["latency"])
        return MemoryConnector(server, limit, retry)

    def verify(self, ctx: ConnectContext) -> tuple[ConnectContext, list[RemoteCalendar]]:
        server = self._server(ctx)
        if server.password is not None and ctx.credentials.get("password") != server.password:
            raise UserError(f"wrong password for memory account {ctx.account!r}")
        return ctx, self.connect(ctx).list_calendars()
