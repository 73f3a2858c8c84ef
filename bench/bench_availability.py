"""Availability at scale: one-slot checks and a 200-user slot search over a large schedule.

Data set: 1,000 users (three timezones, Mon-Fri 08:00-17:00) and 1,000,000 busy rows --
half schedule items (jobs, time off, blocks; each with its assignee row), half external
events (each with one busy occurrence on a fresh conflict calendar) -- spread over about
13 months. ``--quick``: 100,000 rows. Bulk-loaded with executemany batches (the span
triggers of migration 0009 fire on every row, as in production).

Figures, per engine (SQLite file, PostgreSQL), each the call the API makes
(``calsync.availability.store.reading`` + ``check_availability`` / ``search_availability``):
- ``check_ms``: one user, one slot of 30 min to 4 h, over 1,000 random users/slots: p50,
  p99, max;
- ``search_ms``: free 30-minute slots for 200 users over 5 working days: each of 5 runs,
  with the client process's CPU time per run (``cpu_ms``: what the load of other
  processes on the machine does not change);
- ``check_cpu_ms``: the bench process's CPU time per check (mean over the 1,000), which
  the load of other processes does not change; ``check_server_cpu_ms`` (and the search's
  ``server_cpu_ms``): the PostgreSQL backends' CPU time per check (per search run), read
  from /proc when the server runs on this machine (10 ms ticks, summed over the runs);
- ``load_average``: the machine's 1-minute load average before and after measuring.

Loading 1M rows takes minutes per engine. To load once and measure many times, name kept
databases: ``CALSYNC_BENCH_AVAILABILITY_SQLITE=/path/file.db`` and/or
``CALSYNC_BENCH_AVAILABILITY_PG=<database name>`` (on the server of
``$CALSYNC_BENCH_DATABASE_URL``). A kept database is loaded when it does not hold the data
set of this size (it is emptied first) and left in place afterwards.
``CALSYNC_BENCH_AVAILABILITY_ENGINES=sqlite`` (or ``postgresql``) runs one engine only.
Goals (issue 12): check p50 <= 1 ms, p99 <= 5 ms; search <= 100 ms; ``goals`` says which
were met in this run.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, text
from sqlalchemy.pool import NullPool

from calsync.availability.check import check_availability, search_availability
from calsync.availability.store import reading
from calsync.db.models import (
    Calendar,
    Connection,
    ExternalBusy,
    ExternalEvent,
    ItemAssignee,
    ScheduleItem,
    User,
)
from calsync.db.session import Database
from calsync.heap import freeze_startup_heap
from calsync.privacy import OPERATOR

UTC = dt.timezone.utc
USERS = 1000
ROWS_FULL = 1_000_000
ROWS_QUICK = 100_000
CHECKS = 1000
SEARCH_RUNS = 5
GOALS = {"check_p50_ms": 1.0, "check_p99_ms": 5.0, "search_ms": 100.0}
SEARCH_USERS = 200
BATCH = 10_000
DAY0 = dt.datetime(2026, 10, 1, tzinfo=UTC)
DAYS = 400
NOW = dt.datetime(2026, 11, 23, 12, tzinfo=UTC)
HOURS = {d: [["08:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}
ZONES = ("America/Chicago", "Europe/Berlin", "UTC")
PG_ADMIN = os.environ.get("CALSYNC_BENCH_DATABASE_URL",
                          "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
KEEP_SQLITE = os.environ.get("CALSYNC_BENCH_AVAILABILITY_SQLITE", "")
KEEP_PG = os.environ.get("CALSYNC_BENCH_AVAILABILITY_PG", "")
ENGINES = os.environ.get("CALSYNC_BENCH_AVAILABILITY_ENGINES", "sqlite,postgresql")


def _batches(rows: list[dict[str, Any]]) -> Any:
    for i in range(0, len(rows), BATCH):
        yield rows[i:i + BATCH]


def _slot(rng: random.Random) -> tuple[dt.datetime, dt.datetime]:
    start = DAY0 + dt.timedelta(days=rng.randrange(DAYS), minutes=15 * rng.randrange(96))
    return start, start + dt.timedelta(minutes=rng.choice((30, 60, 90, 120, 240)))


def load(db: Database, rows: int, seed: int = 7) -> dict[str, float]:
    """Bulk-insert the data set; returns seconds taken."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    users = [{"id": f"u{i:04d}", "name": f"Tech {i}", "timezone": ZONES[i % 3],
              "working_hours": HOURS, "private_mode": True, "feed_version": 0,
              "feed_enabled": False, "created_at": NOW, "updated_at": NOW}
             for i in range(USERS)]
    conns = [{"id": i + 1, "user_id": u["id"], "provider": "caldav", "account": u["id"],
              "status": "ok", "settings": {}, "created_at": NOW, "updated_at": NOW}
             for i, u in enumerate(users)]
    cals = [{"id": i + 1, "connection_id": i + 1, "remote_id": f"/c/{i}", "name": "Work",
             "role": "conflict", "read_only": True, "status": "ok", "last_success_at": NOW,
             "last_sync_at": NOW, "known_items": 0, "empty_confirmed": False}
            for i in range(USERS)]
    n_items, n_ext = rows // 2, rows - rows // 2
    with db.engine.begin() as c:
        c.execute(insert(User), users)
        c.execute(insert(Connection), conns)
        c.execute(insert(Calendar), cals)
    kinds = ("job", "job", "job", "time_off", "block")
    items: list[dict[str, Any]] = []
    assignees: list[dict[str, Any]] = []
    for pk in range(1, n_items + 1):
        s, e = _slot(rng)
        kind = kinds[pk % 5]
        items.append({"pk": pk, "kind": kind, "ext_id": f"i{pk}", "title": f"Item {pk}",
                      "status": "scheduled", "all_day": False, "start_at": s, "end_at": e,
                      "tzid": "UTC", "sequence": 0, "content_hash": "0" * 64,
                      "created_at": NOW, "updated_at": NOW})
        assignees.append({"item_pk": pk, "user_id": f"u{rng.randrange(USERS):04d}"})
    events: list[dict[str, Any]] = []
    busy: list[dict[str, Any]] = []
    statuses = ("busy", "busy", "busy", "tentative", "free")
    for eid in range(1, n_ext + 1):
        ui = rng.randrange(USERS)
        s, e = _slot(rng)
        events.append({"id": eid, "calendar_id": ui + 1, "user_id": f"u{ui:04d}",
                       "remote_id": f"r{eid}", "content_hash": "0" * 64,
                       "summary": f"Private {eid}", "attendees": [],
                       "busy_status": statuses[eid % 5], "status": "confirmed",
                       "private_at_source": False, "all_day": False, "updated_at": NOW})
        busy.append({"id": eid, "event_id": eid, "user_id": f"u{ui:04d}", "start_at": s,
                     "end_at": e})
    t_gen = time.perf_counter()
    for model, data in ((ScheduleItem, items), (ItemAssignee, assignees),
                        (ExternalEvent, events), (ExternalBusy, busy)):
        for chunk in _batches(data):
            with db.engine.begin() as c:
                c.execute(insert(model), chunk)
    with db.engine.begin() as c:
        c.execute(text("ANALYZE"))
    t_end = time.perf_counter()
    return {"generate_s": round(t_gen - t0, 2), "insert_s": round(t_end - t_gen, 2),
            "rows_per_s": round((2 * rows) / (t_end - t_gen))}


