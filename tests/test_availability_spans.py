"""The busy spans that checks and searches read (migration 0009), on SQLite and PostgreSQL.

``item_assignees`` carries a copy of its item's span and both busy tables a ``long_span``
mark, kept by database triggers; the store reads short rows from a day before the range
and long rows up to its end. These tests write through every path (import, the ORM, Core
updates as a sync pull does, bulk inserts) and compare what the store loads with a plain
overlap filter over everything stored.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, insert, select, text, update

from calsync.availability.check import search_availability
from calsync.availability.store import load_busy_rows, load_busy_times, reading
from calsync.db.models import (
    Calendar,
    Connection,
    ExternalBusy,
    ExternalEvent,
    ItemAssignee,
    ScheduleItem,
    User,
)
from calsync.db.session import Database, upgrade
from calsync.schedule.store import import_document
from tests.conftest import PG_ADMIN_URL, need

UTC = dt.timezone.utc
H = dt.timedelta(hours=1)
T0 = dt.datetime(2026, 12, 7, tzinfo=UTC)  # a Monday


def iso(value: dt.datetime) -> str:
    return value.isoformat()


def seed(db: Database, *uids: str) -> int:
    """Users without working-hours limits and one healthy conflict calendar for the first."""
    report = import_document(db, {"users": [{"id": u, "name": u, "timezone": "UTC",
                                             "working_hours": {}} for u in uids]})
    assert report.ok, report.errors
    with db.session() as s:
        conn = Connection(user_id=uids[0], provider="caldav", account="a", status="ok")
        s.add(conn)
        s.flush()
        cal = Calendar(connection_id=conn.id, remote_id="/c", name="Work", role="conflict",
                       status="ok", last_success_at=T0, last_sync_at=T0)
        s.add(cal)
        s.flush()
        return cal.id


def job(jid: str, start: dt.datetime, end: dt.datetime, *assignees: str,
        status: str = "scheduled") -> dict[str, Any]:
    return {"id": jid, "title": jid, "job_type": "Install", "account": "Acme",
            "start": iso(start), "end": iso(end), "assignees": list(assignees),
            "status": status}


def spans(db: Database) -> dict[tuple[str, str], tuple[dt.datetime, dt.datetime, bool]]:
    with db.read_session() as s:
        rows = s.execute(select(ScheduleItem.ext_id, ItemAssignee.user_id,
                                ItemAssignee.start_at, ItemAssignee.end_at,
                                ItemAssignee.long_span)
                         .join(ScheduleItem, ScheduleItem.pk == ItemAssignee.item_pk))
        return {(jid, uid): (s_, e, bool(long)) for jid, uid, s_, e, long in rows}


def test_assignee_spans_follow_items_through_every_write_path(db: Database) -> None:
    seed(db, "u1", "u2", "u3")
    assert import_document(db, {"jobs": [job("j1", T0 + 9 * H, T0 + 11 * H, "u1", "u2")]}).ok
    assert spans(db) == {("j1", "u1"): (T0 + 9 * H, T0 + 11 * H, False),
                         ("j1", "u2"): (T0 + 9 * H, T0 + 11 * H, False)}

    # moved, one assignee swapped for another, in one upsert
    assert import_document(db, {"jobs": [job("j1", T0 + 30 * H, T0 + 31 * H, "u2", "u3")]}).ok
    assert spans(db) == {("j1", "u2"): (T0 + 30 * H, T0 + 31 * H, False),
                         ("j1", "u3"): (T0 + 30 * H, T0 + 31 * H, False)}

    # longer than a day, then a day exactly: long, then short again
    assert import_document(db, {"jobs": [job("j1", T0, T0 + 50 * H, "u2", "u3")]}).ok
    assert {v[2] for v in spans(db).values()} == {True}
    assert import_document(db, {"jobs": [job("j1", T0, T0 + 24 * H, "u2", "u3")]}).ok
    assert {v[2] for v in spans(db).values()} == {False}

    # a multi-day all-day time off is long
    assert import_document(db, {"time_off": [{"id": "t1", "user": "u1", "start": "2026-12-24",
                                              "end": "2026-12-28", "all_day": True}]}).ok
    assert spans(db)[("t1", "u1")] == (dt.datetime(2026, 12, 24, tzinfo=UTC),
                                       dt.datetime(2026, 12, 28, tzinfo=UTC), True)

    # a Core UPDATE (as a sync pull that moves a user's block might do) is followed too
    with db.session() as s:
        s.execute(update(ScheduleItem).where(ScheduleItem.ext_id == "t1")
                  .values(start_at=T0 + 2 * H, end_at=T0 + 3 * H))
    assert spans(db)[("t1", "u1")] == (T0 + 2 * H, T0 + 3 * H, False)


def test_external_occurrences_are_marked_long_on_insert_and_update(db: Database) -> None:
    cal = seed(db, "u1")
    with db.session() as s:
        ev = ExternalEvent(calendar_id=cal, user_id="u1", remote_id="r1", content_hash="x")
        s.add(ev)
        s.flush()
        s.add_all([ExternalBusy(event_id=ev.id, user_id="u1", start_at=T0, end_at=T0 + H),
                   ExternalBusy(event_id=ev.id, user_id="u1", start_at=T0,
                                end_at=T0 + 72 * H)])
        s.flush()
        s.execute(insert(ExternalBusy), [{"event_id": ev.id, "user_id": "u1",
                                          "start_at": T0, "end_at": T0 + 25 * H}])

    def marks() -> list[tuple[dt.timedelta, bool]]:
        with db.read_session() as s:
            return sorted((e - s_, bool(long)) for s_, e, long in s.execute(
                select(ExternalBusy.start_at, ExternalBusy.end_at, ExternalBusy.long_span)))

    assert marks() == [(H, False), (25 * H, True), (72 * H, True)]
    with db.session() as s:  # every occurrence starts at T0
        s.execute(update(ExternalBusy).values(end_at=T0 + 2 * H))
    assert marks() == [(2 * H, False)] * 3


def test_a_check_sees_long_time_off_and_a_job_from_the_night_before(db: Database,
                                                                    app_client,
                                                                    make_token) -> None:
    seed(db, "u1")
    assert import_document(db, {
        "time_off": [{"id": "t1", "user": "u1", "start": "2026-11-01", "end": "2027-01-01",
                      "all_day": True, "reason": "Sabbatical"}],
        "jobs": [job("late", T0 - 2 * H, T0 + 2 * H, "u1"),
                 job("before", T0 - 3 * H, T0, "u1")]}).ok  # ends as the slot starts
    token = make_token("dispatcher")
    r = app_client.post("/api/availability/check", headers={"Authorization": f"Bearer {token}"},
                        json={"user_ids": ["u1"], "start": iso(T0 + H),
                              "end": iso(T0 + 90 * dt.timedelta(minutes=1))})
    assert r.status_code == 200, r.text
    [res] = r.json()["results"]
    assert res["available"] is False
    assert sorted(c["kind"] for c in res["conflicts"]) == ["job", "time_off"]
    assert {c["start"] for c in res["conflicts"]} == {iso(T0 - 2 * H),
                                                     "2026-11-01T00:00:00+00:00"}


def test_loaded_rows_equal_a_plain_overlap_filter_over_everything(db: Database) -> None:
    """Random short and long items and occurrences around one week, random ranges: the
    store's two index ranges per user find exactly what overlaps."""
    rng = random.Random(12)
    users = ["u1", "u2", "u3"]
    cal = seed(db, *users)
    with db.session() as s:
        ignored = Calendar(connection_id=s.scalar(select(Connection.id)), remote_id="/ignored",
                           name="Ignored", role="ignored", status="ok")
        s.add(ignored)
        s.flush()
        ignored_id = ignored.id
    lengths = [dt.timedelta(minutes=m) for m in (1, 30, 60 * 23, 60 * 24, 60 * 24 + 1,
                                                 60 * 25, 60 * 24 * 9)]
    stored: list[tuple[str, str, dt.datetime, dt.datetime]] = []
    jobs = []
    for n in range(40):
        start = T0 + dt.timedelta(minutes=rng.randrange(-3 * 24 * 60, 10 * 24 * 60))
        end = start + rng.choice(lengths)
        team = rng.sample(users, rng.choice((1, 2)))
        jobs.append(job(f"j{n}", start, end, *team))
        stored += [("item", u, start, end) for u in team]
    assert import_document(db, {"jobs": jobs}).ok
    with db.session() as s:
        for n in range(40):
            uid = rng.choice(users)
            ev = ExternalEvent(calendar_id=cal, user_id=uid, remote_id=f"r{n}",
                               content_hash="x")
            s.add(ev)
            s.flush()
            start = T0 + dt.timedelta(minutes=rng.randrange(-3 * 24 * 60, 10 * 24 * 60))
            end = start + rng.choice(lengths)
            s.add(ExternalBusy(event_id=ev.id, user_id=uid, start_at=start, end_at=end))
            stored.append(("event", uid, start, end))
        for n in range(10):  # on a calendar the user does not watch: never loaded
            ev = ExternalEvent(calendar_id=ignored_id, user_id="u1", remote_id=f"i{n}",
                               content_hash="x")
            s.add(ev)
            s.flush()
            start = T0 + dt.timedelta(hours=rng.randrange(-24, 8 * 24))
            s.add(ExternalBusy(event_id=ev.id, user_id="u1", start_at=start,
                               end_at=start + rng.choice(lengths)))
    for _ in range(30):
        start = T0 + dt.timedelta(minutes=rng.randrange(-24 * 60, 8 * 24 * 60))
        end = start + dt.timedelta(minutes=rng.choice((1, 30, 90, 60 * 24, 60 * 24 * 3)))
        with reading(db) as s:
            items, events = load_busy_rows(s, users, start, end, details=False)
            times = load_busy_times(s, users, start, end)
        for uid in users:
            want = sorted((s_, e) for src, u, s_, e in stored
                          if u == uid and s_ < end and e > start)
            got_items = [(i.start, i.end) for i in items[uid]]
            got_events = [(x.start, x.end) for x in events[uid]]
            assert sorted(got_items + got_events) == want, (uid, start, end)
            assert sorted(times[uid]) == want  # every stored row here is busy


