"""The concurrent worker: no-op syncs per second of one worker process, 1,000 connections.

Each connection is a memory-connector account (the shipped in-process provider, through
the real runner, engine and database) with a primary and a conflict calendar, already
synced once, so a round is the steady state of a 5-minute cycle: one incremental pull per
calendar and the bookkeeping writes. Provider latency is injected per request (0 ms and
100 ms; the memory server sleeps outside its lock, as a remote server's round trip would).
Rows: ``sync.concurrency`` 1 (the old one-at-a-time worker), 8 (the default) and 32, on
SQLite and PostgreSQL. From syncs/s: the connections one worker keeps on a 5-minute cycle
(``syncs/s * 300``). ``cpu_ms_per_sync`` is the bench process's own CPU time per sync
(it moves less than wall-clock figures with what else the machine runs). The full run ends
with 10,000 connections at 100 ms per request (``sync.concurrency`` 32 and 64) on both
engines: the "one worker keeps 10,000 connections on a 5-minute cycle" measurement.
``--quick``: 200 connections, no 10,000 rows.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text, update  # noqa: E402

from calsync.config import Settings, load_settings  # noqa: E402
from calsync.db.models import Calendar, Connection, User  # noqa: E402
from calsync.db.session import Database  # noqa: E402
from calsync.secrets import CredentialBox  # noqa: E402
from calsync.sync.memory import shared_server  # noqa: E402
from calsync.sync.runner import run_due_syncs  # noqa: E402

UTC = dt.timezone.utc
SECRET = "bench-secret-key-0123456789abcdef"
PG_ADMIN = os.environ.get("CALSYNC_BENCH_DATABASE_URL",
                          "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _settings(url: str) -> Settings:
    base = load_settings(env={"CALSYNC_SECRET_KEY": SECRET})
    return replace(base, database=replace(base.database, url=url))


def _seed(db: Database, settings: Settings, n: int, server: str) -> None:
    sealed = CredentialBox.from_settings(settings).seal({"k": "v"})
    now = dt.datetime.now(UTC)
    with db.session() as s:
        for i in range(n):
            s.add(User(id=f"u{i}", name=f"u{i}", timezone="UTC", working_hours={},
                       created_at=now, updated_at=now))
        s.flush()
        conns = [Connection(user_id=f"u{i}", provider="memory", account=f"u{i}@memory",
                            url=server, credentials=sealed, settings={}) for i in range(n)]
        s.add_all(conns)
        s.flush()
        s.add_all([Calendar(connection_id=c.id, remote_id=rid, name=rid, role=role)
                   for c in conns for rid, role in (("work", "primary"),
                                                     ("personal", "conflict"))])


def _round(settings: Settings, db: Database, concurrency: int, latency: float,
           server: str) -> dict[str, Any]:
    shared_server(server).latency = latency
    with db.session() as s:  # every connection due now
        s.execute(update(Connection).values(next_sync_at=None))
    requests_before = shared_server(server).requests
    start, cpu = time.perf_counter(), time.process_time()
    results = run_due_syncs(settings, db, dt.datetime.now(UTC), worker_id="bench",
                            sleep=lambda _s: None, concurrency=concurrency)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    ok = sum(r.status == "ok" for r in results)
    rate = len(results) / elapsed if elapsed else 0.0
    return {"concurrency": concurrency, "latency_ms": round(latency * 1000),
            "connections": len(results), "ok": ok, "seconds": round(elapsed, 2),
            "requests": shared_server(server).requests - requests_before,
            "syncs_per_second": round(rate, 1),
            "cpu_ms_per_sync": round(1000 * cpu / max(1, len(results)), 2),
            "connections_per_worker_at_5_min": int(rate * 300)}


ROUNDS = [(latency, concurrency) for latency in (0.0, 0.1) for concurrency in (1, 8, 32)]
LARGE_ROUNDS = [(0.1, 32), (0.1, 64)]


def _engine_rows(kind: str, url: str, n: int,
                 rounds: list[tuple[float, int]] = ROUNDS) -> list[dict[str, Any]]:
    db = Database(url)
    db.upgrade()
    settings = _settings(url)
    server = f"bench-{uuid.uuid4().hex[:8]}"
    _seed(db, settings, n, server)
    rows = []
    # first round: every calendar listed in full once (tokens stored), not measured
    run_due_syncs(settings, db, dt.datetime.now(UTC), worker_id="bench",
                  sleep=lambda _s: None, concurrency=32)
    for latency, concurrency in rounds:
        if latency and concurrency == 1 and n > 200:
            continue  # one at a time at 100 ms: the quick run's figure tells it
        row = _round(settings, db, concurrency, latency, server)
        row["engine"] = kind
        rows.append(row)
        print(f"  {kind}: {row}", flush=True)
    db.dispose()
    return rows


def _postgresql_rows(n: int, rounds: list[tuple[float, int]]) -> list[dict[str, Any]]:
    try:
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        name = f"calsync_bench_{uuid.uuid4().hex[:8]}"
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            return _engine_rows("postgresql", PG_ADMIN.rsplit("/", 1)[0] + "/" + name, n,
                                rounds)
        finally:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    except Exception as exc:  # noqa: BLE001 - recorded, the SQLite rows stand
        return [{"engine": "postgresql", "skipped": f"{type(exc).__name__}: {exc}"}]


def run(args: Any) -> dict[str, Any]:
    quick = getattr(args, "quick", False)
    n = 200 if quick else 1000
    only_large = os.environ.get("CALSYNC_BENCH_WORKER_LARGE_ONLY") == "1"
    rows: list[dict[str, Any]] = []
    if not only_large:
        with tempfile.TemporaryDirectory() as tmp:
            rows += _engine_rows("sqlite", f"sqlite:///{Path(tmp) / 'bench.db'}", n)
        rows += _postgresql_rows(n, ROUNDS)
    if not quick:  # one worker, 10,000 connections, 100 ms per request
        with tempfile.TemporaryDirectory() as tmp:
            rows += _engine_rows("sqlite", f"sqlite:///{Path(tmp) / 'large.db'}", 10_000,
                                 LARGE_ROUNDS)
        rows += _postgresql_rows(10_000, LARGE_ROUNDS)
    load = os.getloadavg()
    return {"connections": n, "rows": rows,
            "load_average": [round(x, 2) for x in load],
            "note": "no-op rounds after a first full round; memory connector with injected "
                    "per-request latency; one worker process"}
