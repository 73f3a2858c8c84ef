"""Push notifications wake a worker instead of syncing in the API process: the sync loop
(tick far away) syncs a connection marked due at once, on SQLite (in-process signal) and on
PostgreSQL (NOTIFY heard by a worker in another process); a notification that arrives while
its connection is being synced leaves it due for one more sync."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from calsync.config import Settings, load_settings
from calsync.db.models import Calendar, Connection
from calsync.db.session import Database
from calsync.push import mark_calendars_due
from calsync.sync.memory import MemoryConnector, shared_server
from calsync.sync.runner import run_due_syncs
from calsync.wakeups import CHANNEL, PostgresListener, Wakeup, libpq_url
from calsync.worker import SyncLoop
from tests.conftest import SECRET, make_db
from tests.test_sync_runner import add_connection, add_user

UTC = dt.timezone.utc
FAR = 3600.0  # the loop's tick: nothing in these tests waits for it


def eventually(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def last_sync(db: Database, cid: int) -> dt.datetime | None:
    with db.read_session() as s:
        return s.scalar(select(Connection.last_sync_at).where(Connection.id == cid))


def first_calendar(db: Database, cid: int) -> int:
    with db.read_session() as s:
        found = s.scalar(select(Calendar.id).where(Calendar.connection_id == cid))
        assert found is not None
        return found


def test_a_marked_calendar_wakes_the_sync_loop_of_this_process(db: Database, settings: Settings) -> None:
    add_user(db)
    cid, _server, ids = add_connection(db, settings)
    loop = SyncLoop(settings, db, tick_seconds=FAR)  # waits on the process-wide signal
    loop.start()
    try:
        eventually(lambda: loop.rounds >= 1, "the first round")
        first = last_sync(db, cid)
        assert first is not None  # due at start: synced by the first round
        if loop.listener is not None:
            eventually(loop.listener.listening.is_set, "LISTEN")
        assert mark_calendars_due(db, [ids["work"]], dt.datetime.now(UTC)) == 1
        eventually(lambda: (last_sync(db, cid) or first) > first, "the woken sync")
        eventually(lambda: loop.rounds >= 2, "the woken round to end")
    finally:
        loop.stop()


@pytest.fixture
def pg_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    database = make_db("postgresql", tmp_path, request)
    yield database
    database.dispose()


def pg_settings(db: Database) -> Settings:
    base = load_settings(env={"CALSYNC_SECRET_KEY": SECRET})
    return replace(base, database=replace(base.database, url=db.url))


WORKER = textwrap.dedent("""
    import sys, time
    from calsync.config import load_settings
    from calsync.db.session import Database
    from calsync.wakeups import Wakeup
    from calsync.worker import SyncLoop
    settings = load_settings(env={"CALSYNC_SECRET_KEY": sys.argv[2],
                                  "CALSYNC_DATABASE_URL": sys.argv[1]})
    loop = SyncLoop(settings, Database(sys.argv[1]), wakeup=Wakeup(), tick_seconds=3600)
    loop.start()
    while loop.rounds < 1 or not loop.listener.listening.is_set():
        time.sleep(0.05)
    print("ready", flush=True)
    sys.stdin.readline()
    loop.stop()
""")


def test_notify_wakes_a_worker_in_another_process(pg_db: Database) -> None:
    db, settings = pg_db, pg_settings(pg_db)
    add_user(db)
    cid, _server, ids = add_connection(db, settings)
    proc = subprocess.Popen([sys.executable, "-c", WORKER, db.url, SECRET],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        first = last_sync(db, cid)
        assert first is not None
        mark_calendars_due(db, [ids["work"]], dt.datetime.now(UTC))
        eventually(lambda: (last_sync(db, cid) or first) > first,
                   "the other process's woken sync")
    finally:
        assert proc.stdin is not None
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        proc.wait(timeout=60)


def test_notify_is_sent_only_when_the_marking_commits(pg_db: Database) -> None:
    db, settings = pg_db, pg_settings(pg_db)
    add_user(db)
    _cid, _server, ids = add_connection(db, settings)
    wakeup = Wakeup()
    listener = PostgresListener(db.url, wakeup)
    listener.start()
    try:
        eventually(listener.listening.is_set, "LISTEN")
        wakeup.clear()
        with pytest.raises(RuntimeError):
            with db.session() as s:
                from calsync.wakeups import notify_in

                notify_in(s)
                raise RuntimeError("rolled back")
        assert not wakeup.wait(1.0)
        mark_calendars_due(db, [ids["work"]], dt.datetime.now(UTC))
        assert wakeup.wait(30.0)
    finally:
        listener.stop()
    assert libpq_url(db.url).startswith("postgresql://") and CHANNEL == "calsync_sync_due"


def test_a_push_during_a_sync_leaves_the_connection_due(db: Database,
                                                        settings: Settings) -> None:
    add_user(db)
    cid, _server, ids = add_connection(db, settings)
    now = dt.datetime.now(UTC)
    pulled = threading.Event()

    class PushedMidSync(MemoryConnector):
        def changes(self, *args: Any, **kwargs: Any) -> Any:
            out = super().changes(*args, **kwargs)
            if not pulled.is_set():
                pulled.set()  # the user edits now; the provider notifies
                assert mark_calendars_due(db, [ids["work"]], now + dt.timedelta(seconds=1))
            return out

    server = shared_server(f"push-{uuid.uuid4().hex[:6]}")
    [result] = run_due_syncs(settings, db, now, sleep=lambda _s: None,
                             connector_for=lambda _cid: PushedMidSync(server))
    assert result.status == "ok" and pulled.is_set()
    with db.read_session() as s:
        conn = s.get(Connection, cid)
        assert conn is not None and conn.lease_owner is None
        assert conn.next_sync_at == now + dt.timedelta(seconds=1)  # still due
    again = run_due_syncs(settings, db, now + dt.timedelta(seconds=2), sleep=lambda _s: None)
    assert [r.connection_id for r in again] == [cid]
    with db.read_session() as s:
        conn = s.get(Connection, cid)
        assert conn is not None and conn.next_sync_at is not None
        assert conn.next_sync_at > now + dt.timedelta(minutes=4)  # back on its cycle