def test_search_ignores_cancelled_deleted_free_and_ignored_rows(db: Database) -> None:
    cal = seed(db, "u1")
    day = T0 + 9 * H
    assert import_document(db, {"jobs": [
        job("busy", day, day + H, "u1"), job("cancelled", day + H, day + 2 * H, "u1",
                                             status="cancelled"),
        job("deleted", day + 2 * H, day + 3 * H, "u1")]}).ok
    assert import_document(db, {"jobs": [{"id": "deleted", "deleted": True}]}).ok
    with db.session() as s:
        ignored = Calendar(connection_id=s.scalar(select(Connection.id)), remote_id="/i",
                           name="Ignored", role="ignored", status="ok")
        s.add(ignored)
        s.flush()
        for rid, cal_id, busy, hour in (("free", cal, "free", 3), ("ign", ignored.id, "busy", 4),
                                        ("tent", cal, "tentative", 5)):
            ev = ExternalEvent(calendar_id=cal_id, user_id="u1", remote_id=rid,
                               content_hash="x", busy_status=busy)
            s.add(ev)
            s.flush()
            s.add(ExternalBusy(event_id=ev.id, user_id="u1", start_at=day + hour * H,
                               end_at=day + (hour + 1) * H))
    with reading(db) as s:
        [res] = search_availability(s, ["u1"], day, day + 7 * H, H, T0, dt.timedelta(days=30))
    starts = [slot["start"] for slot in res["slots"]]
    assert starts == [iso(day + h * H) for h in (1, 2, 3, 4, 6)]


