"""Running syncs: leases, health, rescheduling. What the worker and the CLI call.

- :func:`run_due_syncs` (the worker calls it every tick and on a wake-up): claims due
  connections with a row lease (``Connection.lease_owner``/``lease_until``; ``SELECT ... FOR
  UPDATE SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite) and syncs up to
  ``sync.concurrency`` of them at once, each in its own thread with its own connector; each
  is released with its next due time (the interval less a random ``sync.jitter_fraction``
  of it, so connections added together spread out over the cycle). A lease names its
  holder as ``host:pid:nonce``: a crashed worker's lease expires after
  ``sync.lease_seconds``, and one whose process is known dead (same host, pid gone) is
  taken over at once (both counted in ``calsync_lease_takeovers``).
- :func:`sync_connection`: one connection now (claims its lease unless told not to).
- :func:`sync_calendar_now`: one calendar now (push notifications).

Retries happen once, at the connectors' HTTP edge (:class:`calsync.sync.retry.RetryPolicy`);
the runner calls connectors directly. Each calendar fails on its own: a calendar that is gone
(``CalendarGone``), throttled past the retry cap (``Throttled``: not synced again before
``Calendar.retry_at``) or failing in any other way is marked with what to do, and the
connection's other calendars go on. ``NeedsReauth`` stops the connection: it goes to
``needs_reauth`` and is skipped until reconnected. A failing connection never stops the
others. Error text that is stored or logged names calendars and remote ids, never an event's
details (:func:`calsync.sync.engine.describe_failure`).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Integer, Table, bindparam, or_, select, update
from sqlalchemy.orm import object_session

from calsync import metrics
from calsync.config import Settings
from calsync.db.models import Calendar, Connection, User
from calsync.db.session import Database
from calsync.db.statements import update_by_id
from calsync.errors import (
    CalendarGone,
    CalendarSuddenlyEmpty,
    CalsyncError,
    NeedsReauth,
    NotFound,
    ProviderError,
    Throttled,
)
from calsync.outbox.events import emit_connection_status
from calsync.runcontext import CONNECTION, PROVIDER, working_on
from calsync.secrets import CredentialBox
from calsync.sync.connector import ConnectContext, Connector, load_connector_factory
from calsync.sync.engine import (
    CalendarResult,
    Record,
    _CalendarInfo,
    calendar_infos,
    describe_failure,
    sync_calendar,
)

log = logging.getLogger("calsync.sync")
HOST = socket.gethostname()
_WORKER_ID = f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def default_worker_id() -> str:
    return _WORKER_ID


def holder_is_dead(owner: str | None) -> bool:
    """True when ``owner`` (``host:pid:nonce``) is a process of this host that is gone."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != HOST or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False  # this process: alive (a lease of another Database in it, say)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass
class ConnectionResult:
    connection_id: int
    public_id: str = ""  # con_…, what the CLI prints
    user_id: str = ""
    provider: str = ""
    status: str = "ok"  # ok | error | needs_reauth | busy
    error: str | None = None
    calendars: list[CalendarResult] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {k: 0 for k in ("created", "updated", "deleted", "imported")}
        for cal in self.calendars:
            for k, n in cal.counts.items():
                out[k] = out.get(k, 0) + n
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.public_id, "connection_id": self.connection_id,
                "user_id": self.user_id,
                "provider": self.provider, "status": self.status, "error": self.error,
                **self.totals(),
                "calendars": [{"id": c.public_id, "calendar_id": c.calendar_id,
                               "name": c.name, "role": c.role,
                               "status": c.status, "error": c.error, "full": c.full,
                               "requests": c.requests, **c.counts} for c in self.calendars]}


# --- leases -------------------------------------------------------------------------------

def _lease_taken_over(conn: Connection, owner: str, now: dt.datetime) -> bool:
    """Whether ``owner`` may take ``conn``: free, expired, or its holder is dead. A live
    lease of ``owner`` itself is busy too: another thread of this worker is syncing it."""
    if conn.lease_owner is None:
        return True
    if conn.lease_owner == owner and conn.lease_until is not None and conn.lease_until > now:
        return False
    if conn.lease_until is None or conn.lease_until <= now:
        if conn.lease_owner != owner:
            metrics.LEASE_TAKEOVERS.labels("expired").inc()
        return True
    if holder_is_dead(conn.lease_owner):
        log.warning("connection %s: taking over the lease of %s, a worker that is gone",
                    conn.id, conn.lease_owner)
        metrics.LEASE_TAKEOVERS.labels("holder_gone").inc()
        return True
    return False


