"""SQLite write sessions of one process queue for the write lock in Python, not in SQLite's
busy handler (which sleeps 1-100 ms between tries): a thread waiting to write holds no
database connection and starts the moment the writer before it commits."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import text

from calsync.db.session import Database


def test_a_waiting_writer_holds_no_connection_and_follows_at_once(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'q.db'}")
    with db.engine.begin() as c:
        c.execute(text("CREATE TABLE t (n INTEGER)"))
    inside, release, second_done = threading.Event(), threading.Event(), threading.Event()
    order: list[str] = []

    def first() -> None:
        with db.session() as s:
            s.execute(text("INSERT INTO t VALUES (1)"))
            inside.set()
            release.wait(10)
            order.append("first")

    def second() -> None:
        inside.wait(10)
        with db.session() as s:
            order.append("second")
            s.execute(text("INSERT INTO t VALUES (2)"))
        second_done.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    assert inside.wait(10)
    # the second writer is queued: it has not checked a connection out of the pool
    for _ in range(50):
        if second_done.wait(0.01):
            break
    assert not second_done.is_set()
    assert db.engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    release.set()
    for t in threads:
        t.join(10)
    assert order == ["first", "second"]
    with db.read_session() as s:
        assert s.execute(text("SELECT count(*) FROM t")).scalar() == 2
    db.dispose()
