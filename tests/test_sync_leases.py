"""A crashed sync no longer blocks its connection for the lease time (field test: 10
minutes of "skipped" after a SIGKILL). A lease names its holder (host:pid:nonce); one held
by a process of this host that is gone is taken over at once, one held by a live worker is
reported with who holds it and until when."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import textwrap

from calsync.config import Settings
from calsync.db.models import Connection
from calsync.db.session import Database
from calsync.sync.runner import HOST, run_due_syncs, sync_connection
from tests.test_sync_runner import NOW, Sleeps, add_connection, add_user, connection

CLAIM_THEN = textwrap.dedent("""
    import datetime as dt, os, signal, sys, time
    from calsync.db.session import Database
    from calsync.sync.runner import claim_connection, default_worker_id
    db = Database(sys.argv[1])
    now = dt.datetime.fromisoformat(sys.argv[3])
    assert claim_connection(db, int(sys.argv[2]), default_worker_id(), now, 600)
    print(default_worker_id(), flush=True)
    if sys.argv[4] == "die":
        os.kill(os.getpid(), signal.SIGKILL)  # crash mid-sync: the lease stays behind
    time.sleep(60)
""")


def holder(db: Database, cid: int, how: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", CLAIM_THEN, db.url, str(cid),
                             NOW.isoformat(), how], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    owner = proc.stdout.readline().strip()
    assert owner.startswith(f"{HOST}:{proc.pid}:"), owner
    return proc


def test_a_killed_workers_lease_is_taken_over_at_once(db: Database, settings: Settings) -> None:
    add_user(db)
    cid, _, _ = add_connection(db, settings)
    proc = holder(db, cid, "die")
    assert proc.wait(timeout=30) == -signal.SIGKILL
    row = connection(db, cid)
    assert row.lease_owner and row.lease_owner.startswith(f"{HOST}:{proc.pid}:")
    assert row.lease_until is not None and row.lease_until > NOW  # not expired
    # a direct sync right away takes the lease over and syncs
    result = sync_connection(settings, db, cid, NOW + dt.timedelta(seconds=1), sleep=Sleeps())
    assert result.status == "ok", result.error
    assert connection(db, cid).lease_owner is None


def test_the_worker_loop_takes_over_dead_leases_too(db: Database, settings: Settings) -> None:
    add_user(db)
    cid, _, _ = add_connection(db, settings)
    proc = holder(db, cid, "die")
    proc.wait(timeout=30)
    [result] = run_due_syncs(settings, db, NOW + dt.timedelta(seconds=1), sleep=Sleeps())
    assert result.connection_id == cid and result.status == "ok", result.error


def test_a_live_workers_lease_is_respected_and_named(db: Database, settings: Settings) -> None:
    add_user(db)
    cid, _, _ = add_connection(db, settings)
    proc = holder(db, cid, "live")
    try:
        owner = connection(db, cid).lease_owner
        result = sync_connection(settings, db, cid, NOW + dt.timedelta(seconds=1),
                                 sleep=Sleeps())
        assert result.status == "busy"
        assert owner is not None and owner in (result.error or "")
        assert "lease until" in (result.error or "")
        assert run_due_syncs(settings, db, NOW + dt.timedelta(seconds=1)) == []
        with db.session() as s:
            row = s.get(Connection, cid)
            assert row is not None and row.lease_owner == owner and row.last_sync_at is None
    finally:
        proc.kill()
        proc.wait(timeout=30)