_connections: Table = cast(Table, Connection.__table__)


def _due(now: Any) -> tuple[Any, ...]:
    """Due (never synced, or its time has come) and not waiting for a new sign-in."""
    c = _connections.c
    return (or_(c.next_sync_at.is_(None), c.next_sync_at <= now), c.status != "needs_reauth")


_OVERDUE_FIRST = (_connections.c.next_sync_at.is_not(None), _connections.c.next_sync_at,
                  _connections.c.id)


@functools.lru_cache(maxsize=4)
def _claim_statements(dialect: str) -> tuple[Any, Any]:
    """The claim's select and lease update, built once per dialect (a worker claims for
    every sync it runs: building and caching-key the statements each time cost more than
    running them)."""
    c = _connections
    now = bindparam("now", type_=c.c.next_sync_at.type)
    pick = (select(c.c.id, c.c.lease_owner)
            .where(*_due(now), or_(c.c.lease_until.is_(None), c.c.lease_until <= now))
            .order_by(*_OVERDUE_FIRST)
            .limit(bindparam("limit", type_=Integer)))
    if dialect == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    lease = (update(c).where(c.c.id.in_(bindparam("ids", expanding=True)))
             .values(lease_owner=bindparam("owner"), lease_until=bindparam("until")))
    return pick, lease


def claim_due(db: Database, owner: str, now: dt.datetime, lease_seconds: int,
              limit: int = 1) -> list[int]:
    """Lease up to ``limit`` of the most overdue connections (most overdue first); empty
    when nothing is due and free. Connections leased by a dead process of this host count
    as free. One transaction for the lot; on PostgreSQL only the rows taken are locked
    (``SKIP LOCKED``), so workers claiming at the same time each get their own. The index
    ``ix_connections_due`` serves the query."""
    pick, lease = _claim_statements(db.dialect)
    until = now + dt.timedelta(seconds=lease_seconds)
    with db.session() as s:
        conn = s.connection()
        rows = conn.execute(pick, {"now": now, "limit": limit}).all()
        ids = [row.id for row in rows]
        for row in rows:
            if row.lease_owner is not None and row.lease_owner != owner:
                metrics.LEASE_TAKEOVERS.labels("expired").inc()
        if len(ids) < limit:
            ids += _claim_from_dead_holders(s, db.dialect, owner, now, limit - len(ids))
        if ids:
            conn.execute(lease, {"ids": ids, "owner": owner, "until": until})
        return ids


def _claim_from_dead_holders(s: Any, dialect: str, owner: str, now: dt.datetime,
                             limit: int) -> list[int]:
    """Due connections under a live lease of a process of this host that is gone (a
    crashed worker), up to ``limit``."""
    q = (select(Connection)
         .where(*_due(now), Connection.lease_until > now,
                Connection.lease_owner.like(f"{HOST}:%"), Connection.lease_owner != owner)
         .order_by(*_OVERDUE_FIRST)
         .limit(50))
    if dialect == "postgresql":
        q = q.with_for_update(skip_locked=True)
    return [c.id for c in s.scalars(q) if _lease_taken_over(c, owner, now)][:limit]


def claim_next_due(db: Database, owner: str, now: dt.datetime, lease_seconds: int) -> int | None:
    """Lease the most overdue connection; None when nothing is due and free."""
    claimed = claim_due(db, owner, now, lease_seconds, 1)
    return claimed[0] if claimed else None


def next_due(settings: Settings, now: dt.datetime, rng: random.Random | None = None
             ) -> dt.datetime:
    """When a connection synced at ``now`` is due again: the interval less a random share
    (up to ``sync.jitter_fraction``) of it, so a batch of connections spreads out."""
    interval = settings.sync.interval_seconds
    jitter = (rng or random).random() * settings.sync.jitter_fraction * interval
    return now + dt.timedelta(seconds=interval - jitter)