def _server_ticks(db: Database) -> dict[int, int] | None:
    """CPU clock ticks (user + system) so far of each PostgreSQL backend connected to
    ``db``'s database, when the server runs on this machine; None otherwise."""
    if db.dialect != "postgresql" or db.engine.url.host not in ("127.0.0.1", "localhost"):
        return None
    probe = create_engine(db.engine.url, poolclass=NullPool)  # not one of the pooled ones
    try:
        with probe.connect() as c:
            pids = list(c.scalars(text("SELECT pid FROM pg_stat_activity WHERE datname = "
                                       "current_database() AND pid <> pg_backend_pid()")))
    finally:
        probe.dispose()
    ticks = {}
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != "postgres":
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks[pid] = int(fields[11]) + int(fields[12])
    return ticks or None


def _server_ms(before: dict[int, int] | None, db: Database) -> float | None:
    """Backend CPU milliseconds used since ``before`` (new backends count in full)."""
    after = _server_ticks(db)
    if before is None or after is None:
        return None
    used = sum(t - before.get(pid, 0) for pid, t in after.items())
    return used * 1000 / os.sysconf("SC_CLK_TCK")


def measure(db: Database, seed: int = 11) -> dict[str, Any]:
    rng = random.Random(seed)
    stale_after = dt.timedelta(days=3650)
    load_before = round(os.getloadavg()[0], 2)
    times = []
    busy_results = 0
    with reading(db) as s:  # the pooled connection exists before the clocks start
        check_availability(s, ["u0000"], NOW, NOW + dt.timedelta(hours=1), OPERATOR, NOW,
                           stale_after)
    freeze_startup_heap()  # as `calsync serve` does once its app is built (calsync.heap)
    server_before = _server_ticks(db)
    c_checks = time.process_time()
    for _ in range(CHECKS):
        uid = f"u{rng.randrange(USERS):04d}"
        start, end = _slot(rng)
        t0 = time.perf_counter()
        with reading(db) as s:
            [res] = check_availability(s, [uid], start, end, OPERATOR, NOW, stale_after)
        times.append((time.perf_counter() - t0) * 1000)
        busy_results += not res["available"]
    check_cpu = (time.process_time() - c_checks) * 1000 / CHECKS
    check_server = _server_ms(server_before, db)
    times.sort()
    users = [f"u{i:04d}" for i in rng.sample(range(USERS), SEARCH_USERS)]
    monday = dt.datetime(2027, 3, 1, tzinfo=UTC)  # a Monday in the middle of the data
    runs, cpu, slot_count = [], [], 0
    server_before = _server_ticks(db)
    for _ in range(SEARCH_RUNS):
        t0, c0 = time.perf_counter(), time.process_time()
        with reading(db) as s:
            results = search_availability(s, users, monday - dt.timedelta(hours=12),
                                          monday + dt.timedelta(days=5), dt.timedelta(minutes=30),
                                          NOW, stale_after)
        runs.append(round((time.perf_counter() - t0) * 1000, 1))
        cpu.append(round((time.process_time() - c0) * 1000, 1))
        slot_count = sum(len(r["slots"]) for r in results)
    search_server = _server_ms(server_before, db)
    check = {"p50": round(statistics.median(times), 2),
             "p99": round(times[int(len(times) * 0.99) - 1], 2),
             "max": round(times[-1], 2), "n": len(times), "busy_answers": busy_results}
    search = {"runs": runs, "median": statistics.median(runs), "cpu_ms": cpu,
              "server_cpu_ms": (None if search_server is None
                                else round(search_server / SEARCH_RUNS, 1)),
              "users": SEARCH_USERS, "days": 5, "slot_minutes": 30, "slots_found": slot_count}
    return {"check_ms": check, "check_cpu_ms": round(check_cpu, 3),
            "check_server_cpu_ms": (None if check_server is None
                                    else round(check_server / CHECKS, 3)),
            "search_ms": search,
            "load_average": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
            "goals": {"check_p50": check["p50"] <= GOALS["check_p50_ms"],
                      "check_p99": check["p99"] <= GOALS["check_p99_ms"],
                      "search": search["median"] <= GOALS["search_ms"]}}


