"""Syncing one calendar: pull, guard, plan (pure), then apply each action on its own.

:func:`sync_calendar` is the executor around :func:`calsync.sync.plan.plan_sync`:

1. Pull with the stored token (``Calendar.sync_token`` is ``"v1:<token>"``); an expired or
   unknown token means a full listing. Quarantined objects become ``Quarantine`` rows.
2. Guard: a full listing that is empty while the calendar had items (or an incremental pull
   deleting every one of at least :data:`GUARD_MIN_INCREMENTAL` known objects) raises
   :class:`CalendarSuddenlyEmpty` and marks the calendar ``guarded`` until
   ``empty_confirmed`` is set (``calsync calendars confirm-empty``); the token is kept.
3. Plan from the database state (schedule items, links, external events) and the pull.
4. Apply: every action commits (or rolls back) alone. A remote write happens before its link
   is recorded; a crash in between leaves a copy that the next run adopts by key. A lost
   precondition (etag) clears the token so the next run re-reads the whole calendar and
   replans. Provider errors (throttled, unavailable, re-auth) propagate to the runner.
   A connector with the optional ``create_many`` gets the calendar's creates in chunks of
   :data:`CREATE_CHUNK`; each item's link is still recorded (or its error counted) on its own,
   after the chunk's remote writes; items that came back throttled/unavailable are retried
   one by one through the retrying caller, as single creates are.

Cancelled jobs have their remote copy deleted (not rewritten with STATUS:CANCELLED): every
provider shows a deleted event the same way, and the feed drops cancelled items too.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import logging
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from dateutil.relativedelta import relativedelta
from sqlalchemy import Table, bindparam, delete, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, lazyload

from calsync.audit import audit
from calsync.config import Settings
from calsync.db.models import (
    Calendar,
    Connection,
    ExternalBusy,
    ExternalEvent,
    ItemAssignee,
    Link,
    Quarantine,
    ScheduleItem,
    User,
)
from calsync.db.session import Database
from calsync.db.statements import update_by_id
from calsync.errors import (
    AlreadyExists,
    CalendarSuddenlyEmpty,
    CalsyncError,
    NotFound,
    PreconditionFailed,
    ProviderError,
    ProviderUnavailable,
    SyncTokenInvalid,
    Throttled,
)
from calsync.feeds.dirty import mark_feeds_dirty
from calsync.outbox.events import emit_item_change, emit_job_reverted
from calsync.schedule.store import delete_item, item_content_hash
from calsync.sync.connector import ChangeSet, Connector, Occurrence, RemoteEvent, Window
from calsync.sync.hashing import external_hash, outgoing_hash, remote_hash
from calsync.sync.item_events import apply_remote_edit, item_key, outgoing_event
from calsync.sync.plan import (
    Action,
    AdoptRemote,
    CreateRemote,
    DeleteRemote,
    DropExternal,
    ImportExternal,
    LinkRecord,
    LocalItem,
    Policy,
    PullDelete,
    PullEdit,
    RefreshExternal,
    Relink,
    RemoteItem,
    Unlink,
    UpdateRemote,
    plan_sync,
)
from calsync.timezones import UTC, zone

log = logging.getLogger("calsync.sync")
T = TypeVar("T")
Call = Callable[..., Any]  # retrying caller: call(fn, *args) -> fn(*args)
TOKEN_VERSION = "v1"
CREATE_CHUNK = 100  # creates per create_many call (the connector splits into its own batches)
Guard = Callable[[Action, Callable[[], None]], None]  # runs one action's step, sorting errors


def direct_call(fn: Callable[..., T], *args: Any) -> T:
    return fn(*args)


def sync_window(settings: Settings, now: dt.datetime) -> Window:
    """[now - history_months, now + future_months) in UTC."""
    now = now.astimezone(UTC)
    return Window(now - relativedelta(months=settings.sync.history_months),
                  now + relativedelta(months=settings.sync.future_months))


def encode_token(token: str | None) -> str | None:
    return None if token is None else f"{TOKEN_VERSION}:{token}"


def decode_token(stored: str | None) -> str | None:
    """The provider token, or None (full listing) when absent or of another version."""
    if not stored:
        return None
    version, sep, token = stored.partition(":")
    if not sep or version != TOKEN_VERSION:
        log.warning("stored sync token has unknown version %r: full resync", version)
        return None
    return token


def describe_failure(exc: BaseException) -> str:
    """Error text safe to store, log and show: a database error is named by its kind and
    the first line of the driver's message only (SQLAlchemy's own text carries the
    statement's parameters, i.e. event titles, locations and organizers, and PostgreSQL's
    DETAIL line the failing row); calsync's own errors keep their message (they name
    calendars and remote ids); anything else is named by its type and origin only."""
    if isinstance(exc, SQLAlchemyError):
        orig = getattr(exc, "orig", None)
        first = str(orig).strip().splitlines()[0] if orig is not None and str(orig).strip() \
            else ""
        return f"database error ({type(exc).__name__}{': ' + first if first else ''})"
    if isinstance(exc, CalsyncError):
        return f"{type(exc).__name__}: {exc}"
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" in {frames[-1].name} ({Path(frames[-1].filename).name}:{frames[-1].lineno})" \
        if frames else ""
    return f"internal error {type(exc).__name__}{where}"


@dataclass
class CalendarResult:
    calendar_id: int
    name: str
    role: str
    counts: dict[str, int] = field(default_factory=dict)
    full: bool = False
    requests: int = 0
    error: str | None = None
    status: str = "ok"
    public_id: str = ""  # cal_…

    def add(self, what: str, n: int = 1) -> None:
        with _COUNT_LOCK:  # writes of one calendar may run in parallel threads
            self.counts[what] = self.counts.get(what, 0) + n


_COUNT_LOCK = threading.Lock()


def write_bound(connector: Connector, settings: Settings) -> int:
    """Remote writes to one calendar in flight at once: ``sync.calendar_write_concurrency``
    for connectors that declare ``parallel_writes = True`` (their HTTP client may be used
    from several threads, e.g. CalDAV's httpx client), else 1."""
    if not getattr(connector, "parallel_writes", False):
        return 1
    return max(1, settings.sync.calendar_write_concurrency)


@dataclass
class _CalendarInfo:
    id: int
    remote_id: str
    name: str
    role: str
    read_only: bool
    token: str | None
    known_items: int
    empty_confirmed: bool
    status: str
    connection_id: int
    user_id: str
    user_tz: str
    conflict_policy: str
    window_start: dt.datetime | None
    public_id: str
    last_error: str | None = None
    retry_at: dt.datetime | None = None


SYNCING_ROLES = ("primary", "conflict")


def _info(cal: Calendar, conn: Connection, user_tz: str, settings: Settings) -> _CalendarInfo:
    policy = (conn.settings or {}).get("conflict_policy") or settings.sync.conflict_policy
    return _CalendarInfo(cal.id, cal.remote_id, cal.name, cal.role, cal.read_only,
                         cal.sync_token, cal.known_items, cal.empty_confirmed, cal.status,
                         conn.id, conn.user_id, user_tz, policy, cal.window_start,
                         cal.public_id, cal.last_error, cal.retry_at)


def calendar_infos(s: Session, settings: Settings, conn: Connection, user_tz: str,
                   calendar_ids: list[int] | None = None) -> list[_CalendarInfo]:
    """What syncing the connection's calendars needs to know, read in one statement: the
    primary and conflict calendars (conflict calendars first), or ``calendar_ids``."""
    q = select(Calendar).where(Calendar.connection_id == conn.id)
    q = q.where(Calendar.id.in_(calendar_ids)) if calendar_ids is not None \
        else q.where(Calendar.role.in_(SYNCING_ROLES))
    cals = sorted(s.scalars(q), key=lambda c: (c.role != "conflict", c.id))
    if calendar_ids is not None:
        order = {cid: i for i, cid in enumerate(calendar_ids)}
        cals.sort(key=lambda c: order[c.id])
    return [_info(c, conn, user_tz, settings) for c in cals]


def _load_info(db: Database, settings: Settings, calendar_id: int) -> _CalendarInfo:
    with db.read_session() as s:
        cal = s.get(Calendar, calendar_id)
        if cal is None:
            raise NotFound(f"calendar {calendar_id} not found")
        conn = cal.connection
        user = s.get(User, conn.user_id)
        return _info(cal, conn, user.timezone if user else "UTC", settings)


REEXPAND_STEP = dt.timedelta(days=1)  # stored series are re-expanded once the window slid this


def _needs_full_listing(connector: Connector, info: _CalendarInfo, window: Window,
                        settings: Settings) -> bool:
    """A full listing even with a token: the calendar was never expanded for a known window
    (stored before windows were tracked), or the connector expands on the provider side and
    its token is bound to a window that has slid ``sync.window_resync_days``."""
    if info.token is None:
        return False
    if info.window_start is None:
        return True
    if hasattr(connector, "expand"):
        return False
    return window.start - info.window_start > dt.timedelta(days=settings.sync.window_resync_days)


def _pull(connector: Connector, info: _CalendarInfo, window: Window, call: Call,
          force_full: bool = False) -> ChangeSet:
    token = None if force_full else decode_token(info.token)
    if force_full:
        log.info("calendar %s (%s): the sync window moved, full listing", info.id, info.name)
    if token is not None:
        try:
            cs: ChangeSet = call(connector.changes, info.remote_id, token, window)
            return cs
        except SyncTokenInvalid:
            log.info("calendar %s (%s): sync token expired, full resync", info.id, info.name)
    full: ChangeSet = call(connector.changes, info.remote_id, None, window)
    full.full = True
    return full


def _quarantine(db: Database, info: _CalendarInfo, cs: ChangeSet, now: dt.datetime) -> None:
    """Record unreadable objects; forget the records of objects readable again or gone."""
    if _nothing_pulled(cs):
        return  # a no-change pull records and clears nothing: no write transaction
    with db.session() as s:
        held = set(s.scalars(select(Quarantine.remote_id)
                             .where(Quarantine.calendar_id == info.id)))
        cleared = held & ({ev.remote_id for ev in cs.changed} | set(cs.deleted))
        if cs.full:
            cleared |= held - {q.remote_id for q in cs.quarantined}
        for q in cs.quarantined:
            s.execute(delete(Quarantine).where(Quarantine.calendar_id == info.id,
                                               Quarantine.remote_id == q.remote_id))
            s.add(Quarantine(calendar_id=info.id, remote_id=q.remote_id, reason=q.reason,
                             raw=q.raw, at=now))
            log.warning("calendar %s (%s): quarantined %s: %s", info.id, info.name,
                        q.remote_id, q.reason)
        for rid in sorted(cleared):
            s.execute(delete(Quarantine).where(Quarantine.calendar_id == info.id,
                                               Quarantine.remote_id == rid))


GUARD_MIN_INCREMENTAL = 3  # an incremental pull deleting all of >= this many items is guarded


def _emptied_incrementally(db: Database, info: _CalendarInfo, cs: ChangeSet) -> bool:
    """An incremental pull that deletes every object we knew and adds none (a wiped
    calendar seen through a sync token) counts as suddenly empty too."""
    if cs.full or cs.changed or cs.quarantined or info.known_items < GUARD_MIN_INCREMENTAL:
        return False
    if len(cs.deleted) < info.known_items:
        return False
    with db.read_session() as s:
        known = set(s.scalars(select(Link.remote_id).where(Link.calendar_id == info.id)))
        known |= set(s.scalars(select(ExternalEvent.remote_id)
                               .where(ExternalEvent.calendar_id == info.id)))
    return bool(known) and known <= set(cs.deleted)


def _guard(db: Database, info: _CalendarInfo, cs: ChangeSet, now: dt.datetime) -> None:
    """Refuse to mirror a calendar that had items and suddenly lists none (DESIGN 6.4)."""
    if info.known_items <= 0 or info.empty_confirmed:
        return
    full_and_empty = cs.full and not cs.changed and not cs.quarantined
    if not full_and_empty and not _emptied_incrementally(db, info, cs):
        return
    msg = (f"calendar {info.name!r} had {info.known_items} items and now lists none; "
           f"sync of it is paused. If the calendar really is empty, run "
           f"`calsync calendars confirm-empty {info.user_id} {info.remote_id}`")
    with db.session() as s:
        cal = s.get(Calendar, info.id)
        assert cal is not None
        cal.status, cal.last_error, cal.last_sync_at = "guarded", msg, now
    raise CalendarSuddenlyEmpty(msg, calendar_id=info.id)


def _nothing_pulled(cs: ChangeSet) -> bool:
    """An incremental pull that brought no change, deletion or unreadable object."""
    return not (cs.full or cs.changed or cs.deleted or cs.quarantined)


def _remote_item(ev: RemoteEvent, linked_key: str | None) -> RemoteItem:
    key = ev.calsync_key or linked_key
    h = remote_hash(ev) if key is not None else external_hash(ev)
    return RemoteItem(ev.remote_id, ev.etag, key, h, ev, ev.last_modified)


def _overlaps(item: ScheduleItem, window: Window) -> bool:
    return item.start_at < window.end and item.end_at > window.start


def _local_item(item: ScheduleItem, alive: bool) -> LocalItem:
    ev = outgoing_event(item)
    return LocalItem(item.pk, ev.key, item.kind, ev, outgoing_hash(ev), item.updated_at, alive)


# The plan's reads, built once: every sync of every calendar runs them, and building a
# statement (and its cache key) each time cost more than running it on an idle calendar.
_links_t = cast(Table, Link.__table__)
_externals_t = cast(Table, ExternalEvent.__table__)
_PLAN_LINKS = select(_links_t.c.remote_id, _links_t.c.etag, _links_t.c.remote_hash,
                     _links_t.c.item_pk, _links_t.c.local_hash) \
    .where(_links_t.c.calendar_id == bindparam("calendar_id"))
_PLAN_EXTERNALS = select(_externals_t.c.remote_id, _externals_t.c.etag,
                         _externals_t.c.content_hash) \
    .where(_externals_t.c.calendar_id == bindparam("calendar_id"))
_ASSIGNED = (select(ScheduleItem).join(ItemAssignee)
             .where(ItemAssignee.user_id == bindparam("user_id"))
             .options(lazyload(ScheduleItem.assignees)))  # assigned by the join already
_ASSIGNED_IN_WINDOW = _ASSIGNED.where(
    ScheduleItem.start_at < bindparam("window_end", type_=ScheduleItem.start_at.type),
    ScheduleItem.end_at > bindparam("window_start", type_=ScheduleItem.end_at.type))


def _plan_inputs(s: Session, info: _CalendarInfo, cs: ChangeSet, window: Window
                 ) -> tuple[list[LocalItem], dict[str, RemoteItem], list[LinkRecord]]:
    on_calendar = {"calendar_id": info.id}
    links = s.execute(_PLAN_LINKS, on_calendar).all()
    externals = s.execute(_PLAN_EXTERNALS, on_calendar).all()
    records = [LinkRecord(ln.remote_id, ln.etag, ln.remote_hash, ln.item_pk, ln.local_hash)
               for ln in links]
    records += [LinkRecord(e.remote_id, e.etag, e.content_hash) for e in externals]
    linked_items = {ln.item_pk: ln for ln in links}
    user = {"user_id": info.user_id}
    items: dict[int, ScheduleItem] = {}
    in_window: list[ScheduleItem] = []
    if info.role == "primary":
        in_window = list(s.scalars(_ASSIGNED_IN_WINDOW, {
            **user, "window_start": window.start, "window_end": window.end}))
        items = {i.pk: i for i in in_window}
    missing = [pk for pk in linked_items if pk not in items]
    for i in range(0, len(missing), 500):
        items.update((x.pk, x) for x in s.scalars(select(ScheduleItem).where(
            ScheduleItem.pk.in_(missing[i:i + 500]))))
    key_of_remote = {ln.remote_id: item_key(items[ln.item_pk].kind, items[ln.item_pk].ext_id)
                     for ln in links if ln.item_pk in items}

    # the remote view
    remote: dict[str, RemoteItem] = {}
    if not cs.full:
        for ln in links:
            remote[ln.remote_id] = RemoteItem(ln.remote_id, ln.etag,
                                              key_of_remote.get(ln.remote_id), ln.remote_hash)
        for e in externals:
            remote[e.remote_id] = RemoteItem(e.remote_id, e.etag, None, e.content_hash)
        for rid in cs.deleted:
            remote.pop(rid, None)
    else:
        kept = {q.remote_id for q in cs.quarantined}
        for rec in records:
            if rec.remote_id in kept:  # unreadable now: keep what we knew
                remote[rec.remote_id] = RemoteItem(rec.remote_id, rec.etag,
                                                   key_of_remote.get(rec.remote_id),
                                                   rec.remote_hash)
    for ev in cs.changed:
        remote[ev.remote_id] = _remote_item(ev, key_of_remote.get(ev.remote_id))

    if info.role != "primary":
        return [], remote, records

    # the local side: the user's items in the window, linked items, keyed orphans
    local: dict[int, LocalItem] = {}
    for item in in_window:
        alive = item.deleted_at is None and item.status != "cancelled"
        if alive or item.pk in linked_items:
            local[item.pk] = _local_item(item, alive)
    for pk, item in items.items():
        if pk in local or pk not in linked_items:
            continue
        dead = item.deleted_at is not None or item.status == "cancelled" \
            or info.user_id not in item.user_ids
        if dead:
            local[pk] = _local_item(item, False)
        # alive but outside the window: its copy is left alone
    linked_rids = {ln.remote_id for ln in links}
    orphan_keys = {r.key for r in remote.values() if r.key and r.remote_id not in linked_rids}
    if orphan_keys - {li.key for li in local.values()}:
        for item in s.scalars(_ASSIGNED, user):
            if item.pk not in local and item_key(item.kind, item.ext_id) in orphan_keys:
                alive = (item.deleted_at is None and item.status != "cancelled"
                         and _overlaps(item, window))
                local[item.pk] = _local_item(item, alive)
    return list(local.values()), remote, records


# --- applying actions ---------------------------------------------------------------------

class _Executor:
    def __init__(self, db: Database, info: _CalendarInfo, connector: Connector, call: Call,
                 now: dt.datetime, window: Window, result: CalendarResult) -> None:
        self.db, self.info, self.connector, self.call = db, info, connector, call
        self.now, self.window, self.result = now, window, result
        self.replan = False
        self.actor = f"sync:connection:{info.connection_id}"

    # links ----------------------------------------------------------------------------
    def _set_link(self, s: Session, item_pk: int, remote_id: str, etag: str | None,
                  local_hash: str, r_hash: str) -> None:
        link = s.scalar(select(Link).where(Link.item_pk == item_pk,
                                           Link.calendar_id == self.info.id))
        if link is None:
            link = Link(item_pk=item_pk, calendar_id=self.info.id)
            s.add(link)
        link.remote_id, link.etag = remote_id, etag
        link.local_hash, link.remote_hash, link.updated_at = local_hash, r_hash, self.now

    def _audit_revert(self, s: Session, item_pk: int, what: str) -> None:
        item = s.get(ScheduleItem, item_pk)
        if item is not None:
            audit(s, self.actor, f"{item.kind}.remote_{what}_reverted", item.kind, item.ext_id,
                  {"calendar": self.info.name, "calendar_id": self.info.id}, at=self.now)
            emit_job_reverted(s, item, what, self.info.public_id, self.info.user_id, self.now)

    # remote writes ----------------------------------------------------------------------
    def create(self, a: CreateRemote) -> None:
        try:
            ev: RemoteEvent = self.call(self.connector.create, self.info.remote_id, a.event)
            self.result.add("created")
        except AlreadyExists as exc:
            ev = self._adopt_existing(a, exc)
        self._record_create(a, ev)

    def _adopt_existing(self, a: CreateRemote, exc: AlreadyExists) -> RemoteEvent:
        """The copy a create met (written by an earlier, interrupted run): found by key and
        brought up to date; ``exc`` again when it cannot be found."""
        found: RemoteEvent | None = self.call(self.connector.find_by_key,
                                              self.info.remote_id, a.key, self.window)
        if found is None:
            raise exc
        ev = found
        if remote_hash(found) != a.local_hash:
            ev = self.call(self.connector.update, self.info.remote_id, found.remote_id,
                           a.event, found.etag)
        self.result.add("adopted")
        return ev

    def _finish_create(self, a: CreateRemote, res: RemoteEvent | BaseException) -> None:
        """One item of a create_many answer: link it, adopt the existing copy, or raise."""
        if isinstance(res, AlreadyExists):
            ev = self._adopt_existing(a, res)
        elif isinstance(res, BaseException):
            raise res
        else:
            ev = res
            self.result.add("created")
        self._record_create(a, ev)

    def create_batch(self, actions: list[CreateRemote], guard: Guard,
                     chunk: int = CREATE_CHUNK) -> None:
        """The calendar's creates through ``connector.create_many``. The remote writes of a
        chunk happen first, then every item is linked in its own transaction (a crash in
        between leaves copies the next run adopts by key). Items throttled/unavailable are
        retried singly through ``self.call``; another provider error (re-auth) is raised once
        the rest of the chunk is recorded."""
        create_many: Callable[..., list[RemoteEvent | BaseException]] = \
            self.connector.create_many  # type: ignore[attr-defined]  # optional method
        for i in range(0, len(actions), chunk):
            part = actions[i:i + chunk]
            results: list[RemoteEvent | BaseException] = self.call(
                create_many, self.info.remote_id, [a.event for a in part])
            if len(results) != len(part):
                raise ProviderUnavailable(f"create_many answered {len(results)} results for "
                                          f"{len(part)} events")
            retry: list[CreateRemote] = []
            fatal: ProviderError | None = None
            for a, res in zip(part, results):
                if isinstance(res, (Throttled, ProviderUnavailable)):
                    retry.append(a)
                elif isinstance(res, ProviderError):
                    fatal = fatal or res
                else:
                    guard(a, functools.partial(self._finish_create, a, res))
            if fatal is not None:
                raise fatal
            for a in retry:
                guard(a, functools.partial(self.create, a))

    def _record_create(self, a: CreateRemote, ev: RemoteEvent) -> None:
        with self.db.session() as s:
            self._set_link(s, a.item_pk, ev.remote_id, ev.etag, a.local_hash, remote_hash(ev))
            if a.reason == "revert":
                self._audit_revert(s, a.item_pk, "delete")
                self.result.add("reverted")

    def update(self, a: UpdateRemote) -> None:
        ev: RemoteEvent = self.call(self.connector.update, self.info.remote_id, a.remote_id,
                                    a.event, a.etag)
        with self.db.session() as s:
            self._set_link(s, a.item_pk, ev.remote_id, ev.etag, a.local_hash, remote_hash(ev))
            if a.reason == "revert":
                self._audit_revert(s, a.item_pk, "edit")
                self.result.add("reverted")
        self.result.add("updated")

    def delete(self, a: DeleteRemote) -> None:
        self.call(self.connector.delete, self.info.remote_id, a.remote_id, a.etag)
        with self.db.session() as s:
            if a.item_pk is not None:
                s.execute(delete(Link).where(Link.item_pk == a.item_pk,
                                             Link.calendar_id == self.info.id,
                                             Link.remote_id == a.remote_id))
        self.result.add("deleted")

    def adopt(self, a: AdoptRemote) -> None:
        with self.db.session() as s:
            self._set_link(s, a.item_pk, a.remote_id, a.etag, a.local_hash, a.remote_hash)
        self.result.add("adopted")

    # local writes -----------------------------------------------------------------------
    def pull_edit(self, a: PullEdit) -> None:
        event = a.remote.event
        if event is None:
            event = self.call(self.connector.get, self.info.remote_id, a.remote.remote_id,
                              self.window)
            if event is None:
                return
        with self.db.session() as s:
            item = s.get(ScheduleItem, a.item_pk)
            if item is None:
                return
            if a.restore:
                item.deleted_at = None
            apply_remote_edit(item, event)
            item.content_hash = item_content_hash(item)
            item.sequence += 1
            item.updated_at = self.now
            mark_feeds_dirty(s, item.user_ids)
            audit(s, self.actor, f"{item.kind}.remote_update", item.kind, item.ext_id,
                  {"calendar": self.info.name, "reason": a.reason}, at=self.now)
            local_hash = outgoing_hash(outgoing_event(item))
            self._set_link(s, item.pk, a.remote.remote_id, a.remote.etag, local_hash,
                           a.remote.hash)
            emit_item_change(s, item, self.info.public_id, self.now)  # the platform hears it
        self.result.add("pulled")

    def pull_delete(self, a: PullDelete) -> None:
        with self.db.session() as s:
            item = s.get(ScheduleItem, a.item_pk)
            if item is not None and delete_item(s, item, self.actor, self.now) == "deleted":
                emit_item_change(s, item, self.info.public_id, self.now)
            s.execute(delete(Link).where(Link.item_pk == a.item_pk,
                                         Link.calendar_id == self.info.id))
        self.result.add("pulled")

    def relink(self, a: Relink) -> None:
        with self.db.session() as s:
            self._set_link(s, a.item_pk, a.remote_id, a.etag, a.local_hash, a.remote_hash)

    def unlink(self, a: Unlink) -> None:
        with self.db.session() as s:
            s.execute(delete(Link).where(Link.item_pk == a.item_pk,
                                         Link.calendar_id == self.info.id))

    # external events ------------------------------------------------------------------
    def _occurrences(self, ev: RemoteEvent) -> list[Occurrence]:
        if ev.occurrences or ev.recurring or ev.start is None or ev.end is None:
            return list(ev.occurrences)
        start, end = ev.start, ev.end
        if not isinstance(start, dt.datetime) or not isinstance(end, dt.datetime):
            tz = zone(self.info.user_tz)
            s_d = start if not isinstance(start, dt.datetime) else start.date()
            e_d = end if not isinstance(end, dt.datetime) else end.date()
            if e_d <= s_d:  # RFC 5545 3.6.1: an all-day event without a later end is one day
                e_d = s_d + dt.timedelta(days=1)
            start = dt.datetime.combine(s_d, dt.time(), tz)
            end = dt.datetime.combine(e_d, dt.time(), tz)
        elif start.tzinfo is None or end.tzinfo is None:
            start = start.replace(tzinfo=zone(self.info.user_tz))
            end = end.replace(tzinfo=zone(self.info.user_tz))
        if start >= self.window.end or end <= self.window.start:
            return []
        return [Occurrence(start.astimezone(UTC), end.astimezone(UTC))]

    def store_external(self, s: Session, r: RemoteItem,
                       row: ExternalEvent | None = None) -> None:
        ev = r.event
        assert ev is not None
        if row is None:
            row = s.scalar(select(ExternalEvent).where(ExternalEvent.calendar_id == self.info.id,
                                                       ExternalEvent.remote_id == r.remote_id))
        if row is None:
            row = ExternalEvent(calendar_id=self.info.id, remote_id=r.remote_id,
                                user_id=self.info.user_id)
            s.add(row)
            counter = "imported"
        else:
            s.execute(delete(ExternalBusy).where(ExternalBusy.event_id == row.id))
            counter = "refreshed"
        row.user_id = self.info.user_id
        row.etag, row.content_hash, row.uid = ev.etag, r.hash, ev.uid
        row.summary, row.description, row.location = ev.summary, ev.description, ev.location
        row.organizer, row.attendees = ev.organizer, list(ev.attendees)
        row.busy_status, row.status, row.response = ev.busy, ev.status, ev.response
        row.private_at_source, row.all_day = ev.private, ev.all_day
        row.source = ev.source
        row.updated_at = self.now
        s.flush()
        s.add_all([ExternalBusy(event_id=row.id, user_id=self.info.user_id,
                                start_at=occ.start.astimezone(UTC),
                                end_at=occ.end.astimezone(UTC))
                   for occ in self._occurrences(ev)])
        s.flush()
        self.result.add(counter)

    def drop_external(self, s: Session, remote_id: str, row: ExternalEvent | None = None) -> None:
        if row is None:
            row = s.scalar(select(ExternalEvent).where(ExternalEvent.calendar_id == self.info.id,
                                                       ExternalEvent.remote_id == remote_id))
        if row is not None:
            s.execute(delete(ExternalBusy).where(ExternalBusy.event_id == row.id))
            s.delete(row)
            s.flush()
        self.result.add("dropped")

    def apply_externals(self, actions: list[ImportExternal | RefreshExternal | DropExternal],
                        errors: list[str], chunk: int = 250) -> None:
        """External busy blocks touch no remote: applied in batches, each action inside its
        own savepoint (its own rollback), one commit per batch."""
        for i in range(0, len(actions), chunk):
            part = actions[i:i + chunk]
            ids = [a.remote_id if isinstance(a, DropExternal) else a.remote.remote_id
                   for a in part]
            with self.db.session() as s:
                rows = {r.remote_id: r for r in s.scalars(select(ExternalEvent).where(
                    ExternalEvent.calendar_id == self.info.id,
                    ExternalEvent.remote_id.in_(ids)))}
                for action, rid in zip(part, ids):
                    try:
                        with s.begin_nested():
                            if isinstance(action, DropExternal):
                                self.drop_external(s, rid, rows.get(rid))
                            else:
                                assert isinstance(action, (ImportExternal, RefreshExternal))
                                self.store_external(s, action.remote, rows.get(rid))
                    except (CalsyncError, SQLAlchemyError) as exc:
                        why = describe_failure(exc)
                        errors.append(f"storing external event {rid} failed: {why}")
                        log.warning("calendar %s (%s): storing external event %s failed: %s",
                                    self.info.id, self.info.name, rid, why)

    def reexpand(self, errors: list[str], chunk: int = 250) -> None:
        """Recompute the stored events' occurrences for the current window from their
        sources, without a request (``connector.expand``): a series whose object never
        changes again still blocks the days that enter the window as it slides."""
        expand: Callable[[str, Window], list[Occurrence]] = \
            self.connector.expand  # type: ignore[attr-defined]  # optional method
        with self.db.read_session() as s:
            ids = list(s.scalars(select(ExternalEvent.id).where(
                ExternalEvent.calendar_id == self.info.id, ExternalEvent.source.is_not(None))))
        for i in range(0, len(ids), chunk):
            with self.db.session() as s:
                for row in s.scalars(select(ExternalEvent)
                                     .where(ExternalEvent.id.in_(ids[i:i + chunk]))):
                    assert row.source is not None
                    try:
                        occurrences = expand(row.source, self.window)
                    except CalsyncError as exc:
                        errors.append(f"re-expanding external event {row.remote_id} failed: "
                                      f"{describe_failure(exc)}")
                        continue
                    s.execute(delete(ExternalBusy).where(ExternalBusy.event_id == row.id))
                    s.add_all([ExternalBusy(event_id=row.id, user_id=row.user_id,
                                            start_at=o.start.astimezone(UTC),
                                            end_at=o.end.astimezone(UTC))
                               for o in occurrences])
        if ids:
            self.result.add("reexpanded", len(ids))

    def apply(self, action: Action) -> None:
        match action:
            case CreateRemote():
                self.create(action)
            case UpdateRemote():
                self.update(action)
            case DeleteRemote():
                self.delete(action)
            case AdoptRemote():
                self.adopt(action)
            case PullEdit():
                self.pull_edit(action)
            case PullDelete():
                self.pull_delete(action)
            case Relink():
                self.relink(action)
            case Unlink():
                self.unlink(action)
            case ImportExternal() | RefreshExternal():
                with self.db.session() as s:
                    self.store_external(s, action.remote)
            case DropExternal():
                with self.db.session() as s:
                    self.drop_external(s, action.remote_id)


Record = Callable[[Session], None]  # a calendar's closing write, run in a given session


def sync_calendar(db: Database, settings: Settings, calendar: int | _CalendarInfo,
                  connector: Connector, now: dt.datetime, call: Call = direct_call,
                  finish: list[Record] | None = None) -> CalendarResult:
    """Sync one calendar (primary: two-way; conflict: pull-only). Raises
    CalendarSuddenlyEmpty (calendar guarded) and ProviderError subclasses; records health on
    the calendar for everything else it survives.

    ``calendar`` is an id or what :func:`calendar_infos` read. With ``finish`` the closing
    write (token, counts, health) is appended there for the caller to run in its own
    transaction (the runner records a connection's calendars and the connection at once);
    a crash before it only means the next run pulls from the previous token again."""
    info = calendar if isinstance(calendar, _CalendarInfo) \
        else _load_info(db, settings, calendar)
    result = CalendarResult(info.id, info.name, info.role, public_id=info.public_id)
    if info.role not in SYNCING_ROLES:
        result.status = "skipped"
        return result
    if info.status == "guarded" and not info.empty_confirmed:
        result.error = info.last_error or f"calendar {info.name!r} is guarded"
        result.status = "guarded"
        return result
    window = sync_window(settings, now)
    cs = _pull(connector, info, window, call, _needs_full_listing(connector, info, window,
                                                                   settings))
    result.full, result.requests = cs.full, cs.requests
    _quarantine(db, info, cs, now)
    if cs.quarantined:
        result.add("quarantined", len(cs.quarantined))
    _guard(db, info, cs, now)

    actions: list[Action] = []
    known_before = info.known_items
    if info.role == "primary" or not _nothing_pulled(cs):
        with db.read_session() as s:  # the plan reads; each action writes on its own
            local, remote, records = _plan_inputs(s, info, cs, window)
        policy = Policy(conflict_policy=info.conflict_policy,  # type: ignore[arg-type]
                        push=info.role == "primary", writable=not info.read_only)
        actions = plan_sync(local, remote, records, policy, now)
        known_before = len(records)
    # else: a pull-only calendar that pulled nothing has nothing to plan (plan_sync would
    # compare the stored records with themselves), so its rows are not even read
    executor = _Executor(db, info, connector, call, now, window, result)
    errors: list[str] = []
    external_kinds = (ImportExternal, RefreshExternal, DropExternal)

    def guarded(action: Action, step: Callable[[], None]) -> None:
        try:
            step()
        except ProviderError:
            raise
        except PreconditionFailed as exc:  # the remote moved under us: re-read, replan
            executor.replan = True
            result.add("precondition_failed")
            log.info("calendar %s (%s): %s: %s; replanning next run", info.id, info.name,
                     type(action).__name__, exc)
        except CalsyncError as exc:
            errors.append(f"{type(action).__name__}: {exc}")
            log.warning("calendar %s (%s): %s failed: %s", info.id, info.name,
                        type(action).__name__, exc)

    batched = hasattr(connector, "create_many")
    steps = [a for a in actions if not (isinstance(a, external_kinds)
                                        or (batched and isinstance(a, CreateRemote)))]
    bound = write_bound(connector, settings)
    writes = [a for a in steps if isinstance(a, (CreateRemote, UpdateRemote, DeleteRemote))] \
        if bound > 1 and len(steps) > 1 else []
    for action in steps:
        if writes and isinstance(action, (CreateRemote, UpdateRemote, DeleteRemote)):
            continue
        guarded(action, functools.partial(executor.apply, action))
    if writes:  # each item's write and link on its own, up to `bound` in flight
        with ThreadPoolExecutor(bound, thread_name_prefix="calsync-write") as pool:
            # each task in a copy of this thread's context: log lines and metrics keep
            # the connection (calsync.runcontext)
            futures = [pool.submit(contextvars.copy_context().run, guarded, a,
                                   functools.partial(executor.apply, a)) for a in writes]
            try:
                for future in futures:
                    future.result()
            except ProviderError:
                for future in futures:
                    future.cancel()
                raise
    creates = [a for a in actions if isinstance(a, CreateRemote)] if batched else []
    if creates:
        executor.create_batch(creates, guarded)
    executor.apply_externals([a for a in actions
                              if isinstance(a, (ImportExternal, RefreshExternal, DropExternal))],
                             errors)
    expands = hasattr(connector, "expand")
    slid = info.window_start is None or window.start - info.window_start >= REEXPAND_STEP
    if expands and slid and not cs.full:
        executor.reexpand(errors)
    # A server whose token is a state (Xandikos) never reports a copy that was created after
    # the pulled token and deleted since: the connector gives the token to keep after our
    # writes (optional ``token_after_writes``; it never raises).
    settled = cs.token
    if not executor.replan and hasattr(connector, "token_after_writes"):
        settled = connector.token_after_writes(info.remote_id, cs.token)

    values: dict[str, Any] = {"retry_at": None, "last_sync_at": now,
                              "sync_token": None if executor.replan else encode_token(settled)}
    if cs.full or (expands and slid):
        values["window_start"] = window.start
    if errors:
        values.update(status="error", last_error="; ".join(errors)[:2000])
        result.status, result.error = "error", values["last_error"]
    else:
        values.update(status="ok", last_error=None, last_success_at=now)
    # nothing applied: what the plan read is what is known (no count queries)
    known_then = known_before if not actions else None

    def record(s: Session) -> None:
        known = known_then
        if known is None:
            known = (s.scalar(select(func.count()).select_from(Link)
                              .where(Link.calendar_id == info.id)) or 0) \
                + (s.scalar(select(func.count()).select_from(ExternalEvent)
                            .where(ExternalEvent.calendar_id == info.id)) or 0)
        extra = {"empty_confirmed": False} if known > 0 else {}
        row = {"known_items": known, **extra, **values}
        # Core: no ORM bookkeeping for a row nobody holds
        s.execute(update_by_id(cast(Table, Calendar.__table__), tuple(sorted(row))),
                  {"b_id": info.id, **row})

    if finish is not None:
        finish.append(record)
    else:
        with db.session() as s:
            record(s)
    return result


__all__ = ["CalendarResult", "calendar_infos", "decode_token", "encode_token",
           "sync_calendar", "sync_window"]
