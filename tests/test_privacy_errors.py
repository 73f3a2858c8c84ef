"""Property: error paths carry no event details either (field test: a failing insert put a
masked event's title, location and organizer into log lines, ``calendars.last_error``,
``connections list`` and ``calendars list``, through SQLAlchemy's message with the row's
parameters).

Failures are injected for real: a database trigger refuses some external events (so the
driver raises inside the engine's insert, on SQLite and PostgreSQL), and a connector bug
raises an exception whose text is an event's title. Every text that leaves the process
(the sync result, stored health, CLI listings, log records) is searched for the marker
strings of every event."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from calsync.config import Settings
from calsync.db.models import Calendar, Connection
from calsync.db.session import Database
from calsync.secrets import CredentialBox
from calsync.sync.memory import MemoryServer, shared_server
from calsync.sync.runner import sync_connection
from tests.conftest import SECRET
from tests.test_sync_runner import NOW, Sleeps, add_user

FAIL_MARK = "refuse-me"


def install_failing_trigger(db: Database) -> None:
    """External events whose title carries FAIL_MARK are refused by the database itself."""
    with db.engine.begin() as c:
        if db.dialect == "sqlite":
            c.execute(text("DROP TRIGGER IF EXISTS refuse_external"))
            c.execute(text(f"""CREATE TRIGGER refuse_external BEFORE INSERT ON external_events
                WHEN NEW.summary LIKE '%{FAIL_MARK}%'
                BEGIN SELECT RAISE(ABORT, 'injected failure'); END"""))
        else:
            c.execute(text(f"""CREATE OR REPLACE FUNCTION refuse_external() RETURNS trigger
                AS $$ BEGIN IF NEW.summary LIKE '%{FAIL_MARK}%' THEN
                RAISE EXCEPTION 'injected failure' USING DETAIL = 'row ' || NEW.summary;
                END IF; RETURN NEW; END $$ LANGUAGE plpgsql"""))
            c.execute(text("DROP TRIGGER IF EXISTS refuse_external ON external_events"))
            c.execute(text("""CREATE TRIGGER refuse_external BEFORE INSERT ON external_events
                FOR EACH ROW EXECUTE FUNCTION refuse_external()"""))


def memory_connection(db: Database, settings: Settings) -> tuple[int, MemoryServer]:
    name = f"errors-{uuid.uuid4().hex[:10]}"
    server = shared_server(name)
    with db.session() as s:
        conn = Connection(user_id="u1", provider="memory", account="u1@memory", url=name,
                          credentials=CredentialBox.from_settings(settings).seal({"k": "v"}))
        s.add(conn)
        s.flush()
        s.add_all([Calendar(connection_id=conn.id, remote_id="work", name="Work",
                            role="primary"),
                   Calendar(connection_id=conn.id, remote_id="personal", name="Personal",
                            role="conflict")])
        return conn.id, server


def leaked_texts(db: Database, settings: Settings, result: Any, caplog: Any) -> str:
    """Everything about the failed sync that leaves the process, as one text."""
    env = {"CALSYNC_DATABASE_URL": db.url, "CALSYNC_SECRET_KEY": SECRET}
    from calsync.cli import cli

    runner = CliRunner()
    outputs = [runner.invoke(cli, args, env=env).output
               for args in (["connections", "list"], ["connections", "list", "--json"],
                            ["calendars", "list", "u1"], ["calendars", "list", "u1", "--json"])]
    with db.session() as s:
        stored = [str(v) for v in s.execute(text(
            "SELECT last_error FROM calendars UNION ALL SELECT last_error FROM connections"
            " UNION ALL SELECT reason FROM quarantine")).scalars()]
    logged = [rec.getMessage() for rec in caplog.records]
    logged += [rec.exc_text or "" for rec in caplog.records]
    return "\n".join([str(result.as_dict()), *outputs, *stored, *logged])


events_st = st.lists(st.fixed_dictionaries({"fails": st.booleans(),
                                            "start_h": st.integers(1, 200),
                                            "hours": st.integers(1, 5)}),
                     min_size=1, max_size=6)


def run_scenario(db: Database, settings: Settings, caplog: Any, specs: list[dict[str, Any]],
                 nonce: int) -> None:
    install_failing_trigger(db)
    cid, server = memory_connection(db, settings)
    markers = []
    for i, spec in enumerate(specs):
        m = {f: f"zq{nonce}e{i}{f}" for f in ("summary", "description", "location")}
        if spec["fails"]:
            m["summary"] += FAIL_MARK
        start = NOW + dt.timedelta(hours=spec["start_h"])
        server.put_external("work", m["summary"], start,
                            start + dt.timedelta(hours=spec["hours"]),
                            description=m["description"], location=m["location"])
        markers.append(m)
    # and a connector bug whose text is an event's title, on the conflict calendar (synced
    # first)
    server.fail_next("changes", RuntimeError(f"cannot parse {markers[0]['summary']}"))
    caplog.clear()
    result = sync_connection(settings, db, cid, NOW, sleep=Sleeps())
    failing = [m for m, spec in zip(markers, specs) if spec["fails"]]
    assert result.status == "error"
    if failing:  # positive control: the injected failures did happen and are reported
        assert "storing external event" in (result.error or "")
        assert "injected failure" in (result.error or "")
    everything = leaked_texts(db, settings, result, caplog)
    leaks = [v for m in markers for v in m.values() if v in everything]
    assert not leaks, leaks


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(specs=events_st, nonce=st.integers(0, 10**9))
def test_failed_stores_and_connector_bugs_leak_no_event_details(sqlite_db: Database, caplog,
                                                               specs: list[dict[str, Any]],
                                                               nonce: int) -> None:
    caplog.set_level(logging.DEBUG)
    from tests.test_sync_runner import add_user as _add

    with sqlite_db.session() as s:
        s.execute(text("DELETE FROM connections"))
        s.execute(text("DELETE FROM users"))
    _add(sqlite_db)
    base_settings = _settings(sqlite_db)
    run_scenario(sqlite_db, base_settings, caplog, specs, nonce)


def test_failed_stores_leak_no_event_details_on_both_engines(db: Database, settings: Settings,
                                                             caplog) -> None:
    caplog.set_level(logging.DEBUG)
    add_user(db)
    run_scenario(db, settings, caplog, [{"fails": True, "start_h": 5, "hours": 2},
                                        {"fails": False, "start_h": 30, "hours": 1}], 7)


def _settings(db: Database) -> Settings:
    from dataclasses import replace

    from calsync.config import load_settings

    base = load_settings(env={"CALSYNC_SECRET_KEY": SECRET})
    return replace(base, database=replace(base.database, url=db.url))