def claim_connection(db: Database, connection_id: int, owner: str, now: dt.datetime,
                     lease_seconds: int) -> bool:
    """Lease one connection; False when another live worker holds it (see
    :func:`lease_holder` for who and until when)."""
    with db.session() as s:
        q = select(Connection).where(Connection.id == connection_id)
        if db.dialect == "postgresql":
            q = q.with_for_update(skip_locked=True)
        conn = s.scalar(q)
        if conn is None:
            if s.scalar(select(Connection.id).where(Connection.id == connection_id)) is None:
                raise NotFound(f"connection {connection_id} not found")
            return False  # row-locked by a worker claiming it right now
        if not _lease_taken_over(conn, owner, now):
            return False
        conn.lease_owner = owner
        conn.lease_until = now + dt.timedelta(seconds=lease_seconds)
        return True


def lease_holder(db: Database, connection_id: int) -> tuple[str | None, dt.datetime | None]:
    """Who holds the connection's lease, and until when."""
    with db.read_session() as s:
        row = s.execute(select(Connection.lease_owner, Connection.lease_until)
                        .where(Connection.id == connection_id)).first()
    return (row.lease_owner, row.lease_until) if row is not None else (None, None)


def release_connection(db: Database, connection_id: int, owner: str) -> None:
    with db.session() as s:
        s.execute(update(Connection)
                  .where(Connection.id == connection_id, Connection.lease_owner == owner)
                  .values(lease_owner=None, lease_until=None))


# --- building connectors ------------------------------------------------------------------

def connect_context(settings: Settings, conn: Connection) -> ConnectContext:
    """The context a stored connection's factory gets (credentials decrypted)."""
    creds = CredentialBox.from_settings(settings).open(conn.credentials) \
        if conn.credentials else {}
    options: dict[str, Any] = {}
    session = object_session(conn)
    if conn.tenant_id is not None and session is not None:
        # an organisation-wide connection: the tenant's sealed credentials, kept only there
        from calsync.sync.tenants import tenant_credentials

        creds = {**tenant_credentials(settings, session, conn.tenant_id), **creds}
    user = session.get(User, conn.user_id) if session is not None else None
    if user is not None:
        # Floating times are read in the user's zone; their addresses tell "declined".
        options["timezone"] = user.timezone
        options["emails"] = [e for e in (user.email, conn.account) if e and "@" in e]
    options.update(conn.settings or {})
    return ConnectContext(provider=conn.provider, url=conn.url, account=conn.account,
                          credentials=creds, settings=settings, options=options)


def build_connector(settings: Settings, conn: Connection,
                    options: dict[str, Any] | None = None) -> Connector:
    """The connector of a stored connection. ``options`` (e.g. ``sleep``/``rng`` for the
    retry layer, in tests) are added to the context's options."""
    ctx = connect_context(settings, conn)
    ctx.options.update(options or {})
    return load_connector_factory(conn.provider).connect(ctx)


# --- syncing ------------------------------------------------------------------------------

def _mark_calendar(db: Database, calendar_id: int, status: str, msg: str, now: dt.datetime,
                   retry_at: dt.datetime | None = None) -> None:
    with db.session() as s:
        cal = s.get(Calendar, calendar_id)
        if cal is not None and cal.status != "guarded":
            cal.status, cal.last_error, cal.last_sync_at = status, msg, now
            cal.retry_at = retry_at


def renew_lease(db: Database, connection_id: int, owner: str, until: dt.datetime) -> None:
    """Extend our lease (long syncs), so no other worker takes the connection over."""
    with db.session() as s:
        s.execute(update(Connection)
                  .where(Connection.id == connection_id, Connection.lease_owner == owner)
                  .values(lease_until=until))


def _gone_message(info: _CalendarInfo, exc: CalendarGone) -> str:
    user = info.user_id
    return (f"calendar {info.name!r} ({info.public_id}) no longer exists on the server "
            f"({exc}); choose another with `calsync calendars set {user} --primary CAL "
            f"--conflict CAL …` (see `calsync calendars refresh {user}`), or stop using it")


