"""The concurrent worker on SQLite and PostgreSQL: syncs of different connections overlap
(a slow provider: the memory connector with latency injected), no connection is synced
twice at once (by one worker's threads, by two workers in one process, by two worker
processes on PostgreSQL sharing 50 connections), and due times get jitter."""

from __future__ import annotations

import datetime as dt
import json
import random
import subprocess
import sys
import textwrap
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from calsync.config import Settings, load_settings
from calsync.db.models import Calendar, Connection
from calsync.db.session import Database
from calsync.schedule.store import import_document
from calsync.secrets import CredentialBox
from calsync.sync.memory import MemoryConnector, MemoryFactory, MemoryServer, shared_server
from calsync.sync.runner import next_due, run_due_syncs
from tests.conftest import SECRET, make_db
from tests.test_sync_runner import NOW, Sleeps

LATENCY = 0.05


def add_users(db: Database, n: int) -> None:
    users = [{"id": f"u{i}", "name": f"u{i}", "timezone": "UTC"} for i in range(n)]
    assert import_document(db, {"users": users}, now=NOW).ok


def add_connections(db: Database, settings: Settings, n: int, server_name: str,
                    options: dict[str, Any] | None = None) -> list[int]:
    """``n`` memory connections of one slow server (no items: pull-only, no-op syncs)."""
    add_users(db, n)
    sealed = CredentialBox.from_settings(settings).seal({"k": "v"})
    ids = []
    with db.session() as s:
        for i in range(n):
            conn = Connection(user_id=f"u{i}", provider="memory", account=f"u{i}@memory",
                              url=server_name, credentials=sealed, settings=options or {})
            s.add(conn)
            s.flush()
            for rid, role in (("work", "primary"), ("personal", "conflict")):
                s.add(Calendar(connection_id=conn.id, remote_id=rid, name=rid, role=role))
            ids.append(conn.id)
    return ids


class Tracker:
    """Connectors that note, per connection, how many of its syncs run at once."""

    def __init__(self, server: MemoryServer, settings: Settings) -> None:
        self.server, self.settings = server, settings
        self.lock = threading.Lock()
        self.active: Counter[int] = Counter()
        self.most_at_once: Counter[int] = Counter()

    def connector_for(self, cid: int) -> MemoryConnector:
        tracker = self

        class Tracked(MemoryConnector):
            def changes(self, *args: Any, **kwargs: Any) -> Any:
                with tracker.lock:
                    tracker.active[cid] += 1
                    tracker.most_at_once[cid] = max(tracker.most_at_once[cid],
                                                    tracker.active[cid])
                try:
                    return super().changes(*args, **kwargs)
                finally:
                    with tracker.lock:
                        tracker.active[cid] -= 1

        return Tracked(self.server)


def test_syncs_overlap_and_no_connection_is_synced_twice_at_once(
        db: Database, settings: Settings) -> None:
    name = f"slow-{uuid.uuid4().hex[:8]}"
    ids = add_connections(db, settings, 12, name)
    server = shared_server(name)
    server.latency = LATENCY
    tracker = Tracker(server, settings)
    results = run_due_syncs(replace(settings, sync=replace(settings.sync, concurrency=4)),
                            db, NOW, worker_id="w1", sleep=Sleeps(),
                            connector_for=tracker.connector_for)
    assert sorted(r.connection_id for r in results) == ids
    assert all(r.status == "ok" for r in results), [r.error for r in results]
    assert server.max_in_flight >= 2, "no two provider requests were ever in flight at once"
    assert server.max_in_flight <= 4  # bounded by sync.concurrency
    assert set(tracker.most_at_once.values()) == {1}
    with db.read_session() as s:
        rows = list(s.query(Connection))
        assert all(r.lease_owner is None and r.last_success_at == NOW for r in rows)


