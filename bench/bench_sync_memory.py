"""Sync engine benchmarks with the in-memory connector (no network: the engine's own cost).

1. ``plan_sync`` alone on 10,000 linked items with 5 % changed on each side (pure planner);
2. initial sync of 2,000 schedule items into an empty primary calendar (SQLite);
3. the sync right after it (the pull echoes calsync's own writes), then a true no-op sync
   (one request per calendar);
4. a sync after 100 remote edits of user-owned copies and 100 local edits;
5. import of 2,000 external events (100 daily series) on a conflict calendar.

Steps 2-5 run on SQLite, and on PostgreSQL when one answers on 127.0.0.1:5432 (or
$CALSYNC_BENCH_DATABASE_URL). ``--quick`` divides the sizes by 10.
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

from sqlalchemy import create_engine, text  # noqa: E402

from calsync.config import Settings, load_settings  # noqa: E402
from calsync.db.models import Calendar, Connection  # noqa: E402
from calsync.db.session import Database  # noqa: E402
from calsync.schedule.store import import_document  # noqa: E402
from calsync.sync.connector import OutgoingEvent  # noqa: E402
from calsync.sync.hashing import outgoing_hash  # noqa: E402
from calsync.sync.memory import MemoryConnector, MemoryServer  # noqa: E402
from calsync.sync.plan import LinkRecord, LocalItem, Policy, RemoteItem, plan_sync  # noqa: E402
from calsync.sync.runner import sync_connection  # noqa: E402

UTC = dt.timezone.utc
SECRET = "bench-secret-key-0123456789abcdef"
PG_URL = os.environ.get("CALSYNC_BENCH_DATABASE_URL",
                        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def bench_planner(n: int) -> dict[str, Any]:
    now = dt.datetime(2026, 11, 23, tzinfo=UTC)
    local, remote, links = [], {}, []
    for i in range(n):
        key = f"block-b{i}"
        start = now + dt.timedelta(hours=i)
        ev = OutgoingEvent(key=key, uid=key, summary=f"Block {i}", start=start,
                           end=start + dt.timedelta(hours=1), all_day=False, tzid="UTC")
        h = outgoing_hash(ev)
        changed_local = i % 20 == 0
        local.append(LocalItem(i, key, "block", ev, h + ("x" if changed_local else ""), now))
        links.append(LinkRecord(f"r{i}", "e1", f"rh{i}", i, h))
        changed_remote = i % 20 == 7
        remote[f"r{i}"] = RemoteItem(f"r{i}", "e2" if changed_remote else "e1", key,
                                     f"rh{i}" + ("y" if changed_remote else ""))
    t = time.perf_counter()
    actions = plan_sync(local, remote, links, Policy(), now)
    seconds = time.perf_counter() - t
    return {"items": n, "actions": len(actions), "seconds": round(seconds, 4),
            "items_per_second": round(n / seconds)}


def _settings(url: str) -> Settings:
    base = load_settings(env={"CALSYNC_SECRET_KEY": SECRET})
    return replace(base, database=replace(base.database, url=url))


def _pg_database() -> tuple[str, Any] | None:
    try:
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text("select 1"))
    except Exception:  # noqa: BLE001 - no server: figures are skipped
        return None
    name = f"calsync_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    return PG_URL.rsplit("/", 1)[0] + "/" + name, admin


def bench_engine(url: str, items: int, externals: int) -> dict[str, Any]:
    db = Database(url)
    db.upgrade()
    settings = _settings(url)
    now = dt.datetime.now(UTC).replace(microsecond=0)
    server = MemoryServer()
    work = server.add_calendar("work", "Work")
    family = server.add_calendar("family", "Family")
    import_document(db, {"users": [{"id": "u1", "name": "U", "timezone": "UTC"}]}, now=now)
    with db.session() as s:
        conn = Connection(user_id="u1", provider="memory", account="u1")
        s.add(conn)
        s.flush()
        s.add(Calendar(connection_id=conn.id, remote_id=work, name="Work", role="primary"))
        cid = conn.id
    blocks = []
    for i in range(items):
        start = now + dt.timedelta(days=1 + i % 300, hours=i % 8)
        blocks.append({"id": f"b{i}", "user": "u1", "title": f"Block {i}",
                       "start": start.isoformat(),
                       "end": (start + dt.timedelta(hours=1)).isoformat()})
    import_document(db, {"blocks": blocks}, now=now)

    def run(at: dt.datetime) -> tuple[float, Any]:
        t = time.perf_counter()
        before = server.requests
        result = sync_connection(settings, db, cid, at, MemoryConnector(server))
        assert result.status == "ok", result.error
        return time.perf_counter() - t, (result, server.requests - before)

    out: dict[str, Any] = {}
    secs, (res, reqs) = run(now)
    out["initial_sync"] = {"items": items, "seconds": round(secs, 3), "requests": reqs,
                           "created": res.totals()["created"]}
    secs, (res, reqs) = run(now + dt.timedelta(seconds=30))
    out["echo_sync"] = {"seconds": round(secs, 4), "requests": reqs,
                        "note": "the pull returns calsync's own creates; nothing to do"}
    secs, (res, reqs) = run(now + dt.timedelta(minutes=1))
    out["noop_sync"] = {"seconds": round(secs, 4), "requests": reqs,
                        "calendars": len(res.calendars)}

    edits = max(1, items // 20)
    objs = [o for o in server.objects(work)][:edits]
    for o in objs:
        server.edit(work, o.remote_id, summary=o.summary + " (moved)")
    later = now + dt.timedelta(minutes=2)
    import_document(db, {"blocks": [dict(b, title=b["title"] + " v2")
                                    for b in blocks[-edits:]]}, now=later)
    secs, (res, reqs) = run(later)
    out["edits_sync"] = {"remote_edits": edits, "local_edits": edits, "seconds": round(secs, 3),
                         "requests": reqs, "pulled": res.totals().get("pulled", 0),
                         "updated": res.totals()["updated"]}

    series = max(1, externals // 20)
    for i in range(externals - series):
        start = now + dt.timedelta(days=1 + i % 200, hours=i % 10)
        server.put_external(family, f"Event {i}", start, start + dt.timedelta(hours=1))
    for i in range(series):
        start = now + dt.timedelta(days=1, hours=i % 10)
        server.put_external(family, f"Series {i}", start, start + dt.timedelta(minutes=30),
                            rrule="FREQ=DAILY;COUNT=30")
    with db.session() as s:
        s.add(Calendar(connection_id=cid, remote_id=family, name="Family", role="conflict"))
    secs, (res, reqs) = run(now + dt.timedelta(minutes=3))
    out["import_externals"] = {"events": externals, "series": series,
                               "seconds": round(secs, 3), "requests": reqs,
                               "imported": res.totals()["imported"]}
    db.dispose()
    return out


def run(args: Any) -> dict[str, Any]:
    quick = getattr(args, "quick", False)
    items, externals, plan_n = (200, 200, 1000) if quick else (2000, 2000, 10000)
    figures: dict[str, Any] = {"planner": bench_planner(plan_n)}
    with tempfile.TemporaryDirectory() as tmp:
        figures["sqlite"] = bench_engine(f"sqlite:///{tmp}/bench.db", items, externals)
    pg = _pg_database()
    if pg is None:
        figures["postgresql"] = {"skipped": f"PostgreSQL not reachable at {PG_URL}"}
    else:
        url, admin = pg
        try:
            figures["postgresql"] = bench_engine(url, items, externals)
        finally:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" '
                               f'WITH (FORCE)'))
            admin.dispose()
    return figures
