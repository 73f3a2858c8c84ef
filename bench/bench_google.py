"""Google connector benchmarks against the loopback Google Calendar emulator, through the
real google-api-python-client and the sync engine (SQLite):

1. initial push of 500 schedule items to one primary calendar: requests and seconds;
2. the no-op sync right after it: requests per calendar (must be 1) and seconds;
3. 1,000 connections (each its own Google account, 2 items to push and 2 external events
   to import) synced by one worker with ``run_due_syncs``: syncs per second for the first
   round (writes) and for a no-op round;
4. the connector's own share of a no-op sync (no engine, no database): building the
   connector from stored credentials and one incremental pull, per connection.

``--quick`` uses 100 items and 100 connections. Emulator and client share the machine, so
the figures include the emulator's own cost.
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
from calsync.sync.runner import run_due_syncs, sync_connection  # noqa: E402
from tests.emulators.google import GoogleEmulator, google_settings  # noqa: E402

UTC = dt.timezone.utc
SECRET = "bench-secret-key-0123456789abcdef"


def _connect(db: Database, box: CredentialBox, em: GoogleEmulator, user: str,
             email: str) -> int:
    tokens = em.grant(email)
    creds = {"token": tokens["access_token"], "refresh_token": tokens["refresh_token"],
             "expiry": (dt.datetime.now(UTC) + dt.timedelta(minutes=50)).isoformat(),
             "version": 1}
    with db.session() as s:
        conn = Connection(user_id=user, provider="google", account=email,
                          credentials=box.seal(creds))
        s.add(conn)
        s.flush()
        s.add(Calendar(connection_id=conn.id, remote_id=email, name=email, role="primary"))
        return conn.id


def _settings(em: GoogleEmulator, tmp: str) -> Any:
    base = load_settings(env={"CALSYNC_SECRET_KEY": SECRET})
    base = replace(base, database=replace(base.database, url=f"sqlite:///{tmp}/bench.db"))
    return google_settings(em, base)


def bench_initial_push(n_items: int) -> dict[str, Any]:
    with GoogleEmulator() as em, tempfile.TemporaryDirectory() as tmp:
        settings = _settings(em, tmp)
        db = Database(settings.database.url)
        db.upgrade()
        now = dt.datetime.now(UTC).replace(microsecond=0)
        email = em.add_account("bench@example.com")
        report = import_document(db, {"users": [{"id": "u1", "name": "Bench",
                                                 "timezone": "America/Chicago"}],
                                      "jobs": job_records("u1", n_items, now, "j")}, now=now)
        assert report.ok, report.errors
        cid = _connect(db, CredentialBox.from_settings(settings), em, "u1", email)

        before = em.counts["api"]
        t0 = time.perf_counter()
        first = sync_connection(settings, db, cid, now, sleep=lambda _s: None)
        push_s = time.perf_counter() - t0
        push_requests = em.counts["api"] - before
        assert first.status == "ok", first.error
        created = first.totals().get("created", 0)

        before = em.counts["api"]
        t0 = time.perf_counter()
        noop = sync_connection(settings, db, cid, now + dt.timedelta(minutes=5),
                               sleep=lambda _s: None)
        noop_s = time.perf_counter() - t0
        noop_requests = em.counts["api"] - before
        assert noop.status == "ok", noop.error
        db.dispose()
        return {"items": n_items, "created": created, "requests": push_requests,
                "seconds": round(push_s, 3), "items_per_second": round(n_items / push_s, 1),
                "noop_requests_per_calendar": noop_requests / max(1, len(noop.calendars)),
                "noop_seconds": round(noop_s, 4)}


def bench_many_connections(n_conn: int) -> dict[str, Any]:
    with GoogleEmulator() as em, tempfile.TemporaryDirectory() as tmp:
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
        for i in range(n_conn):
            email = em.add_account(f"tech{i}@example.com")
            for k in range(2):
                s = start + dt.timedelta(hours=3 * k)
                em.put_event(email, {"summary": f"personal {k}",
                                     "start": {"dateTime": s.isoformat()},
                                     "end": {"dateTime": (s + dt.timedelta(hours=1)
                                                          ).isoformat()}})
            _connect(db, box, em, f"u{i}", email)

        figures: dict[str, Any] = {"connections": n_conn}
        for label, at in (("first", now), ("noop", now + dt.timedelta(
                seconds=settings.sync.interval_seconds + 1))):
            before = em.counts["api"]
            t0 = time.perf_counter()
            results = run_due_syncs(settings, db, at, worker_id="bench", sleep=lambda _s: None)
            elapsed = time.perf_counter() - t0
            ok = sum(r.status == "ok" for r in results)
            assert ok == n_conn, [r.error for r in results if r.status != "ok"][:3]
            figures[f"{label}_round_seconds"] = round(elapsed, 2)
            figures[f"{label}_round_syncs_per_second"] = round(n_conn / elapsed, 1)
            figures[f"{label}_round_requests"] = em.counts["api"] - before
        db.dispose()
        return figures


def bench_connector_only(n_conn: int) -> dict[str, Any]:
    """The connector's share, without the engine and database: for each of ``n_conn``
    accounts build the connector from stored credentials and pull with a sync token."""
    from calsync.sync.connector import Window, load_connector_factory
    from tests.emulators.google import signed_in_context

    with GoogleEmulator() as em:
        settings = google_settings(em)
        factory = load_connector_factory("google")
        now = dt.datetime.now(UTC)
        window = Window(now - dt.timedelta(days=30), now + dt.timedelta(days=365))
        contexts, tokens = [], []
        for i in range(n_conn):
            email = em.add_account(f"c{i}@example.com")
            em.put_event(email, {"summary": "x", "start": {"dateTime": now.isoformat()},
                                 "end": {"dateTime": (now + dt.timedelta(hours=1)).isoformat()}})
            ctx = signed_in_context(em, email, settings)
            c = factory.connect(ctx)
            tokens.append(c.changes(email, None, window).token)
            c.close()
            contexts.append(ctx)
        before = em.counts["api"]
        t0 = time.perf_counter()
        for ctx, token in zip(contexts, tokens):
            c = factory.connect(ctx)
            c.changes(ctx.account, token, window)
            c.credentials()
            c.close()
        elapsed = time.perf_counter() - t0
        return {"connections": n_conn, "requests": em.counts["api"] - before,
                "seconds": round(elapsed, 3),
                "ms_per_connection": round(1000 * elapsed / n_conn, 2)}


def run(args: Any) -> dict[str, Any]:
    quick = bool(getattr(args, "quick", False))
    return {"initial_push": bench_initial_push(100 if quick else 500),
            "many_connections": bench_many_connections(100 if quick else 1000),
            "connector_only_noop": bench_connector_only(100 if quick else 1000)}


if __name__ == "__main__":
    import json
    from types import SimpleNamespace

    print(json.dumps(run(SimpleNamespace(quick="--quick" in sys.argv)), indent=2))