def test_two_workers_in_one_process_share_the_due_connections(
        db: Database, settings: Settings) -> None:
    name = f"slow-{uuid.uuid4().hex[:8]}"
    ids = add_connections(db, settings, 16, name)
    server = shared_server(name)
    server.latency = LATENCY
    tracker = Tracker(server, settings)
    concurrent = replace(settings, sync=replace(settings.sync, concurrency=3))
    out: dict[str, list[int]] = {}
    start = threading.Barrier(2)

    def work(owner: str) -> None:
        start.wait()
        out[owner] = [r.connection_id for r in run_due_syncs(
            concurrent, db, NOW, worker_id=owner, sleep=Sleeps(),
            connector_for=tracker.connector_for)]

    threads = [threading.Thread(target=work, args=(w,)) for w in ("wa", "wb")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(out["wa"] + out["wb"]) == ids  # each synced once, by one of them
    assert out["wa"] and out["wb"]
    assert set(tracker.most_at_once.values()) == {1}
    assert server.max_in_flight > 3  # the two workers ran at the same time


def test_a_push_made_due_during_a_run_is_synced_by_the_same_run(
        db: Database, settings: Settings) -> None:
    """With a clock, connections that come due while others sync are claimed too."""
    name = f"slow-{uuid.uuid4().hex[:8]}"
    ids = add_connections(db, settings, 4, name)
    server = shared_server(name)
    server.latency = LATENCY
    with db.session() as s:
        s.query(Connection).filter(Connection.id == ids[-1]).update(
            {"next_sync_at": NOW + dt.timedelta(minutes=5)})
    # the last connection comes due 5 minutes on, while the first ones sync (daily cycle;
    # the leases of those in flight still hold)
    ticks = iter([NOW] * 2 + [NOW + dt.timedelta(minutes=5, seconds=1)] * 100)
    daily = replace(settings, sync=replace(settings.sync, concurrency=2,
                                           interval_seconds=86400))
    results = run_due_syncs(daily, db, NOW, worker_id="w1", sleep=Sleeps(),
                            clock=lambda: next(ticks))
    assert sorted(r.connection_id for r in results) == ids


def test_next_due_times_are_jittered_within_the_interval(settings: Settings) -> None:
    rng = random.Random(7)
    interval = dt.timedelta(seconds=settings.sync.interval_seconds)
    dues = [next_due(settings, NOW, rng) for _ in range(200)]
    assert all(NOW + interval * (1 - settings.sync.jitter_fraction) <= d <= NOW + interval
               for d in dues)
    assert len(set(dues)) > 150  # spread out, not one instant
    flat = replace(settings, sync=replace(settings.sync, jitter_fraction=0.0))
    assert next_due(flat, NOW, rng) == NOW + interval


WORKER = textwrap.dedent("""
    import datetime as dt, json, sys
    from dataclasses import replace
    from calsync.config import load_settings
    from calsync.db.session import Database
    from calsync.sync.runner import run_due_syncs
    url, owner, now = sys.argv[1], sys.argv[2], dt.datetime.fromisoformat(sys.argv[3])
    settings = load_settings(env={"CALSYNC_SECRET_KEY": sys.argv[4], "CALSYNC_DATABASE_URL": url})
    settings = replace(settings, sync=replace(settings.sync, concurrency=4))
    db = Database(url)
    print("ready", flush=True)
    sys.stdin.readline()
    results = run_due_syncs(settings, db, now, worker_id=owner, sleep=lambda _s: None)
    print(json.dumps([[r.connection_id, r.status] for r in results]), flush=True)
""")


@pytest.fixture
def pg_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """PostgreSQL only: several worker processes share one database there."""
    database = make_db("postgresql", tmp_path, request)
    yield database
    database.dispose()


def test_two_worker_processes_on_postgresql_share_50_connections(pg_db: Database) -> None:
    db = pg_db
    base = load_settings(env={"CALSYNC_SECRET_KEY": SECRET})
    settings = replace(base, database=replace(base.database, url=db.url))
    # each process has its own memory server of that name; the latency comes from the
    # connection's settings, so the syncs of both processes are slow alike
    ids = add_connections(db, settings, 50, f"shared-{uuid.uuid4().hex[:8]}",
                          {"latency": LATENCY})
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, db.url, owner, NOW.isoformat(),
                               SECRET], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for owner in ("proc-a", "proc-b")]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1])
                for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    synced = [[cid for cid, _status in out] for out in outs]
    assert all(status == "ok" for out in outs for _cid, status in out)
    assert sorted(synced[0] + synced[1]) == ids  # every connection once, none twice
    assert synced[0] and synced[1], "one process did all the work"
    with db.read_session() as s:
        assert all(r.lease_owner is None for r in s.query(Connection))


def test_memory_factory_takes_latency_from_the_connection_settings(settings: Settings) -> None:
    from calsync.sync.connector import ConnectContext

    server = MemoryServer()
    server.add_calendar("work", "Work")
    ctx = ConnectContext(provider="memory", url=None, account="a", credentials={},
                         settings=settings, http=server, options={"latency": 0.02})
    connector = MemoryFactory().connect(ctx)
    assert server.latency == 0.02
    assert [c.id for c in connector.list_calendars()] == ["work"]


def test_writes_to_one_calendar_run_in_parallel_up_to_the_bound(
        db: Database, settings: Settings) -> None:
    """A connector that allows parallel writes gets up to sync.calendar_write_concurrency
    of one calendar's creates in flight; each item is created once and linked."""
    from calsync.db.models import Link
    from tests.test_sync_runner import add_connection, add_user

    add_user(db)
    cid, server, ids = add_connection(db, settings)
    jobs = [{"id": f"j{i}", "title": "Install", "job_type": "Install", "account": "Acme",
             "start": f"2026-12-{1 + i % 20:02d}T09:00:00+00:00",
             "end": f"2026-12-{1 + i % 20:02d}T10:00:00+00:00", "assignees": ["u1"]}
            for i in range(12)]
    assert import_document(db, {"jobs": jobs}, now=NOW).ok

    class ParallelMemory(MemoryConnector):
        parallel_writes = True

    server.latency = LATENCY
    bounded = replace(settings, sync=replace(settings.sync, calendar_write_concurrency=3))
    [result] = run_due_syncs(bounded, db, NOW, sleep=Sleeps(),
                             connector_for=lambda _cid: ParallelMemory(server))
    assert result.status == "ok", result.error
    assert result.totals()["created"] == 12
    assert 2 <= server.max_in_flight <= 3
    assert sorted(o.key or "" for o in server.objects("work")) == \
        sorted(f"job-j{i}" for i in range(12))
    with db.read_session() as s:
        links = list(s.query(Link).filter(Link.calendar_id == ids["work"]))
        assert len(links) == 12 and len({link.remote_id for link in links}) == 12
    assert cid == result.connection_id
