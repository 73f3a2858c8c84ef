"""SQLite under concurrent load from several processes (field test: ~40 % of syncs failed
with "database is locked"): importers, syncing workers and a feed server share one file and
none of their transactions may fail."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from calsync.db.models import Calendar, Connection
from calsync.db.session import Database
from calsync.schedule.store import import_document
from calsync.secrets import CredentialBox
from tests import sqlite_load_workers as workers


def test_importers_syncs_and_feeds_in_separate_processes_never_fail(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'calsync.db'}"
    db = Database(url)
    db.upgrade()
    users = [{"id": f"u{i}", "name": f"Tech {i}", "timezone": "UTC"} for i in range(4)]
    assert import_document(db, {"users": users}).ok
    settings = workers._settings(url)
    box = CredentialBox.from_settings(settings)
    connection_ids = []
    with db.session() as s:
        for i in range(3):
            conn = Connection(user_id=f"u{i}", provider="memory", account=f"u{i}@memory",
                              url=f"load-{i}", credentials=box.seal({"k": "v"}))
            s.add(conn)
            s.flush()
            s.add_all([Calendar(connection_id=conn.id, remote_id="work", name="Work",
                                role="primary"),
                       Calendar(connection_id=conn.id, remote_id="personal", name="Personal",
                                role="conflict")])
            connection_ids.append(conn.id)
    db.dispose()

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=6, mp_context=ctx) as pool:
        futures = [pool.submit(workers.importer, url, 12, n) for n in range(2)]
        futures += [pool.submit(workers.syncer, url, 12, cid) for cid in connection_ids]
        futures.append(pool.submit(workers.feeds, url, 25))
        failures = [f for fut in futures for f in fut.result(timeout=300)]
    assert failures == []
