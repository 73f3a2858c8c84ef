"""CalDAV connector benchmarks against a real Radicale on loopback, through the sync engine
(SQLite) and the calsync_caldav connector:

1. initial sync of 500 schedule items into an empty primary calendar: requests, seconds;
2. the no-op sync right after it: requests per calendar (must be 1) and seconds;
3. import (pull) of 2,000 external events, 100 of them weekly recurring series, placed on
   the server by raw PUTs (not timed): the engine's full sync (pull + store busy blocks)
   and the connector's pull alone, then the no-op; and the ctag/etag fallback's full pull
   and no-op on the same calendar.

``--quick`` uses 100 items and 400 events (20 series). Radicale and the client share the
machine, so wall-clock figures include the server's own cost (Radicale's PUT is the bulk
of the initial sync); ``client_cpu_seconds`` is calsync's own CPU time in that span.
Requests are counted at the HTTP transport under the connector.
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from calsync.config import Settings, load_settings  # noqa: E402
from calsync.db.models import Calendar, Connection, ExternalBusy, ExternalEvent  # noqa: E402
from calsync.db.session import Database  # noqa: E402
from calsync.schedule.store import import_document  # noqa: E402
from calsync.secrets import CredentialBox  # noqa: E402
from calsync.sync.connector import ConnectContext, load_connector_factory  # noqa: E402
from calsync.sync.engine import sync_window  # noqa: E402
from calsync.sync.runner import sync_connection  # noqa: E402
from tests.caldav_servers import DavServer, start_server  # noqa: E402

UTC = dt.timezone.utc
SECRET = "bench-secret-key-0123456789abcdef"


class CountingTransport(httpx.BaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.count = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.count += 1
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def _settings(tmp: str) -> Settings:
    base = load_settings(env={"CALSYNC_SECRET_KEY": SECRET})
    return replace(base, database=replace(base.database, url=f"sqlite:///{tmp}/bench.db"))


def _connector(server: DavServer, settings: Settings, counter: CountingTransport,
               **options: Any) -> Any:
    ctx = ConnectContext(provider="caldav", url=server.base_url, account=server.username,
                         credentials={"username": server.username, "password": "x"},
                         settings=settings, http=httpx.Client(transport=counter, timeout=60),
                         options={"timezone": "America/Chicago", **options})
    return load_connector_factory("caldav").connect(ctx)


def _connect(db: Database, settings: Settings, server: DavServer, user: str,
             calendar_url: str) -> int:
    box = CredentialBox.from_settings(settings)
    with db.session() as s:
        conn = Connection(user_id=user, provider="caldav", account=server.username,
                          url=server.base_url,
                          credentials=box.seal({"username": server.username, "password": "x"}))
        s.add(conn)
        s.flush()
        s.add(Calendar(connection_id=conn.id, remote_id=calendar_url, name="bench",
                       role="primary"))
        return conn.id


def _items(user: str, n: int, now: dt.datetime) -> dict[str, Any]:
    base = now.replace(minute=0, second=0) + dt.timedelta(days=1)
    jobs = [{"id": f"j{i}", "title": f"Fiber install {i}", "job_type": "Install",
             "account": f"Acme {i}", "location": f"{i} Main St", "notes": "Gate 1234",
             "start": (base + dt.timedelta(hours=5 * i)).isoformat(),
             "end": (base + dt.timedelta(hours=5 * i + 2)).isoformat(),
             "assignees": [user], "status": "scheduled"} for i in range(n * 4 // 5)]
    blocks = [{"id": f"b{i}", "user": user, "title": f"Training {i}",
               "start": (base + dt.timedelta(hours=7 * i + 3)).isoformat(),
               "end": (base + dt.timedelta(hours=7 * i + 4)).isoformat()}
              for i in range(n - len(jobs))]
    return {"users": [{"id": user, "name": "Bench", "email": "tech@example.com",
                       "timezone": "America/Chicago"}], "jobs": jobs, "blocks": blocks}


def bench_initial_sync(server: DavServer, n_items: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = _settings(tmp)
        db = Database(settings.database.url)
        db.upgrade()
        now = dt.datetime.now(UTC).replace(microsecond=0)
        report = import_document(db, _items("u1", n_items, now), now=now)
        assert report.ok, report.errors
        cal = server.make_calendar("bench push")
        cid = _connect(db, settings, server, "u1", cal)
        counter = CountingTransport()
        conn = _connector(server, settings, counter)

        t0, c0 = time.perf_counter(), time.process_time()
        first = sync_connection(settings, db, cid, now, conn, sleep=lambda _s: None)
        push_s, push_cpu = time.perf_counter() - t0, time.process_time() - c0
        push_requests = counter.count
        assert first.status == "ok", first.error

        before = counter.count
        t0 = time.perf_counter()
        noop = sync_connection(settings, db, cid, now + dt.timedelta(minutes=5), conn,
                               sleep=lambda _s: None)
        noop_s = time.perf_counter() - t0
        assert noop.status == "ok", noop.error
        assert not any(noop.totals().values()), noop.totals()
        noop_requests = counter.count - before
        conn.close()
        db.dispose()
        return {"items": n_items, "created": first.totals().get("created", 0),
                "requests": push_requests, "seconds": round(push_s, 3),
                "client_cpu_seconds": round(push_cpu, 3),
                "items_per_second": round(n_items / push_s, 1),
                "noop_requests_per_calendar": noop_requests / max(1, len(noop.calendars)),
                "noop_seconds": round(noop_s, 4)}


def _external_ics(i: int, now: dt.datetime, recurring: bool) -> str:
    start = (now.replace(minute=0, second=0) + dt.timedelta(days=i % 300, hours=i % 9))
    end = start + dt.timedelta(hours=1)
    rule = "RRULE:FREQ=WEEKLY;COUNT=40\r\nEXDATE:" + \
        (start + dt.timedelta(weeks=3)).strftime("%Y%m%dT%H%M%SZ") + "\r\n" if recurring else ""
    return ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//bench//EN\r\nBEGIN:VEVENT\r\n"
            f"UID:ext-{i}-{uuid.uuid4().hex[:8]}\r\nDTSTAMP:20261101T000000Z\r\n"
            f"SUMMARY:Personal {i}\r\nDTSTART:{start.strftime('%Y%m%dT%H%M%SZ')}\r\n"
            f"DTEND:{end.strftime('%Y%m%dT%H%M%SZ')}\r\n{rule}"
            "END:VEVENT\r\nEND:VCALENDAR\r\n")


def bench_import(server: DavServer, n_events: int, n_series: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = _settings(tmp)
        db = Database(settings.database.url)
        db.upgrade()
        now = dt.datetime.now(UTC).replace(microsecond=0)
        report = import_document(db, {"users": [{"id": "u1", "name": "Bench",
                                                 "timezone": "America/Chicago"}]}, now=now)
        assert report.ok, report.errors
        cal = server.make_calendar("bench import")
        t0 = time.perf_counter()
        for i in range(n_events):
            resp = server.put(f"{cal}ext-{i}.ics", _external_ics(i, now, i < n_series))
            assert resp.status_code == 201, resp.text
        seed_s = time.perf_counter() - t0
        cid = _connect(db, settings, server, "u1", cal)
        counter = CountingTransport()
        conn = _connector(server, settings, counter)

        t0, c0 = time.perf_counter(), time.process_time()
        first = sync_connection(settings, db, cid, now, conn, sleep=lambda _s: None)
        sync_s, sync_cpu = time.perf_counter() - t0, time.process_time() - c0
        assert first.status == "ok", first.error
        sync_requests = counter.count
        with db.session() as s:
            events = s.query(ExternalEvent).count()
            busy = s.query(ExternalBusy).count()
        assert events == n_events, events

        before = counter.count
        t0 = time.perf_counter()
        noop = sync_connection(settings, db, cid, now + dt.timedelta(minutes=5), conn,
                               sleep=lambda _s: None)
        noop_s = time.perf_counter() - t0
        noop_requests = counter.count - before
        assert noop.status == "ok", noop.error

        window = sync_window(settings, now)
        before = counter.count
        t0 = time.perf_counter()
        pulled = conn.changes(cal, None, window)
        pull_s = time.perf_counter() - t0
        pull_requests = counter.count - before
        assert len(pulled.changed) == n_events
        occurrences = sum(len(e.occurrences) for e in pulled.changed)
        conn.close()

        fallback_counter = CountingTransport()
        fallback = _connector(server, settings, fallback_counter, sync_collection=False)
        t0 = time.perf_counter()
        full = fallback.changes(cal, None, window)
        fallback_s = time.perf_counter() - t0
        fallback_requests = fallback_counter.count
        before = fallback_counter.count
        fb_noop = fallback.changes(cal, full.token, window)
        assert not fb_noop.changed
        fallback_noop_requests = fallback_counter.count - before
        fallback.close()
        db.dispose()
        return {"events": n_events, "recurring_series": n_series,
                "occurrences_in_window": occurrences, "busy_rows_stored": busy,
                "seed_seconds_raw_puts": round(seed_s, 2),
                "engine_sync_seconds": round(sync_s, 3), "engine_sync_requests": sync_requests,
                "engine_sync_client_cpu_seconds": round(sync_cpu, 3),
                "events_per_second": round(n_events / sync_s, 1),
                "connector_pull_seconds": round(pull_s, 3),
                "connector_pull_requests": pull_requests,
                "noop_requests_per_calendar": noop_requests / max(1, len(noop.calendars)),
                "noop_seconds": round(noop_s, 4),
                "fallback_full_pull_seconds": round(fallback_s, 3),
                "fallback_full_pull_requests": fallback_requests,
                "fallback_noop_requests": fallback_noop_requests}


def run(args: Any) -> dict[str, Any]:
    quick = bool(getattr(args, "quick", False))
    server = start_server("radicale")
    try:
        return {"server": "radicale",
                "initial_sync": bench_initial_sync(server, 100 if quick else 500),
                "import": bench_import(server, 400 if quick else 2000, 20 if quick else 100)}
    finally:
        server.stop()


if __name__ == "__main__":
    import json
    from types import SimpleNamespace

    print(json.dumps(run(SimpleNamespace(quick="--quick" in sys.argv)), indent=2))
