"""A slot search (one statement, spans in integers) offers exactly the free slots the busy
model gives, on SQLite and PostgreSQL: random jobs and external events for users in
three zones with different working hours, over ranges that cross DST changes, with one
user whose calendar is stale."""

from __future__ import annotations

import datetime as dt
import random

from sqlalchemy import update

from calsync.availability.busy import busy_intervals, free_slots, stale_calendars
from calsync.availability.check import search_availability
from calsync.availability.store import load_busy_inputs, reading
from calsync.db.models import Calendar, Connection, ExternalBusy, ExternalEvent
from calsync.db.session import Database
from calsync.schedule.store import import_document
from tests.test_availability_spans import job

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 10, 20, tzinfo=UTC)
STALE_AFTER = dt.timedelta(days=30)
WEEKDAYS = {d: [["08:00", "12:00"], ["13:00", "17:30"]] for d in ("mon", "tue", "wed", "thu")}
USERS = {  # id: (timezone, working hours)
    "chi": ("America/Chicago", WEEKDAYS),
    "ber": ("Europe/Berlin", {"mon": [["07:15", "24:00"]], "sat": [["00:00", "06:00"]]}),
    "utc": ("UTC", {}),
    "stale": ("Europe/Berlin", WEEKDAYS),
}


def populate(db: Database, rng: random.Random) -> None:
    report = import_document(db, {"users": [
        {"id": u, "name": u, "timezone": tz, "working_hours": hours}
        for u, (tz, hours) in USERS.items()]})
    assert report.ok, report.errors
    jobs = []
    for n in range(120):
        start = NOW + dt.timedelta(minutes=5 * rng.randrange(0, 20 * 24 * 12))
        end = start + dt.timedelta(minutes=rng.choice((10, 30, 45, 90, 60 * 26)))
        jobs.append(job(f"j{n}", start, end, *rng.sample(sorted(USERS), rng.choice((1, 2))),
                        status=rng.choice(("scheduled", "scheduled", "completed",
                                           "cancelled"))))
    assert import_document(db, {"jobs": jobs}).ok
    with db.session() as s:
        for uid in USERS:
            conn = Connection(user_id=uid, provider="caldav", account=uid, status="ok")
            s.add(conn)
            s.flush()
            cal = Calendar(connection_id=conn.id, remote_id=f"/{uid}", name="Work",
                           role="conflict", status="ok", last_success_at=NOW,
                           last_sync_at=NOW)
            s.add(cal)
            s.flush()
            for n in range(40):
                start = NOW + dt.timedelta(minutes=rng.randrange(0, 20 * 24 * 60))
                ev = ExternalEvent(
                    calendar_id=cal.id, user_id=uid, remote_id=f"{uid}{n}", content_hash="x",
                    busy_status=rng.choice(("busy", "tentative", "free", "oof")),
                    status=rng.choice(("confirmed", "confirmed", "cancelled")),
                    response=rng.choice((None, "accepted", "declined")))
                s.add(ev)
                s.flush()
                s.add(ExternalBusy(event_id=ev.id, user_id=uid, start_at=start,
                                   end_at=start + dt.timedelta(minutes=rng.choice((15, 50,
                                                                                   300)))))
        s.execute(update(Calendar).where(Calendar.remote_id == "/stale").values(status="error"))


def test_search_offers_the_slots_of_the_busy_model(db: Database) -> None:
    rng = random.Random(3)
    populate(db, rng)
    users = sorted(USERS)
    for _ in range(12):
        start = NOW + dt.timedelta(minutes=rng.randrange(0, 14 * 24 * 60))
        end = start + dt.timedelta(hours=rng.choice((3, 30, 24 * 5)))
        duration = dt.timedelta(minutes=rng.choice((15, 30, 60, 90)))
        with reading(db) as s:
            results = search_availability(s, users, start, end, duration, NOW, STALE_AFTER)
            inputs = load_busy_inputs(s, users, start, end)
        assert [r["user_id"] for r in results] == users
        for result in results:
            data = inputs[result["user_id"]]
            stale = stale_calendars(data.calendars, NOW, STALE_AFTER)
            want = [] if stale else [
                {"start": a.isoformat(), "end": b.isoformat()}
                for a, b in free_slots(busy_intervals(data, start, end), start, end, duration)]
            assert result["stale"] == bool(stale) and result["stale_calendars"] == stale
            assert result["slots"] == want, (result["user_id"], start, end, duration)
    assert any(r["slots"] for r in results)
    assert [r["stale"] for r in results] == [u == "stale" for u in users]