def _calendar_result(info: _CalendarInfo, status: str,
                     error: str | None = None) -> CalendarResult:
    """The result of a calendar that did not sync, named as the CLI shows calendars."""
    return CalendarResult(info.id, info.name, info.role, status=status, error=error,
                          public_id=info.public_id)


def _sync_calendars(settings: Settings, db: Database, conn_info: dict[str, Any],
                    connector: Connector, calendars: list[_CalendarInfo], now: dt.datetime,
                    result: ConnectionResult, owner: str | None = None,
                    finish: list[Record] | None = None) -> dt.datetime | None:
    """Sync the calendars, each failing on its own (a failure is recorded at once; a
    success's closing write goes to ``finish``). Returns the earliest ``retry_at`` when
    every calendar that ran was throttled (the connection is due again then, not sooner).
    Between calendars the lease is renewed by the wall-clock time spent so far."""
    problems: list[str] = []
    retry_times: list[dt.datetime] = []
    ran = 0
    started = time.monotonic()
    for i, info in enumerate(calendars):
        cid = info.id
        if info.retry_at is not None and info.retry_at > now:
            # throttled past the retry cap: not before its retry time
            result.calendars.append(_calendar_result(info, "throttled"))
            continue
        elapsed = dt.timedelta(seconds=time.monotonic() - started)
        if owner is not None and i > 0 and \
                elapsed.total_seconds() > settings.sync.lease_seconds / 4:
            # a long sync: renew before a quarter of the lease is used (quick ones skip it)
            renew_lease(db, result.connection_id, owner,
                        now + elapsed + dt.timedelta(seconds=settings.sync.lease_seconds))
        ran += 1
        try:
            cal_result = sync_calendar(db, settings, info, connector, now, finish=finish)
        except CalendarSuddenlyEmpty as exc:
            result.calendars.append(_calendar_result(info, "guarded", str(exc)))
            problems.append(str(exc))
            continue
        except NeedsReauth as exc:
            msg = (f"{conn_info['provider']} account {conn_info['account']!r} needs to be "
                   f"reconnected: {exc}")
            _mark_calendar(db, cid, "error", msg, now)
            result.status, result.error = "needs_reauth", msg
            return None
        except CalendarGone as exc:
            msg = _gone_message(info, exc)
            _mark_calendar(db, cid, "gone", msg, now)
            result.calendars.append(_calendar_result(info, "gone", msg))
            problems.append(msg)
            continue
        except Throttled as exc:
            retry_at = now + dt.timedelta(seconds=exc.retry_after or
                                          settings.sync.interval_seconds)
            msg = f"Throttled: {exc}; next try at {retry_at.isoformat()}"
            _mark_calendar(db, cid, "error", msg, now, retry_at=retry_at)
            result.calendars.append(_calendar_result(info, "error", msg))
            problems.append(msg)
            retry_times.append(retry_at)
            continue
        except ProviderError as exc:
            msg = f"{type(exc).__name__}: {exc}"
            _mark_calendar(db, cid, "error", msg, now)
            result.calendars.append(_calendar_result(info, "error", msg))
            problems.append(msg)
            continue
        except Exception as exc:  # noqa: BLE001 - one calendar's failure is recorded, not fatal
            msg = describe_failure(exc)
            log.error("connection %s calendar %s failed: %s", result.connection_id, cid, msg)
            _mark_calendar(db, cid, "error", msg, now)
            result.calendars.append(_calendar_result(info, "error", msg))
            problems.append(msg)
            continue
        result.calendars.append(cal_result)
        if cal_result.status in ("error", "guarded") and cal_result.error:
            problems.append(f"calendar {cal_result.name!r}: {cal_result.error}")
    if problems:
        result.status, result.error = "error", "; ".join(problems)[:2000]
    if ran and len(retry_times) == ran:
        return min(retry_times)
    return None