def _fresh_database(kind: str, tmp_path: Path) -> tuple[Database, Any]:
    if kind == "sqlite":
        return Database(f"sqlite:///{tmp_path / 'old.db'}"), None
    admin = create_engine(PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1),
                          isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text("select 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means no server
        need(False, f"PostgreSQL not reachable at {PG_ADMIN_URL}: {type(exc).__name__}")
    name = f"calsync_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    return Database(url), (admin, name)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_migration_fills_spans_of_rows_written_before_it(kind: str, tmp_path: Path) -> None:
    db, cleanup = _fresh_database(kind, tmp_path)
    try:
        upgrade(db.engine, "0008")
        with db.engine.begin() as c:
            now = T0
            c.execute(insert(User), [{"id": "u1", "name": "U", "timezone": "UTC",
                                      "working_hours": {}, "private_mode": True,
                                      "feed_version": 0, "feed_enabled": False,
                                      "created_at": now, "updated_at": now}])
            c.execute(insert(ScheduleItem), [
                {"pk": 1, "kind": "job", "ext_id": "j1", "title": "", "status": "scheduled",
                 "all_day": False, "start_at": T0, "end_at": T0 + H, "tzid": "UTC",
                 "sequence": 0, "content_hash": "x", "created_at": now, "updated_at": now},
                {"pk": 2, "kind": "time_off", "ext_id": "t1", "title": "",
                 "status": "scheduled", "all_day": False, "start_at": T0,
                 "end_at": T0 + 48 * H, "tzid": "UTC", "sequence": 0, "content_hash": "x",
                 "created_at": now, "updated_at": now}])
            c.execute(text("INSERT INTO item_assignees (item_pk, user_id) VALUES "
                           "(1, 'u1'), (2, 'u1')"))
        db.upgrade()
        assert spans(db) == {("j1", "u1"): (T0, T0 + H, False),
                             ("t1", "u1"): (T0, T0 + 48 * H, True)}
        with reading(db) as s:
            items, _ = load_busy_rows(s, ["u1"], T0 + 30 * H, T0 + 31 * H)
        assert [i.id for i in items["u1"]] == ["t1"]
    finally:
        db.dispose()
        if cleanup is not None:
            admin, name = cleanup
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def test_reads_leave_the_pooled_connection_as_they_found_it(db: Database) -> None:
    """PostgreSQL: generic plans on the connections checks read on only; the main engine's
    connections keep the server's default. SQLite: a check holds no write lock, so a
    writer goes ahead meanwhile."""
    seed(db, "u1")
    with reading(db) as s:
        if db.dialect == "postgresql":
            inside = s.connection().exec_driver_sql("SHOW plan_cache_mode").scalar()
        else:
            load_busy_rows(s, ["u1"], T0, T0 + H)
            with db.session() as writer:  # would wait for the lock (and raise) if held
                writer.execute(update(Calendar).values(name="Renamed"))
    if db.dialect == "postgresql":
        assert inside == "force_generic_plan"
        with db.session() as s:
            assert s.connection().exec_driver_sql("SHOW plan_cache_mode").scalar() == "auto"
    else:
        with db.read_session() as s:
            assert s.scalar(select(Calendar.name)) == "Renamed"


def test_a_database_error_is_raised_as_sqlalchemys_without_its_parameters(
        sqlite_db: Database) -> None:
    """Checks run on the driver; its errors still come as SQLAlchemy's (what the CLI and
    the API map), and the message does not carry the bound values."""
    from sqlalchemy.exc import OperationalError

    from calsync.availability.check import check_availability
    from calsync.privacy import OPERATOR

    seed(sqlite_db, "u1")
    with sqlite_db.engine.begin() as c:
        c.exec_driver_sql("DROP TABLE item_assignees")
    with reading(sqlite_db) as s, pytest.raises(OperationalError) as caught:
        check_availability(s, ["u1"], T0, T0 + H, OPERATOR, T0, dt.timedelta(days=1))
    assert "item_assignees" in str(caught.value)
    assert "u1" not in str(caught.value) and "2026-12-07" not in str(caught.value)
