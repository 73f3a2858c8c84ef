"""Webhook benchmarks, in one run:

1. one worker (one :class:`~calsync.outbox.delivery.Deliverer`, 16 threads) delivering
   10,000 events (2,000 with --quick) to a local receiver that answers at once, with the
   default per-endpoint limit (4) and with 16: deliveries/s, end to end (numbering,
   claiming, signing, POST, recording);
2. the same against a receiver that takes 200 ms per request (500 events; 100 with
   --quick), per-endpoint limit 1, 4 and 16: concurrency pays;
3. the outbox write on an import of 5,000 jobs (1,000 with --quick): the import as
   shipped (the platform's own changes emit nothing), and the same import with one event
   written per job inside the job's transaction, which is what a change that emits costs.

The receiver runs in its own process (``http.server`` with a thread per request), so it
does not share the deliverer's interpreter. Figures on SQLite, and on PostgreSQL when one
answers on 127.0.0.1:5432 (or $CALSYNC_BENCH_DATABASE_URL).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

UTC = dt.timezone.utc
SECRET = "bench-secret-key-0123456789abcdef"
PG_ADMIN = os.environ.get("CALSYNC_BENCH_DATABASE_URL",
                          "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
_RECEIVER = """
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
delay = float(sys.argv[1])
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if delay: time.sleep(delay)
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
s = ThreadingHTTPServer(("127.0.0.1", 0), H); s.daemon_threads = True
print(s.server_address[1], flush=True); s.serve_forever()
"""


class ReceiverProcess:
    def __init__(self, delay: float) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _RECEIVER, str(delay)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}/hook"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _settings(url: str, **webhooks: Any) -> Any:
    from calsync.config import load_settings

    base = load_settings(env={"CALSYNC_SECRET_KEY": SECRET})
    return replace(base, database=replace(base.database, url=url),
                   webhooks=replace(base.webhooks, **webhooks))


def _databases(tmp: Path) -> list[tuple[str, str, Any]]:
    """(engine, url, cleanup) for SQLite and, when reachable, a fresh PostgreSQL db."""
    out: list[tuple[str, str, Any]] = [("sqlite", f"sqlite:///{tmp / 'bench.db'}", None)]
    try:
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        name = f"calsync_bench_{uuid.uuid4().hex[:8]}"
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))

        def drop() -> None:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()

        out.append(("postgresql", PG_ADMIN.rsplit("/", 1)[0] + "/" + name, drop))
    except Exception as exc:  # noqa: BLE001 - recorded as skipped
        out.append(("postgresql", "", f"skipped: {type(exc).__name__}"))
    return out


def _fresh(url: str) -> Any:
    from calsync.db.models import Base
    from calsync.db.session import Database

    db = Database(url)
    db.upgrade()
    with db.session() as s:
        for table in reversed(Base.metadata.sorted_tables):
            s.execute(table.delete())
    return db


def _deliver(url: str, receiver: str, events: int, per_endpoint: int) -> dict[str, Any]:
    from calsync.outbox.delivery import Deliverer
    from calsync.outbox.endpoints import create_endpoint
    from calsync.outbox.events import SCHEDULE_ITEM_CHANGED, emit

    settings = _settings(url, max_concurrency_per_endpoint=per_endpoint, delivery_threads=16,
                         timeout_seconds=10.0)
    db = _fresh(url)
    now = dt.datetime.now(UTC)
    with db.session() as s:
        create_endpoint(s, settings, receiver, ["*"], "bench", now)
    for start in range(0, events, 1000):
        with db.session() as s:
            for i in range(start, min(events, start + 1000)):
                emit(s, SCHEDULE_ITEM_CHANGED, {"kind": "block", "id": f"b{i}", "n": i}, now,
                     order_key=f"item:block:b{i}")
    client = httpx.Client(timeout=10.0, limits=httpx.Limits(max_connections=16,
                                                            max_keepalive_connections=16))
    deliverer = Deliverer(settings, db, client=client, threads=16)
    started = time.perf_counter()
    try:
        deliverer.run_until_idle(timeout=3600, poll=0.005)
    finally:
        deliverer.close()
        client.close()
    took = time.perf_counter() - started
    delivered = deliverer.outcomes.get("delivered", 0)
    db.dispose()
    return {"events": events, "per_endpoint_limit": per_endpoint, "seconds": round(took, 2),
            "deliveries_per_second": round(delivered / took, 1), "delivered": delivered}


def _import_cost(url: str, jobs: int, rounds: int = 2) -> dict[str, Any]:
    import calsync.schedule.store as store
    from calsync.outbox.events import SCHEDULE_ITEM_CHANGED, emit, item_order_key
    from calsync.schedule.store import import_document

    now = dt.datetime(2026, 12, 1, 9, 0, tzinfo=UTC)

    def doc(tag: str) -> dict[str, Any]:
        return {"users": [{"id": f"u{k}", "name": f"U{k}", "timezone": "UTC"}
                          for k in range(50)],
                "jobs": [{"id": f"{tag}{i}", "title": f"Install {i}", "assignees": [f"u{i % 50}"],
                          "start": (now + dt.timedelta(hours=i)).isoformat(),
                          "end": (now + dt.timedelta(hours=i + 1)).isoformat()}
                         for i in range(jobs)]}

    original = store.upsert_item

    def upsert_and_emit(session: Any, rec: Any, *args: Any, **kwargs: Any) -> Any:
        outcome = original(session, rec, *args, **kwargs)
        emit(session, SCHEDULE_ITEM_CHANGED, {"kind": rec.kind, "id": rec.id}, now,
             order_key=item_order_key(rec.kind, rec.id))
        return outcome

    # Alternating rounds on fresh databases, best of each: the machine's load drifts.
    plain_runs: list[float] = []
    event_runs: list[float] = []
    for round_ in range(rounds):
        for with_events in (False, True):
            db = _fresh(url)
            if with_events:
                store.upsert_item = upsert_and_emit  # type: ignore[assignment]
            try:
                started = time.perf_counter()
                assert import_document(db, doc(f"r{round_}"), now=now).ok
                took = time.perf_counter() - started
            finally:
                store.upsert_item = original  # type: ignore[assignment]
                db.dispose()
            (event_runs if with_events else plain_runs).append(took)
    plain, with_events_s = min(plain_runs), min(event_runs)
    return {"jobs": jobs, "rounds": rounds, "import_seconds": round(plain, 2),
            "import_with_an_event_per_job_seconds": round(with_events_s, 2),
            "added_per_job_ms": round((with_events_s - plain) / jobs * 1000, 3),
            "added_percent": round((with_events_s - plain) / plain * 100, 1)}


def run(args: Any) -> dict[str, Any]:
    quick = bool(getattr(args, "quick", False))
    n_fast, n_slow, n_jobs = (2000, 100, 1000) if quick else (10000, 500, 5000)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="calsync-bench-webhooks-") as tmp:
        for engine, url, cleanup in _databases(Path(tmp)):
            if not url:
                results[engine] = cleanup
                continue
            try:
                fast = ReceiverProcess(0.0)
                try:
                    instant = [_deliver(url, fast.url, n_fast, limit) for limit in (4, 16)]
                finally:
                    fast.stop()
                slow = ReceiverProcess(0.2)
                try:
                    slow_runs = [_deliver(url, slow.url, n_slow, limit) for limit in (1, 4, 16)]
                finally:
                    slow.stop()
                results[engine] = {"instant_receiver": instant, "receiver_200ms": slow_runs,
                                   "outbox_write_on_import": _import_cost(url, n_jobs)}
            finally:
                if callable(cleanup):
                    cleanup()
    return results