def sync_connection(settings: Settings, db: Database, connection_id: int, now: dt.datetime,
                    connector: Connector | None = None, *,
                    sleep: Callable[[float], None] = time.sleep,
                    worker_id: str | None = None, calendar_ids: list[int] | None = None,
                    claim: bool = True, rng: random.Random | None = None,
                    release: bool | None = None) -> ConnectionResult:
    """Sync one connection's primary and conflict calendars (or ``calendar_ids``) now.

    Returns a :class:`ConnectionResult` (status ``busy`` when another worker holds the
    lease; ``error`` then says which worker and until when). Records health on the
    connection (status ok/error/needs_reauth, last_error, last_sync_at, last_success_at,
    next_sync_at) and on each calendar. Never raises for provider trouble. ``sleep`` and
    ``rng`` go to the connector's retry layer when the connector is built here. The lease
    is released at the end when ``release`` (default: when it was claimed here).

    A sync that changes nothing costs one read transaction for the connection and its
    calendars, one read per calendar for the plan, and one write for every calendar's
    token and health, the connection's health and the lease.
    """
    with working_on(str(connection_id)):
        return _sync_connection(settings, db, connection_id, now, connector, sleep=sleep,
                                worker_id=worker_id, calendar_ids=calendar_ids, claim=claim,
                                rng=rng, release=claim if release is None else release)


def _sync_connection(settings: Settings, db: Database, connection_id: int, now: dt.datetime,
                     connector: Connector | None, *, sleep: Callable[[float], None],
                     worker_id: str | None, calendar_ids: list[int] | None, claim: bool,
                     rng: random.Random | None, release: bool) -> ConnectionResult:
    owner = worker_id or default_worker_id()
    result = ConnectionResult(connection_id)
    if claim and not claim_connection(db, connection_id, owner, now,
                                      settings.sync.lease_seconds):
        holder, until = lease_holder(db, connection_id)
        with db.read_session() as s:
            result.public_id = s.scalar(select(Connection.public_id)
                                        .where(Connection.id == connection_id)) or ""
        result.status = "busy"
        result.error = (f"worker {holder or 'unknown'} is syncing it"
                        + (f" (lease until {until.isoformat()})" if until else ""))
        return result
    own_connector = connector is None
    later: dt.datetime | None = None
    options: dict[str, Any] = {"sleep": sleep}
    if rng is not None:
        options["rng"] = rng
    released = False
    finish: list[Record] = []
    try:
        with db.read_session() as s:
            conn = s.get(Connection, connection_id)
            if conn is None:
                raise NotFound(f"connection {connection_id} not found")
            result.user_id, result.provider = conn.user_id, conn.provider
            result.public_id = conn.public_id
            due_before = conn.next_sync_at
            CONNECTION.set(conn.public_id)  # log lines and metrics of this sync
            PROVIDER.set(conn.provider)
            conn_info = {"provider": conn.provider, "account": conn.account}
            user = s.get(User, conn.user_id)
            infos = calendar_infos(s, settings, conn, user.timezone if user else "UTC",
                                   calendar_ids)
            try:
                if connector is None:
                    connector = build_connector(settings, conn, options)
            except NeedsReauth as exc:
                result.status, result.error = "needs_reauth", str(exc)
            except CalsyncError as exc:
                result.status, result.error = "error", str(exc)
            except Exception as exc:  # noqa: BLE001 - a plugin bug must not stop the run
                result.status, result.error = "error", describe_failure(exc)
                log.error("building the %s connector of connection %s failed: %s",
                          conn.provider, connection_id, result.error)
        fresh: dict[str, Any] | None = None
        if connector is not None:
            later = _sync_calendars(settings, db, conn_info, connector, infos, now, result,
                                    owner, finish)
            try:
                fresh = connector.credentials()
            except NeedsReauth as exc:
                result.status, result.error = "needs_reauth", str(exc)
            except CalsyncError as exc:
                log.warning("connection %s: reading refreshed credentials failed: %s",
                            connection_id, exc)
        result.waits = list(getattr(getattr(connector, "retry", None), "waits", []))
        sealed = CredentialBox.from_settings(settings).seal(fresh) if fresh else None
        with db.session() as s:
            for record in finish:  # the calendars that synced: tokens, counts, health
                record(s)
            _record_connection(settings, s, db.dialect, connection_id, result, now, owner,
                               sealed=sealed, due_before=due_before, later=later, rng=rng,
                               reschedule=calendar_ids is None, release=release)
            released = release
        totals = result.totals()
        log.info("synced connection %s (%s, user %s): %s; %s", connection_id, result.provider,
                 result.user_id, result.status,
                 ", ".join(f"{n} {k}" for k, n in totals.items() if n) or "nothing changed")
        return result
    finally:
        if own_connector and connector is not None:
            try:
                connector.close()
            except Exception:  # noqa: BLE001 - closing must not hide the result
                log.warning("closing connector of connection %s failed", connection_id)
        if release and not released:
            release_connection(db, connection_id, owner)


