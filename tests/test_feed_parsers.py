"""Feeds of tricky data parse in icalendar, vobject (validate=True) and ical.js, and give
back exactly the instants and texts that went in. Also: cost follows change."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from calsync.db.models import FeedCache, ScheduleItem, User
from calsync.feeds import ics
from calsync.feeds.service import current_feed, refresh_dirty_feeds, render_users
from calsync.schedule.records import parse_job
from calsync.schedule.store import import_document, upsert_item
from tests.conftest import need
from tests.test_feed_rebuild import count_renders

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
JS_DIR = Path(__file__).parent / "js"
LONG_TEXT = ("Kabel prüfen; 光ファイバー接続を確認してください, then call 😀 back \\ "
             "before 5pm.\nSecond line: 中文测试 émoji 🚚🔧 ") * 4

JOBS: list[dict[str, Any]] = [
    {"id": "j-text", "title": "Fiber install", "job_type": "Install",
     "account": "Acme, Inc; 北京 Trading 😀", "location": "1 Main St, Suite 5; Gate\\B\nRear",
     "notes": LONG_TEXT, "start": "2026-11-24T09:00:00-06:00",
     "end": "2026-11-24T11:00:00-06:00", "assignees": ["u1"]},
    # Crosses the spring-forward change in Chicago (01:00 CST -> 04:00 CDT: two real hours).
    {"id": "j-dst", "title": "Night splice", "job_type": "Splice", "account": "City",
     "start": "2027-03-14T01:00:00-06:00", "end": "2027-03-14T04:00:00-05:00",
     "assignees": ["u1"], "timezone": "America/Chicago"},
    # Sits in the second pass of the repeated hour on the fall-back day.
    {"id": "j-fold", "title": "Fold hour", "start": "2027-11-07T01:30:00-06:00",
     "end": "2027-11-07T02:30:00-06:00", "assignees": ["u1"], "timezone": "America/Chicago"},
    {"id": "j-crew", "title": "Crew job", "job_type": "Repair", "account": "Müller & Söhne",
     "start": "2026-12-01T08:00:00+01:00", "end": "2026-12-01T12:00:00+01:00",
     "assignees": ["u1", "u2", "u3"], "timezone": "Europe/Berlin"},
    {"id": "j-cancelled", "title": "Cancelled", "start": "2026-11-25T09:00:00-06:00",
     "end": "2026-11-25T10:00:00-06:00", "assignees": ["u1"], "status": "cancelled"},
    {"id": "j-far", "title": "Too far", "start": "2028-06-01T09:00:00-05:00",
     "end": "2028-06-01T10:00:00-05:00", "assignees": ["u1"]},
    {"id": "j-gone", "title": "Deleted later", "start": "2026-11-26T09:00:00-06:00",
     "end": "2026-11-26T10:00:00-06:00", "assignees": ["u1"]},
]
DOC: dict[str, Any] = {
    "users": [{"id": "u1", "name": "Jane Doe", "timezone": "America/Chicago"},
              {"id": "u2", "name": "Jonas Weber", "timezone": "Europe/Berlin"},
              {"id": "u3", "name": "Dev Patel", "timezone": "America/New_York"}],
    "jobs": JOBS,
    "time_off": [{"id": "t-vac", "user": "u1", "start": "2026-12-24", "end": "2026-12-28",
                  "all_day": True, "reason": "Vacation, family; 🎄"}],
    "blocks": [{"id": "b-train", "user": "u1", "title": "Training \\ safety; level 2, part 1",
                "start": "2026-11-27T13:00:00-06:00", "end": "2026-11-27T15:00:00-06:00"}],
}

# What must come back, by UID: (summary, description, location, start, end).
EXPECTED: dict[str, tuple[str, str | None, str | None, Any, Any]] = {
    "job-j-text@calsync": ("Install: Acme, Inc; 北京 Trading 😀", LONG_TEXT,
                           "1 Main St, Suite 5; Gate\\B\nRear",
                           dt.datetime(2026, 11, 24, 15, tzinfo=UTC),
                           dt.datetime(2026, 11, 24, 17, tzinfo=UTC)),
    "job-j-dst@calsync": ("Splice: City", None, None, dt.datetime(2027, 3, 14, 7, tzinfo=UTC),
                          dt.datetime(2027, 3, 14, 9, tzinfo=UTC)),
    "job-j-fold@calsync": ("Fold hour", None, None,
                           dt.datetime(2027, 11, 7, 7, 30, tzinfo=UTC),
                           dt.datetime(2027, 11, 7, 8, 30, tzinfo=UTC)),
    "job-j-crew@calsync": ("Repair: Müller & Söhne", None, None,
                           dt.datetime(2026, 12, 1, 7, tzinfo=UTC),
                           dt.datetime(2026, 12, 1, 11, tzinfo=UTC)),
    "time_off-t-vac@calsync": ("Time off: Vacation, family; 🎄", None, None,
                               dt.date(2026, 12, 24), dt.date(2026, 12, 28)),
    "block-b-train@calsync": ("Training \\ safety; level 2, part 1", None, None,
                              dt.datetime(2026, 11, 27, 19, tzinfo=UTC),
                              dt.datetime(2026, 11, 27, 21, tzinfo=UTC)),
}


@pytest.fixture
def feed_settings(settings):  # type: ignore[no-untyped-def]
    return replace(settings, feeds=replace(settings.feeds, job_url_template=""))


def _load(db, settings) -> None:  # type: ignore[no-untyped-def]
    report = import_document(db, DOC, now=NOW - dt.timedelta(days=1))
    assert report.ok, report.errors
    with db.session() as s:
        gone = s.scalar(select(ScheduleItem).where(ScheduleItem.ext_id == "j-gone"))
        from calsync.schedule.store import delete_item
        delete_item(s, gone, "test", NOW - dt.timedelta(hours=1))
        for user in s.scalars(select(User)):
            user.feed_enabled = True


def _feed(db, settings, user_id: str = "u1") -> bytes:  # type: ignore[no-untyped-def]
    return current_feed(settings, db, user_id, NOW).body


def _utc(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        assert value.tzinfo is not None, f"floating time {value}"
        return value.astimezone(UTC)
    return value


def _check(events: dict[str, tuple[str, str | None, str | None, Any, Any]]) -> None:
    assert set(events) == set(EXPECTED)
    for uid, want in EXPECTED.items():
        assert events[uid] == want, uid


def test_feed_text_is_rfc5545_shaped(db, feed_settings) -> None:
    _load(db, feed_settings)
    body = _feed(db, feed_settings)
    text = body.decode("utf-8")
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")
    for line in text.split("\r\n"):
        assert len(line.encode("utf-8")) <= 75, line
    unfolded = ics.unfold(text)
    for needed in ("VERSION:2.0", "CALSCALE:GREGORIAN", "METHOD:PUBLISH",
                   "X-WR-CALNAME:Jane Doe — schedule", "X-WR-TIMEZONE:America/Chicago",
                   "REFRESH-INTERVAL;VALUE=DURATION:PT15M", "X-PUBLISHED-TTL:PT15M"):
        assert needed in unfolded.split("\r\n")
    assert unfolded.count("BEGIN:VTIMEZONE") == 2  # Chicago (timed items), Berlin (crew)
    assert "TZID:America/Chicago" in unfolded and "TZID:Europe/Berlin" in unfolded
    assert "j-cancelled" not in text and "j-far" not in text and "j-gone" not in text


def test_icalendar_reads_back_what_went_in(db, feed_settings) -> None:
    import icalendar

    _load(db, feed_settings)
    cal = icalendar.Calendar.from_ical(_feed(db, feed_settings))
    events = {}
    for ev in cal.walk("VEVENT"):
        def text(name: str) -> str | None:
            v = ev.get(name)
            return None if v is None else str(v)
        events[str(ev["UID"])] = (text("SUMMARY"), text("DESCRIPTION"), text("LOCATION"),
                                  _utc(ev.decoded("DTSTART")), _utc(ev.decoded("DTEND")))
    _check(events)


def test_vobject_validates_and_reads_back(db, feed_settings) -> None:
    import vobject

    _load(db, feed_settings)
    cal = vobject.readOne(_feed(db, feed_settings).decode("utf-8"), validate=True)
    events = {}
    for ev in cal.vevent_list:
        def text(name: str) -> str | None:
            v = getattr(ev, name, None)
            return None if v is None else v.value
        events[ev.uid.value] = (text("summary"), text("description"), text("location"),
                                _utc(ev.dtstart.value), _utc(ev.dtend.value))
    _check(events)


def _ical_js(body: bytes) -> dict[str, Any]:
    node = shutil.which("node")
    need(node is not None, "node is not installed")
    need((JS_DIR / "node_modules" / "ical.js").is_dir(),
         "ical.js is not installed (cd tests/js && npm install)")
    proc = subprocess.run([node, str(JS_DIR / "parse_feed.mjs")], input=body,  # type: ignore[list-item]
                          capture_output=True, cwd=JS_DIR, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    return dict(json.loads(proc.stdout))


def _js_when(value: str, all_day: bool) -> Any:
    if all_day:
        return dt.date.fromisoformat(value)
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_ical_js_reads_back_what_went_in(db, feed_settings) -> None:
    _load(db, feed_settings)
    out = _ical_js(_feed(db, feed_settings))
    assert out["calendar"]["x-wr-calname"] == "Jane Doe — schedule"
    assert out["calendar"]["refresh-interval"] == "PT15M"
    events = {e["uid"]: (e["summary"], e["description"], e["location"],
                         _js_when(e["start"], e["allDay"]), _js_when(e["end"], e["allDay"]))
              for e in out["events"]}
    _check(events)
    crew = next(e for e in out["events"] if e["uid"] == "job-j-crew@calsync")
    assert crew["categories"] == ["Job", "Repair"] and crew["startTzid"] == "Europe/Berlin"


def test_a_job_has_one_uid_in_every_assignees_feed(db, feed_settings) -> None:
    _load(db, feed_settings)
    for uid in ("u2", "u3"):
        text = ics.unfold(_feed(db, feed_settings, uid).decode())
        assert "UID:job-j-crew@calsync" in text and text.count("BEGIN:VEVENT") == 1
        assert "DTSTART;TZID=Europe/Berlin:20261201T080000" in text


def test_a_change_costs_one_fragment_and_sequence_grows(db, feed_settings, monkeypatch) -> None:
    _load(db, feed_settings)
    assert sorted(refresh_dirty_feeds(feed_settings, db, NOW).rendered) == ["u1", "u2", "u3"]
    first = _feed(db, feed_settings)
    assert b"SEQUENCE:0" in first and b"SEQUENCE:1" not in first
    calls = count_renders(monkeypatch)
    changed = {**JOBS[0], "notes": "Changed notes"}
    with db.session() as s:
        assert upsert_item(s, parse_job(changed), now=NOW) == "updated"
    report = refresh_dirty_feeds(feed_settings, db, NOW)
    assert report.rendered == ["u1"] and report.failed == []
    assert calls == ["j-text"]  # one fragment re-rendered, the rest came from the cache
    second = _feed(db, feed_settings)
    assert second != first
    text = ics.unfold(second.decode())
    block = text[text.index("UID:job-j-text@calsync"):]
    block = block[:block.index("END:VEVENT")]
    assert "SEQUENCE:1" in block and "DESCRIPTION:Changed notes" in block
    # a full rebuild with nothing changed renders no fragment and keeps the ETag
    calls.clear()
    with db.session() as s:
        etag = s.get(FeedCache, "u1").etag
    render_users(feed_settings, db, ["u1"], NOW)
    with db.session() as s:
        assert s.get(FeedCache, "u1").etag == etag
    assert calls == []


def test_job_url_template_changes_fragments_and_links_back(db, feed_settings) -> None:
    _load(db, feed_settings)
    _feed(db, feed_settings)
    linked = replace(feed_settings, feeds=replace(
        feed_settings.feeds, job_url_template="https://dispatch.example/jobs/{job_id}"))
    render_users(linked, db, ["u1"], NOW)
    text = ics.unfold(_feed(db, linked).decode())
    assert "URL:https://dispatch.example/jobs/j-crew" in text
    assert "DESCRIPTION:Scheduled" not in text
    assert "\\n\\nhttps://dispatch.example/jobs/j-text" in text


def test_an_empty_feed_is_still_a_valid_calendar(db, feed_settings) -> None:
    import icalendar
    import vobject

    assert import_document(db, {"users": [{"id": "lonely", "name": "No Jobs",
                                           "timezone": "Asia/Tokyo"}]}).ok
    body = current_feed(feed_settings, db, "lonely", NOW).body
    assert b"BEGIN:VEVENT" not in body and b"BEGIN:VTIMEZONE" not in body
    assert icalendar.Calendar.from_ical(body)["X-WR-TIMEZONE"] == "Asia/Tokyo"
    assert vobject.readOne(body.decode(), validate=True).x_wr_calname.value == "No Jobs — schedule"
    assert _ical_js(body)["events"] == []
