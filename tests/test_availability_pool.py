"""PostgreSQL connections of checks and searches: few round trips, and a server that
dropped a pooled connection (a restart, ``pg_terminate_backend``) costs no request.

Round trips are counted with libpq's protocol trace of the pooled connection (one
``ReadyForQuery`` per round trip).
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, select, text

from calsync.availability.check import check_availability, search_availability
from calsync.availability.store import reading
from calsync.db import session as db_session
from calsync.db.models import User
from calsync.db.session import Database
from calsync.privacy import OPERATOR
from calsync.schedule.store import import_document
from tests.conftest import make_db
from tests.test_availability_spans import T0, H, job, seed

STALE_AFTER = dt.timedelta(days=1)


@pytest.fixture
def pg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    database = make_db("postgresql", tmp_path, request)
    seed(database, "u1", "u2")
    report = import_document(database, {"jobs": [job("J1", T0 + H, T0 + 2 * H, "u1")]})
    assert report.ok, report.errors
    yield database
    database.dispose()


def check(db: Database) -> dict[str, Any]:
    with reading(db) as s:
        [result] = check_availability(s, ["u1"], T0, T0 + 3 * H, OPERATOR, T0, STALE_AFTER)
    return result


def read_backend(db: Database) -> tuple[int, Any]:
    """The backend pid and the raw connection a check reads on (back in the pool after)."""
    with reading(db) as s:
        conn = s.connection()
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        return int(pid), conn.connection.dbapi_connection


def terminate(db: Database, *pids: int) -> None:
    """End these backends, or every backend of ``db``'s database (as a restart would),
    and wait until they are gone."""
    admin = create_engine(db.url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            if not pids:
                pids = tuple(c.scalars(text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = :db"),
                    {"db": db.url.rsplit("/", 1)[1]}))
            for pid in pids:
                assert c.scalar(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})
    finally:
        admin.dispose()


def round_trips(raw: Any, action: Any) -> tuple[int, str]:
    """Round trips ``raw`` (a psycopg connection) makes while ``action()`` runs."""
    fd, path = tempfile.mkstemp()
    try:
        raw.pgconn.trace(fd)
        raw.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            action()
        finally:
            raw.pgconn.untrace()
        trace = Path(path).read_text()
    finally:
        os.close(fd)
        os.unlink(path)
    return trace.count("\tReadyForQuery\t"), trace


def test_a_check_on_a_pooled_connection_is_one_round_trip(pg: Database) -> None:
    """No ping of a connection that just came back, no SET/RESET around the request."""
    assert not check(pg)["available"]
    _, raw = read_backend(pg)
    trips, trace = round_trips(raw, lambda: check(pg))
    assert trips == 1, trace
    assert "plan_cache_mode" not in trace and "SELECT 1" not in trace


def test_checks_and_writes_after_a_restart_succeed(pg: Database) -> None:
    """Every backend of the database ended (as a server restart ends them): the next
    check, search and write session each work, on new connections."""
    before, _ = read_backend(pg)
    with pg.session() as s:
        s.execute(select(User.id)).all()
    terminate(pg)
    result = check(pg)
    assert not result["available"] and result["conflicts"][0]["kind"] == "job"
    with reading(pg) as s:
        [found] = search_availability(s, ["u2"], T0, T0 + H, dt.timedelta(minutes=30), T0,
                                      STALE_AFTER)
    assert len(found["slots"]) == 2
    with pg.session() as s:
        assert sorted(s.scalars(select(User.id))) == ["u1", "u2"]
    after, _ = read_backend(pg)
    assert after != before


def test_a_terminated_backend_is_replaced_on_the_next_check(pg: Database) -> None:
    pid, _ = read_backend(pg)
    terminate(pg, pid)
    assert not check(pg)["available"]
    assert read_backend(pg)[0] != pid


def test_a_connection_idle_past_the_limit_is_pinged(pg: Database,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection dropped without a word (no farewell on its socket, as after a network
    cut) is found by the ping it gets once it sat idle longer than the limit."""
    pid, _ = read_backend(pg)
    terminate(pg, pid)
    monkeypatch.setattr(db_session, "_has_input", lambda _conn: False)
    monkeypatch.setattr(db_session, "IDLE_PING_SECONDS", 0.0)
    assert not check(pg)["available"]
    assert read_backend(pg)[0] != pid