def _record_connection(settings: Settings, s: Any, dialect: str, connection_id: int,
                       result: ConnectionResult, now: dt.datetime, owner: str, *,
                       sealed: bytes | None, due_before: dt.datetime | None,
                       later: dt.datetime | None, rng: random.Random | None,
                       reschedule: bool, release: bool) -> None:
    """The connection's side of a finished sync, in the caller's write transaction (Core:
    one read of the row, locked on PostgreSQL so a push marking it due meanwhile is seen,
    and one update): health, next due time, refreshed credentials, the lease."""
    row = s.execute(_FINISHED_LOCKED if dialect == "postgresql" else _FINISHED,
                    {"connection_id": connection_id}).first()
    if row is None:
        return
    refused = (row.settings or {}).get("tenant_refused")
    if refused and result.status == "ok" and not result.calendars:
        # an organisation's mailbox it may not open: stays in error with what to do
        result.status, result.error = "error", str(refused)
    emit_connection_status(s, connection=row.public_id, user_id=row.user_id,
                           provider=row.provider, account=row.account,
                           old_status=row.status, new_status=result.status,
                           detail=result.error, now=now, base_url=settings.server.base_url)
    values: dict[str, Any] = {"status": result.status, "last_error": result.error,
                              "last_sync_at": now, "updated_at": now}
    if result.status == "ok":
        values["last_success_at"] = now
    if sealed is not None:
        values["credentials"] = sealed
    marked_meanwhile = row.next_sync_at is not None and \
        row.next_sync_at != due_before  # a push arrived during this sync
    if (reschedule and not marked_meanwhile) or row.next_sync_at is None:
        values["next_sync_at"] = max(later or now, next_due(settings, now, rng))
    if release and row.lease_owner == owner:
        values.update(lease_owner=None, lease_until=None)
    s.execute(update_by_id(_connections, tuple(sorted(values))),
              {"b_id": connection_id, **values})


_FINISHED = select(_connections.c.public_id, _connections.c.user_id, _connections.c.provider,
                   _connections.c.account, _connections.c.status, _connections.c.settings,
                   _connections.c.next_sync_at, _connections.c.lease_owner) \
    .where(_connections.c.id == bindparam("connection_id"))
_FINISHED_LOCKED = _FINISHED.with_for_update()


def _sync_claimed(settings: Settings, db: Database, cid: int, now: dt.datetime, owner: str,
                  sleep: Callable[[float], None],
                  connector_for: Callable[[int], Connector | None] | None
                  ) -> ConnectionResult:
    """Sync one connection this worker has leased, then release it; never raises."""
    started = time.monotonic()
    result: ConnectionResult
    try:
        connector = connector_for(cid) if connector_for else None
        result = sync_connection(settings, db, cid, now, connector, sleep=sleep,
                                 worker_id=owner, claim=False, release=True)
    except Exception as exc:  # noqa: BLE001 - keep going with the other connections
        msg = describe_failure(exc)
        log.error("sync of connection %s failed: %s", cid, msg)
        result = ConnectionResult(cid, status="error", error=msg)
        with db.session() as s:
            conn = s.get(Connection, cid)
            if conn is not None:
                result.provider = conn.provider
                emit_connection_status(s, connection=conn.public_id, user_id=conn.user_id,
                                       provider=conn.provider, account=conn.account,
                                       old_status=conn.status, new_status="error",
                                       detail=msg, now=now,
                                       base_url=settings.server.base_url)
                conn.status, conn.last_error, conn.last_sync_at = "error", msg, now
                conn.next_sync_at = next_due(settings, now)
                if conn.lease_owner == owner:
                    conn.lease_owner, conn.lease_until = None, None
    provider = result.provider or "unknown"
    metrics.SYNC_RUNS.labels(provider, result.status).inc()
    metrics.SYNC_DURATION.labels(provider, result.status).observe(time.monotonic() - started)
    return result


