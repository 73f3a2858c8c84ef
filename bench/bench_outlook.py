"""Outlook connector benchmarks against the loopback Graph/identity emulator (HTTPS), through
the real msal and httpx and the sync engine (SQLite):

1. initial push of 500 schedule items to one primary calendar: through the sync engine
   (which sends its creates through the connector's ``create_many``: one pull plus one
   $batch per 20 items) and through ``create_many`` called directly ($batch, 20 per request,
   batches in parallel up to the mailbox cap; the connector alone, no database): requests
   and seconds;
2. the sync right after it (reads calsync's own writes back from the delta) and then a
   no-op sync: Graph requests per calendar (the no-op must cost 1) and seconds;
3. 1,000 connections (each its own mailbox, 2 items to push and 2 external events to
   import) synced by one worker with ``run_due_syncs``: syncs per second for the first
   round (writes) and for a no-op round.

``--quick`` uses 100 items and 100 connections. Emulator and client share the machine (and
its 2 cores), so the figures include the emulator's own cost, TLS included.
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.workload import job_records  # noqa: E402
from calsync.config import load_settings  # noqa: E402
from calsync.db.models import Calendar, Connection  # noqa: E402
from calsync.db.session import Database  # noqa: E402
from calsync.schedule.store import import_document  # noqa: E402
from calsync.secrets import CredentialBox  # noqa: E402
from calsync.sync.connector import ConnectContext, OutgoingEvent  # noqa: E402
from calsync.sync.runner import run_due_syncs, sync_connection  # noqa: E402
from tests.emulators.graph import GraphEmulator, registered_outlook  # noqa: E402

UTC = dt.timezone.utc
SECRET = "bench-secret-key-0123456789abcdef"


def _settings(em: GraphEmulator, tmp: str) -> Any:
    base = load_settings(env={"CALSYNC_SECRET_KEY": SECRET})
    base = replace(base, database=replace(base.database, url=f"sqlite:///{tmp}/bench.db"))
    return em.configure(base)


def _sign_in(factory: Any, settings: Any, em: GraphEmulator, email: str) -> ConnectContext:
    em.sign_in_as = email
    return factory.device_flow(ConnectContext("outlook", None, "", {}, settings),
                               lambda _m: None)


def _connect(db: Database, box: CredentialBox, ctx: ConnectContext, user: str,
             calendar_id: str) -> int:
    with db.session() as s:
        conn = Connection(user_id=user, provider="outlook", account=ctx.account,
                          credentials=box.seal(ctx.credentials))
        s.add(conn)
        s.flush()
        s.add(Calendar(connection_id=conn.id, remote_id=calendar_id, name="Calendar",
                       role="primary"))
        return conn.id


def bench_initial_push(n_items: int) -> dict[str, Any]:
    with GraphEmulator() as em, tempfile.TemporaryDirectory() as tmp, \
            registered_outlook(em) as factory:
        em.enforce_concurrency = False
        settings = _settings(em, tmp)
        db = Database(settings.database.url)
        db.upgrade()
        now = dt.datetime.now(UTC).replace(microsecond=0)
        em.add_mailbox("bench@contoso.com")
        report = import_document(db, {"users": [{"id": "u1", "name": "Bench",
                                                 "timezone": "America/Chicago"}],
                                      "jobs": job_records("u1", n_items, now, "j")}, now=now)
        assert report.ok, report.errors
        ctx = _sign_in(factory, settings, em, "bench@contoso.com")
        cid = _connect(db, CredentialBox.from_settings(settings), ctx, "u1",
                       em.calendar_id("bench@contoso.com"))

        before = em.http_requests
        t0 = time.perf_counter()
        first = sync_connection(settings, db, cid, now, sleep=lambda _s: None)
        push_s = time.perf_counter() - t0
        push_requests = em.http_requests - before
        assert first.status == "ok", first.error
        created = first.totals().get("created", 0)

        before = em.http_requests
        t0 = time.perf_counter()
        noop = sync_connection(settings, db, cid, now + dt.timedelta(minutes=5),
                               sleep=lambda _s: None)
        noop_s = time.perf_counter() - t0
        noop_requests = em.http_requests - before
        assert noop.status == "ok", noop.error
        # The sync right after the push reads calsync's own writes back from the delta
        # (they were made after its token); from then on a no-op costs one request.
        before = em.http_requests
        t0 = time.perf_counter()
        steady = sync_connection(settings, db, cid, now + dt.timedelta(minutes=10),
                                 sleep=lambda _s: None)
        steady_s = time.perf_counter() - t0
        steady_requests = em.http_requests - before
        assert steady.status == "ok", steady.error
        db.dispose()

        # the same volume through $batch, on a fresh calendar
        cal2 = em.add_calendar("bench@contoso.com", "Batch")
        connector = factory.connect(ctx)
        events = [OutgoingEvent(key=f"job-b{i}", uid=f"b{i}", summary=f"Install {i}",
                                start=now + dt.timedelta(hours=5 * i),
                                end=now + dt.timedelta(hours=5 * i + 2), all_day=False,
                                tzid="America/Chicago") for i in range(n_items)]
        before = em.http_requests
        t0 = time.perf_counter()
        results = connector.create_many(cal2, events)
        batch_s = time.perf_counter() - t0
        batch_requests = em.http_requests - before
        connector.close()
        assert not any(isinstance(r, Exception) for r in results)
        return {"items": n_items, "engine_created": created,
                "engine_requests": push_requests, "engine_seconds": round(push_s, 3),
                "engine_items_per_second": round(n_items / push_s, 1),
                "batch_requests": batch_requests, "batch_seconds": round(batch_s, 3),
                "batch_items_per_second": round(n_items / batch_s, 1),
                "after_push_sync_requests_per_calendar": noop_requests / max(
                    1, len(noop.calendars)),
                "after_push_sync_seconds": round(noop_s, 4),
                "noop_requests_per_calendar": steady_requests / max(1, len(steady.calendars)),
                "noop_seconds": round(steady_s, 4)}


def bench_many_connections(n_conn: int) -> dict[str, Any]:
    with GraphEmulator() as em, tempfile.TemporaryDirectory() as tmp, \
            registered_outlook(em) as factory:
        settings = _settings(em, tmp)
        db = Database(settings.database.url)
        db.upgrade()
        now = dt.datetime.now(UTC).replace(microsecond=0)
        box = CredentialBox.from_settings(settings)
        users = [{"id": f"u{i}", "name": f"Tech {i}", "timezone": "America/Chicago"}
                 for i in range(n_conn)]
        jobs = [j for i in range(n_conn) for j in job_records(f"u{i}", 2, now, f"u{i}-j")]
        report = import_document(db, {"users": users, "jobs": jobs}, now=now)
        assert report.ok, report.errors
        start = (now + dt.timedelta(days=2)).replace(minute=0, second=0)
        t0 = time.perf_counter()
        for i in range(n_conn):
            email = f"tech{i}@contoso.com"
            em.add_mailbox(email)
            cal = em.calendar_id(email)
            for k in range(2):
                s = start + dt.timedelta(hours=3 * k)
                em.put_event(email, cal, {
                    "subject": f"personal {k}",
                    "start": {"dateTime": s.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
                    "end": {"dateTime": (s + dt.timedelta(hours=1)).strftime(
                        "%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"}})
            _connect(db, box, _sign_in(factory, settings, em, email), f"u{i}", cal)
        figures: dict[str, Any] = {"connections": n_conn,
                                   "sign_in_seconds": round(time.perf_counter() - t0, 2)}
        for label, at in (("first", now), ("noop", now + dt.timedelta(
                seconds=settings.sync.interval_seconds + 1))):
            before = em.http_requests
            t0 = time.perf_counter()
            results = run_due_syncs(settings, db, at, worker_id="bench", sleep=lambda _s: None)
            elapsed = time.perf_counter() - t0
            ok = sum(r.status == "ok" for r in results)
            assert ok == n_conn, [r.error for r in results if r.status != "ok"][:3]
            figures[f"{label}_round_seconds"] = round(elapsed, 2)
            figures[f"{label}_round_syncs_per_second"] = round(n_conn / elapsed, 1)
            figures[f"{label}_round_requests"] = em.http_requests - before
        figures["token_requests"] = dict(em.token_requests)
        db.dispose()
        return figures


def run(args: Any) -> dict[str, Any]:
    quick = bool(getattr(args, "quick", False))
    return {"initial_push": bench_initial_push(100 if quick else 500),
            "many_connections": bench_many_connections(100 if quick else 1000)}


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    print(json.dumps(run(parser.parse_args()), indent=2))
