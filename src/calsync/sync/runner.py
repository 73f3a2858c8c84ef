"""Running syncs: leases, retries, health. What the worker and the CLI call.

- :func:`run_due_syncs` (the worker calls it every tick): claims due connections one at a
  time with a row lease (``Connection.lease_owner``/``lease_until``; ``SELECT ... FOR UPDATE
  SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), syncs each, releases it with
  the next due time. A crashed worker's lease expires after ``sync.lease_seconds``.
- :func:`sync_connection`: one connection now (claims its lease unless told not to).
- :func:`sync_calendar_now`: one calendar now (push notifications).

Retries (:class:`Retrier`): ``Throttled`` waits ``retry_after`` when the provider gave one,
else exponential backoff with jitter, as does ``ProviderUnavailable``/timeouts, up to
``sync.max_retries``; a ``retry_after`` longer than :data:`MAX_INLINE_WAIT` is not slept
through: the connection is rescheduled for then. ``NeedsReauth`` is never retried: the
connection goes to ``needs_reauth`` and is skipped until reconnected. A failing connection
never stops the others. The sleep function and random source are injectable for tests.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import or_, select, update
from sqlalchemy.orm import object_session

from calsync.config import Settings
from calsync.db.models import Calendar, Connection, User
from calsync.db.session import Database
from calsync.errors import (
    CalendarSuddenlyEmpty,
    CalsyncError,
    NeedsReauth,
    NotFound,
    ProviderError,
    ProviderUnavailable,
    Throttled,
)
from calsync.secrets import CredentialBox
from calsync.sync.connector import ConnectContext, Connector, load_connector_factory
from calsync.sync.engine import CalendarResult, connection_calendars, sync_calendar

log = logging.getLogger("calsync.sync")
T = TypeVar("T")
MAX_INLINE_WAIT = 120.0  # seconds a worker sleeps through a Retry-After at most
BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0

_WORKER_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def default_worker_id() -> str:
    return _WORKER_ID


class Retrier:
    """``retrier(fn, *args)``: call with retries on Throttled/ProviderUnavailable/timeouts."""

    def __init__(self, max_retries: int, sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None) -> None:
        self.max_retries = max_retries
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.waits: list[float] = []

    def backoff(self, attempt: int) -> float:
        return float(min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt) * self.rng.uniform(0.5, 1.0))

    def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        attempt = 0
        while True:
            try:
                return fn(*args)
            except Throttled as exc:
                wait = exc.retry_after if exc.retry_after is not None else self.backoff(attempt)
                if attempt >= self.max_retries or wait > MAX_INLINE_WAIT:
                    raise
            except (ProviderUnavailable, TimeoutError) as exc:
                if attempt >= self.max_retries:
                    if isinstance(exc, TimeoutError):
                        raise ProviderUnavailable(f"timed out: {exc}") from exc
                    raise
                wait = self.backoff(attempt)
            self.waits.append(wait)
            self.sleep(wait)
            attempt += 1


@dataclass
class ConnectionResult:
    connection_id: int
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
        return {"connection_id": self.connection_id, "user_id": self.user_id,
                "provider": self.provider, "status": self.status, "error": self.error,
                **self.totals(),
                "calendars": [{"calendar_id": c.calendar_id, "name": c.name, "role": c.role,
                               "status": c.status, "error": c.error, "full": c.full,
                               "requests": c.requests, **c.counts} for c in self.calendars]}


# --- leases -------------------------------------------------------------------------------

def _lease_free(now: dt.datetime) -> Any:
    return or_(Connection.lease_until.is_(None), Connection.lease_until <= now)


def claim_next_due(db: Database, owner: str, now: dt.datetime, lease_seconds: int) -> int | None:
    """Lease the most overdue connection; None when nothing is due and free."""
    with db.locked_session() as s:
        q = (select(Connection)
             .where(or_(Connection.next_sync_at.is_(None), Connection.next_sync_at <= now),
                    _lease_free(now), Connection.status != "needs_reauth")
             .order_by(Connection.next_sync_at.is_not(None), Connection.next_sync_at,
                       Connection.id)
             .limit(1))
        if db.dialect == "postgresql":
            q = q.with_for_update(skip_locked=True)
        conn = s.scalar(q)
        if conn is None:
            return None
        conn.lease_owner = owner
        conn.lease_until = now + dt.timedelta(seconds=lease_seconds)
        return conn.id


def claim_connection(db: Database, connection_id: int, owner: str, now: dt.datetime,
                     lease_seconds: int) -> bool:
    """Lease one connection; False when another worker holds a live lease on it."""
    with db.locked_session() as s:
        q = select(Connection).where(Connection.id == connection_id)
        if db.dialect == "postgresql":
            q = q.with_for_update(skip_locked=True)
        conn = s.scalar(q)
        if conn is None:
            if s.scalar(select(Connection.id).where(Connection.id == connection_id)) is None:
                raise NotFound(f"connection {connection_id} not found")
            return False  # row-locked by a worker claiming it right now
        if conn.lease_owner not in (None, owner) and conn.lease_until is not None \
                and conn.lease_until > now:
            return False
        conn.lease_owner = owner
        conn.lease_until = now + dt.timedelta(seconds=lease_seconds)
        return True


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
    user = session.get(User, conn.user_id) if session is not None else None
    if user is not None:
        # Floating times are read in the user's zone; their addresses tell "declined".
        options["timezone"] = user.timezone
        options["emails"] = [e for e in (user.email, conn.account) if e and "@" in e]
    options.update(conn.settings or {})
    return ConnectContext(provider=conn.provider, url=conn.url, account=conn.account,
                          credentials=creds, settings=settings, options=options)


def build_connector(settings: Settings, conn: Connection) -> Connector:
    return load_connector_factory(conn.provider).connect(connect_context(settings, conn))


# --- syncing ------------------------------------------------------------------------------

def _mark_calendars(db: Database, ids: Iterable[int], msg: str, now: dt.datetime) -> None:
    with db.session() as s:
        for cid in ids:
            cal = s.get(Calendar, cid)
            if cal is not None and cal.status != "guarded":
                cal.status, cal.last_error, cal.last_sync_at = "error", msg, now


def renew_lease(db: Database, connection_id: int, owner: str, until: dt.datetime) -> None:
    """Extend our lease (long syncs), so no other worker takes the connection over."""
    with db.session() as s:
        s.execute(update(Connection)
                  .where(Connection.id == connection_id, Connection.lease_owner == owner)
                  .values(lease_until=until))


def _sync_calendars(settings: Settings, db: Database, conn_info: dict[str, Any],
                    connector: Connector, calendar_ids: list[int], now: dt.datetime,
                    retrier: Retrier, result: ConnectionResult,
                    owner: str | None = None) -> dt.datetime | None:
    """Sync the calendars; returns a later next-sync time when a provider asked for one.
    Between calendars the lease is renewed by the wall-clock time spent so far."""
    problems: list[str] = []
    later: dt.datetime | None = None
    started = time.monotonic()
    for i, cid in enumerate(calendar_ids):
        if owner is not None and i > 0:
            elapsed = dt.timedelta(seconds=time.monotonic() - started)
            renew_lease(db, result.connection_id, owner,
                        now + elapsed + dt.timedelta(seconds=settings.sync.lease_seconds))
        try:
            cal_result = sync_calendar(db, settings, cid, connector, now, retrier)
        except CalendarSuddenlyEmpty as exc:
            result.calendars.append(CalendarResult(cid, "", "", status="guarded",
                                                   error=str(exc)))
            problems.append(str(exc))
            continue
        except NeedsReauth as exc:
            msg = (f"{conn_info['provider']} account {conn_info['account']!r} needs to be "
                   f"reconnected: {exc}")
            _mark_calendars(db, [cid], msg, now)
            result.status, result.error = "needs_reauth", msg
            return later
        except ProviderError as exc:
            msg = f"{type(exc).__name__}: {exc}"
            _mark_calendars(db, calendar_ids[i:], msg, now)
            result.status, result.error = "error", msg
            if isinstance(exc, Throttled) and exc.retry_after:
                later = now + dt.timedelta(seconds=exc.retry_after)
            return later
        except Exception as exc:  # noqa: BLE001 - one calendar's failure is recorded, not fatal
            log.exception("connection %s calendar %s failed", result.connection_id, cid)
            msg = f"{type(exc).__name__}: {exc}"
            _mark_calendars(db, [cid], msg, now)
            result.calendars.append(CalendarResult(cid, "", "", status="error", error=msg))
            problems.append(msg)
            continue
        result.calendars.append(cal_result)
        if cal_result.status in ("error", "guarded") and cal_result.error:
            problems.append(f"calendar {cal_result.name!r}: {cal_result.error}")
    if problems:
        result.status, result.error = "error", "; ".join(problems)[:2000]
    return later


def sync_connection(settings: Settings, db: Database, connection_id: int, now: dt.datetime,
                    connector: Connector | None = None, *,
                    sleep: Callable[[float], None] = time.sleep,
                    worker_id: str | None = None, calendar_ids: list[int] | None = None,
                    claim: bool = True, rng: random.Random | None = None) -> ConnectionResult:
    """Sync one connection's primary and conflict calendars (or ``calendar_ids``) now.

    Returns a :class:`ConnectionResult` (status ``busy`` when another worker holds the lease).
    Records health on the connection (status ok/error/needs_reauth, last_error, last_sync_at,
    last_success_at, next_sync_at) and on each calendar. Never raises for provider trouble.
    """
    owner = worker_id or default_worker_id()
    result = ConnectionResult(connection_id)
    if claim and not claim_connection(db, connection_id, owner, now,
                                      settings.sync.lease_seconds):
        result.status = "busy"
        return result
    retrier = Retrier(settings.sync.max_retries, sleep, rng)
    own_connector = connector is None
    later: dt.datetime | None = None
    try:
        with db.session() as s:
            conn = s.get(Connection, connection_id)
            if conn is None:
                raise NotFound(f"connection {connection_id} not found")
            result.user_id, result.provider = conn.user_id, conn.provider
            conn_info = {"provider": conn.provider, "account": conn.account}
            try:
                if connector is None:
                    connector = build_connector(settings, conn)
            except NeedsReauth as exc:
                result.status, result.error = "needs_reauth", str(exc)
            except CalsyncError as exc:
                result.status, result.error = "error", str(exc)
            except Exception as exc:  # noqa: BLE001 - a plugin bug must not stop the run
                log.exception("building the %s connector of connection %s failed",
                              conn.provider, connection_id)
                result.status, result.error = "error", f"{type(exc).__name__}: {exc}"
        ids = calendar_ids if calendar_ids is not None else connection_calendars(db,
                                                                                 connection_id)
        if connector is not None:
            later = _sync_calendars(settings, db, conn_info, connector, ids, now, retrier,
                                    result, owner)
            fresh: dict[str, Any] | None = None
            try:
                fresh = connector.credentials()
            except NeedsReauth as exc:
                result.status, result.error = "needs_reauth", str(exc)
            except CalsyncError as exc:
                log.warning("connection %s: reading refreshed credentials failed: %s",
                            connection_id, exc)
            if fresh:
                with db.session() as s:
                    conn = s.get(Connection, connection_id)
                    if conn is not None:
                        conn.credentials = CredentialBox.from_settings(settings).seal(fresh)
        result.waits = list(retrier.waits)
        with db.session() as s:
            conn = s.get(Connection, connection_id)
            if conn is not None:
                conn.status = result.status
                conn.last_error = result.error
                conn.last_sync_at = now
                if result.status == "ok":
                    conn.last_success_at = now
                if calendar_ids is None or conn.next_sync_at is None:
                    conn.next_sync_at = max(later or now, now + dt.timedelta(
                        seconds=settings.sync.interval_seconds))
                conn.updated_at = now
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
        if claim:
            release_connection(db, connection_id, owner)


def run_due_syncs(settings: Settings, db: Database, now: dt.datetime, *,
                  worker_id: str | None = None, sleep: Callable[[float], None] = time.sleep,
                  max_connections: int | None = None,
                  connector_for: Callable[[int], Connector | None] | None = None
                  ) -> list[ConnectionResult]:
    """Sync every due connection (``next_sync_at`` null or past) this worker can lease.

    One connection's failure never stops the others. ``connector_for(connection_id)`` may
    supply connectors (tests); by default they are built from the stored credentials.
    """
    owner = worker_id or default_worker_id()
    results: list[ConnectionResult] = []
    while max_connections is None or len(results) < max_connections:
        cid = claim_next_due(db, owner, now, settings.sync.lease_seconds)
        if cid is None:
            break
        try:
            connector = connector_for(cid) if connector_for else None
            results.append(sync_connection(settings, db, cid, now, connector, sleep=sleep,
                                           worker_id=owner, claim=False))
        except Exception as exc:  # noqa: BLE001 - keep going with the other connections
            log.exception("sync of connection %s failed", cid)
            results.append(ConnectionResult(cid, status="error", error=f"{exc}"))
            with db.session() as s:
                conn = s.get(Connection, cid)
                if conn is not None:
                    conn.status, conn.last_error, conn.last_sync_at = "error", str(exc), now
                    conn.next_sync_at = now + dt.timedelta(
                        seconds=settings.sync.interval_seconds)
        finally:
            release_connection(db, cid, owner)
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