def _onboard_tenant_users(settings: Settings, db: Database, now: dt.datetime) -> None:
    """Users imported since get their organisation-wide connection (calsync.sync.tenants);
    a failure here is logged and never stops the syncs."""
    from calsync.sync.tenants import onboard_due

    def discover(conn: Connection) -> list[Any]:
        connector = build_connector(settings, conn)
        try:
            return connector.list_calendars()
        finally:
            connector.close()

    try:
        onboard_due(settings, db, now, discover)
    except Exception as exc:  # noqa: BLE001 - onboarding must not stop the syncs
        log.error("onboarding users of organisation-wide connections failed: %s",
                  describe_failure(exc))


def run_due_syncs(settings: Settings, db: Database, now: dt.datetime, *,
                  worker_id: str | None = None, sleep: Callable[[float], None] = time.sleep,
                  max_connections: int | None = None,
                  connector_for: Callable[[int], Connector | None] | None = None,
                  concurrency: int | None = None,
                  clock: Callable[[], dt.datetime] | None = None,
                  stop: threading.Event | None = None) -> list[ConnectionResult]:
    """Sync every due connection (``next_sync_at`` null or past) this worker can lease,
    up to ``concurrency`` (default ``sync.concurrency``) at once, each in its own thread.

    Connections are claimed as threads free up, so a connection that becomes due while the
    others run (a push notification) is taken in the same call. ``clock`` (when given)
    gives the time of each claim and sync instead of ``now``; ``stop`` ends the call after
    the syncs in flight. One connection's failure never stops the others.
    ``connector_for(connection_id)`` may supply connectors (tests); by default they are
    built from the stored credentials. Results come in the order the syncs finished.
    """
    owner = worker_id or default_worker_id()
    threads = max(1, concurrency or settings.sync.concurrency)
    lease = settings.sync.lease_seconds
    results: list[ConnectionResult] = []
    _onboard_tenant_users(settings, db, now)
    claimed = 0

    def room() -> int:
        left = threads if max_connections is None else min(threads,
                                                            max_connections - claimed)
        return max(0, left)

    with ThreadPoolExecutor(threads, thread_name_prefix="calsync-sync") as pool:
        running: set[Future[ConnectionResult]] = set()
        exhausted = False
        while True:
            want = room() - len(running)
            if want > 0 and not exhausted and not (stop is not None and stop.is_set()):
                at = clock() if clock is not None else now
                ids = claim_due(db, owner, at, lease, want)
                claimed += len(ids)
                exhausted = len(ids) < want
                for cid in ids:
                    running.add(pool.submit(_sync_claimed, settings, db, cid, at, owner,
                                            sleep, connector_for))
            if not running:
                break
            done, running = wait(running, return_when=FIRST_COMPLETED)
            results.extend(f.result() for f in done)
            if clock is not None:
                exhausted = False  # time moved on: more may be due now
            if max_connections is not None and claimed >= max_connections:
                exhausted = True
    return results


def sync_calendar_now(settings: Settings, db: Database, calendar_id: int, now: dt.datetime,
                      connector: Connector | None = None, *,
                      sleep: Callable[[float], None] = time.sleep) -> ConnectionResult:
    """Sync one calendar at once (a push notification arrived). When another worker holds
    the connection's lease the result says ``busy`` and the connection is marked due."""
    with db.session() as s:
        cal = s.get(Calendar, calendar_id)
        if cal is None:
            raise NotFound(f"calendar {calendar_id} not found")
        connection_id = cal.connection_id
    result = sync_connection(settings, db, connection_id, now, connector, sleep=sleep,
                             calendar_ids=[calendar_id])
    if result.status == "busy":
        with db.session() as s:
            s.execute(update(Connection).where(Connection.id == connection_id)
                      .values(next_sync_at=now))
    return result
