"""Import and storage: idempotence, partial failure, both database engines."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from calsync.db.models import AuditEntry, FeedCache, ScheduleItem, User
from calsync.db.session import Database
from calsync.schedule.store import import_document

DOC = {
    "users": [
        {"id": "u1", "name": "Jane Doe", "email": "jane@example.com",
         "timezone": "America/Chicago", "private_mode": True,
         "working_hours": {"mon": [["08:00", "12:00"], ["13:00", "17:00"]], "tue": []}},
        {"id": "u2", "name": "Kai Müller", "timezone": "Europe/Berlin"},
    ],
    "jobs": [{"id": "j1", "title": "Fiber install", "job_type": "Install",
              "account": "Acme Corp", "location": "1 Main St, Springfield, IL",
              "notes": "Gate code 1234", "start": "2026-11-24T09:00:00-06:00",
              "end": "2026-11-24T11:00:00-06:00", "assignees": ["u1", "u2"],
              "status": "scheduled"}],
    "time_off": [{"id": "t1", "user": "u1", "start": "2026-12-24", "end": "2026-12-27",
                  "all_day": True, "reason": "Vacation"}],
    "blocks": [{"id": "b1", "user": "u1", "title": "Training",
                "start": "2026-11-25T13:00:00-06:00", "end": "2026-11-25T15:00:00-06:00"}],
}


def test_import_lands_everything(db: Database) -> None:
    report = import_document(db, DOC)
    assert report.ok, report.errors
    assert report.counts["users"] == {"created": 2}
    with db.session() as s:
        job = s.scalar(select(ScheduleItem).where(ScheduleItem.ext_id == "j1"))
        assert job is not None
        assert job.user_ids == ["u1", "u2"]
        assert job.start_at == dt.datetime(2026, 11, 24, 15, tzinfo=dt.timezone.utc)
        assert job.tzid == "America/Chicago"
        off = s.scalar(select(ScheduleItem).where(ScheduleItem.kind == "time_off"))
        assert off.all_day and off.start_date == dt.date(2026, 12, 24)
        assert off.end_date == dt.date(2026, 12, 27)
        # all-day instants are local midnights of the user's zone (CST = UTC-6)
        assert off.start_at == dt.datetime(2026, 12, 24, 6, tzinfo=dt.timezone.utc)
        assert s.get(User, "u1").working_hours["mon"] == [["08:00", "12:00"], ["13:00", "17:00"]]
        assert {f.user_id for f in s.scalars(select(FeedCache))} == {"u1", "u2"}


def test_import_is_idempotent(db: Database) -> None:
    import_document(db, DOC)
    with db.session() as s:
        before = {(i.kind, i.ext_id): (i.sequence, i.content_hash)
                  for i in s.scalars(select(ScheduleItem))}
        audits = len(s.scalars(select(AuditEntry)).all())
    again = import_document(db, DOC)
    assert again.counts["jobs"] == {"unchanged": 1}
    assert again.counts["users"] == {"unchanged": 2}
    with db.session() as s:
        after = {(i.kind, i.ext_id): (i.sequence, i.content_hash)
                 for i in s.scalars(select(ScheduleItem))}
        assert len(s.scalars(select(AuditEntry)).all()) == audits
    assert before == after


def test_change_bumps_sequence_and_delete_tombstones(db: Database) -> None:
    import_document(db, DOC)
    changed = {"jobs": [{**DOC["jobs"][0], "notes": "Gate code 9999"}]}
    assert import_document(db, changed).counts["jobs"] == {"updated": 1}
    deleted = {"jobs": [{"id": "j1", "deleted": True}]}
    assert import_document(db, deleted).counts["jobs"] == {"deleted": 1}
    with db.session() as s:
        job = s.scalar(select(ScheduleItem).where(ScheduleItem.ext_id == "j1"))
        assert job.sequence == 2 and job.deleted_at is not None
    assert import_document(db, deleted).counts["jobs"] == {"missing": 1}


def test_bad_records_reported_one_by_one_and_good_ones_land(db: Database) -> None:
    doc = {
        "users": [DOC["users"][0], {"id": "bad", "name": "X", "timezone": "Mars/Olympus"}],
        "jobs": [
            DOC["jobs"][0],
            {**DOC["jobs"][0], "id": "j2", "end": "2026-11-24T08:00:00-06:00"},
            {**DOC["jobs"][0], "id": "j3", "assignees": ["ghost"]},
            {**DOC["jobs"][0], "id": "j4", "status": "maybe"},
            {**DOC["jobs"][0], "id": "j5", "start": "tomorrow"},
        ],
        "blocks": ["not an object"],
    }
    report = import_document(db, doc)
    errs = {(e["record"], e["field"]): e["error"] for e in report.errors}
    assert ("users[1] (id='bad')", "timezone") in errs
    assert ("jobs[1] (id='j2')", "end") in errs
    assert "ghost" in errs[("jobs[2] (id='j3')", "assignees")]
    assert ("jobs[3] (id='j4')", "status") in errs
    assert "tomorrow" in errs[("jobs[4] (id='j5')", "start")]
    assert ("blocks[0]", "*") in errs
    # j1 references u2, which is not in this file, so it fails too; import u2 and retry
    assert ("jobs[0] (id='j1')", "assignees") in errs
    with db.session() as s:
        assert s.get(User, "bad") is None
        assert s.get(User, "u1") is not None
        assert s.scalars(select(ScheduleItem)).all() == []
    report = import_document(db, {"users": DOC["users"], "jobs": DOC["jobs"]})
    assert report.ok


def test_naive_time_uses_item_timezone(db: Database) -> None:
    import_document(db, {"users": DOC["users"]})
    report = import_document(db, {"blocks": [{"id": "b9", "user": "u2", "title": "Lunch",
                                              "timezone": "Europe/Berlin",
                                              "start": "2026-07-01T12:00:00",
                                              "end": "2026-07-01T13:00:00"}]})
    assert report.ok, report.errors
    with db.session() as s:
        b = s.scalar(select(ScheduleItem).where(ScheduleItem.ext_id == "b9"))
        assert b.start_at == dt.datetime(2026, 7, 1, 10, tzinfo=dt.timezone.utc)


def test_unknown_fields_are_rejected_naming_the_field(db: Database) -> None:
    doc = {"users": [{**DOC["users"][0], "privat_mode": False}, DOC["users"][1]],
           "jobs": [{**DOC["jobs"][0], "locaton": "2 Main St"}],
           "blocks": [{"id": "b9", "deleted": True, "reason": "typo on a tombstone"}]}
    report = import_document(db, doc)
    errs = {(e["record"], e["field"]): e["error"] for e in report.errors}
    assert errs == {
        ("users[0] (id='u1')", "privat_mode"): "unknown field; did you mean 'private_mode'?",
        ("jobs[0] (id='j1')", "locaton"): "unknown field; did you mean 'location'?",
        ("blocks[0] (id='b9')", "reason"): "unknown field; expected all_day, deleted, end, "
                                           "id, location, notes, start, timezone, title, user",
    }
    with db.session() as s:
        assert s.get(User, "u1") is None and s.get(User, "u2") is not None
        assert s.scalars(select(ScheduleItem)).all() == []