def _holds_data_set(db: Database, rows: int) -> bool:
    with db.engine.connect() as c:
        try:
            users = c.execute(text("SELECT count(*) FROM users")).scalar_one()
            items = c.execute(text("SELECT count(*) FROM item_assignees")).scalar_one()
            busy = c.execute(text("SELECT count(*) FROM external_busy")).scalar_one()
        except Exception:  # noqa: BLE001 - no tables yet
            return False
    return bool(users == USERS and items == rows // 2 and busy == rows - rows // 2)


def _bench(db: Database, rows: int, kept: bool = False) -> dict[str, Any]:
    db.upgrade()
    loaded: dict[str, Any] = {"reused": True}
    if not (kept and _holds_data_set(db, rows)):
        loaded = load(db, rows)
    return {"rows": rows, "users": USERS, "load": loaded, **measure(db)}


def _sqlite(rows: int) -> dict[str, Any]:
    if KEEP_SQLITE:
        path = Path(KEEP_SQLITE)
        if path.exists():
            probe = Database(f"sqlite:///{path}")
            try:
                probe.upgrade()
                fits = _holds_data_set(probe, rows)
            finally:
                probe.dispose()
            if not fits:
                for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                    leftover.unlink(missing_ok=True)
        db = Database(f"sqlite:///{path}")
        try:
            return _bench(db, rows, kept=True)
        finally:
            db.dispose()
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'bench.db'}")
        try:
            return _bench(db, rows)
        finally:
            db.dispose()


def _postgres(rows: int) -> dict[str, Any]:
    try:
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text("select 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means no server
        return {"skipped": f"PostgreSQL not reachable at {PG_ADMIN}: {type(exc).__name__}"}
    name = KEEP_PG or f"calsync_bench_{uuid.uuid4().hex[:8]}"
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as c:
        exists = c.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"),
                           {"n": name}).first() is not None
    if exists and KEEP_PG:
        probe = Database(url)
        try:
            probe.upgrade()
            fits = _holds_data_set(probe, rows)
        finally:
            probe.dispose()
        if not fits:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            exists = False
    if not exists:
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    db = Database(url)
    try:
        return _bench(db, rows, kept=bool(KEEP_PG))
    finally:
        db.dispose()
        if not KEEP_PG:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run(args: Any) -> dict[str, Any]:
    rows = ROWS_QUICK if getattr(args, "quick", False) else ROWS_FULL
    engines = {e.strip() for e in ENGINES.split(",")}
    out: dict[str, Any] = {}
    if "sqlite" in engines:
        out["sqlite"] = _sqlite(rows)
    if "postgresql" in engines:
        out["postgresql"] = _postgres(rows)
    return out
