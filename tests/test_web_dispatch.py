"""The dispatcher's board (/app/dispatch) through the real app: the week, masking of
external events, stale badges, "Find a free slot", booking and refused bookings."""

from __future__ import annotations

import re

from sqlalchemy import select

from calsync.db.models import ScheduleItem
from calsync.schedule.store import import_document
from tests.test_availability_api import add_calendar, add_external
from tests.web_client import forms, sign_in

WEEK = "2026-11-30"  # a Monday
HOURS = {d: [["08:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}
DOC = {
    "users": [{"id": "u1", "name": "Jane Doe", "timezone": "America/Chicago",
               "working_hours": HOURS},
              {"id": "u2", "name": "Sam Roe", "timezone": "Europe/Berlin",
               "working_hours": HOURS, "private_mode": False}],
    "jobs": [{"id": "j1", "title": "Fiber install", "start": "2026-12-01T09:00:00-06:00",
              "end": "2026-12-01T11:00:00-06:00", "assignees": ["u1"]}],
    "time_off": [{"id": "t1", "user": "u2", "start": "2026-12-03", "end": "2026-12-05",
                  "all_day": True, "reason": "Vacation"}],
    "blocks": [{"id": "b1", "user": "u1", "title": "Training",
                "start": "2026-12-02T13:00:00-06:00", "end": "2026-12-02T15:00:00-06:00"}],
}


def _board(db, app_client, make_token, **query):  # type: ignore[no-untyped-def]
    assert import_document(db, DOC).ok
    cal = add_calendar(db, "u1", name="Personal")
    add_external(db, cal, "u1", "2026-11-30T10:00:00-06:00", "2026-11-30T11:00:00-06:00",
                 summary="Dentist appointment", location="12 Elm St", description="root canal")
    cal2 = add_calendar(db, "u2", name="Home")
    add_external(db, cal2, "u2", "2026-12-01T09:00:00+01:00", "2026-12-01T10:00:00+01:00",
                 summary="School run")
    sign_in(app_client, make_token("admin"), {"role": "dispatcher", "name": "Dana"})
    return app_client.get("/app/dispatch", params={"week": WEEK, **query})


def _row(page: str, name: str) -> str:
    m = re.search(rf'<th scope="row">{re.escape(name)}.*?</tr>', page, re.S)
    assert m is not None, name
    return m[0]


def _cells(row: str) -> list[str]:
    return re.findall(r"<td>(.*?)</td>", row, re.S)


def test_board_shows_the_week_masked(db, app_client, make_token) -> None:
    r = _board(db, app_client, make_token)
    assert r.status_code == 200
    page = r.text
    assert "Mon 30 Nov" in page and "Sun 6 Dec" in page
    jane = _cells(_row(page, "Jane Doe"))
    assert len(jane) == 7
    assert "Busy" in jane[0] and "10:00–11:00" in jane[0]  # in Jane's own zone
    assert "Fiber install" in jane[1] and "09:00–11:00" in jane[1]
    assert "Training" in jane[2] and "Blocked" in jane[2]
    # Private mode is on for Jane: nothing of her event but "Busy" and its times.
    for secret in ("Dentist", "Elm St", "root canal"):
        assert secret not in page
    sam = _cells(_row(page, "Sam Roe"))
    assert "School run" in sam[1]  # private mode off: a dispatcher may see the title
    assert "Time off: Vacation" in sam[3] and "Time off" in sam[4] and "Vacation" not in sam[5]
    assert "All day" in sam[3]


def test_stale_calendar_is_named_and_gets_no_slots(db, app_client, make_token) -> None:
    assert import_document(db, DOC).ok
    add_calendar(db, "u2", name="Old iCloud", synced_ago=None)
    sign_in(app_client, make_token("admin"), {"role": "dispatcher", "name": "Dana"})
    r = app_client.get("/app/dispatch", params={
        "week": WEEK, "users": ["u2"], "duration": "60", "from": "2026-11-30T08:00",
        "to": "2026-11-30T17:00", "tz": "Europe/Berlin"})
    assert "stale: Old iCloud" in _row(r.text, "Sam Roe")
    assert "not up to date (Old iCloud)" in r.text
    assert not forms(r.text, "/app/dispatch/book")


def test_week_navigation(db, app_client, make_token) -> None:
    page = _board(db, app_client, make_token).text
    assert 'name="week" value="2026-11-23">Previous week' in page
    assert 'name="week" value="2026-12-07">Next week' in page
    nxt = app_client.get("/app/dispatch", params={"week": "2026-12-09"}).text  # any day
    assert "Mon 7 Dec" in nxt and "Fiber install" not in nxt
    assert app_client.get("/app/dispatch", params={"week": "junk"}).status_code == 200


def test_search_errors_are_next_to_their_fields(db, app_client, make_token) -> None:
    r = _board(db, app_client, make_token, duration="0", **{"from": "", "to": "x"})
    assert r.status_code == 200
    page = r.text
    assert 'id="users-error">Choose at least one technician.' in page
    assert 'aria-describedby="duration-error"' in page and "from 5 to 1440" in page
    assert 'id="from-error"' in page and 'id="to-error"' in page
    r = app_client.get("/app/dispatch", params={
        "week": WEEK, "users": "u1", "duration": "60", "from": "2026-11-30T10:00",
        "to": "2026-11-30T09:00", "tz": "America/Chicago"})
    assert "This must be later than From." in r.text


def test_find_book_and_refuse_a_double_booking(db, app_client, make_token) -> None:
    r = _board(db, app_client, make_token, users="u1", duration="60",
               tz="America/Chicago", title="Router swap",
               **{"from": "2026-11-30T08:00", "to": "2026-11-30T12:00"})
    slots = forms(r.text, "/app/dispatch/book")
    # 08:00-12:00 minus the busy 10:00-11:00: 08-09, 09-10, 11-12.
    assert [s["start"] for s in slots] == ["2026-11-30T14:00:00+00:00",
                                           "2026-11-30T15:00:00+00:00",
                                           "2026-11-30T17:00:00+00:00"]
    assert "Mon 30 Nov 08:00–09:00" in r.text
    first = slots[0]
    done = app_client.post("/app/dispatch/book", data=first, follow_redirects=False)
    assert done.status_code == 303
    page = app_client.get(done.headers["location"]).text
    assert "Booked “Router swap” for Jane Doe, Mon 30 Nov 08:00–09:00" in page
    assert "Router swap" in _cells(_row(page, "Jane Doe"))[0]
    # The same form sent again books nothing twice.
    again = app_client.post("/app/dispatch/book", data=first)
    assert again.status_code == 409 and "booked already" in again.text
    # Another dispatcher's stale page offers the same slot: refused, with the conflict.
    other = dict(first, job_id="job_second")
    refused = app_client.post("/app/dispatch/book", data=other)
    assert refused.status_code == 409
    assert "Not booked" in refused.text and "Router swap" in refused.text
    assert 'role="alert"' in refused.text
    # Refused over an external event: "Busy", never its details.
    busy = dict(first, job_id="job_third", start="2026-11-30T16:00:00+00:00",
                end="2026-11-30T17:00:00+00:00")
    refused = app_client.post("/app/dispatch/book", data=busy)
    assert refused.status_code == 409 and "Busy" in refused.text
    assert "Dentist" not in refused.text
    with db.session() as s:
        jobs = list(s.scalars(select(ScheduleItem.ext_id).where(ScheduleItem.kind == "job")))
    assert sorted(jobs) == sorted([first["job_id"], "j1"])


def test_booking_needs_a_dispatcher_session_and_csrf(db, app_client, make_token) -> None:
    r = _board(db, app_client, make_token, users="u1", duration="60", tz="America/Chicago",
               **{"from": "2026-11-30T08:00", "to": "2026-11-30T09:00"})
    slot = forms(r.text, "/app/dispatch/book")[0]
    assert app_client.post("/app/dispatch/book", data={**slot, "csrf_token": ""}
                           ).status_code == 403
    tech = app_client.__class__(app_client.app)
    sign_in(tech, make_token("admin"), {"user_id": "u1"})
    assert tech.get("/app/dispatch").status_code == 403
    anon = app_client.__class__(app_client.app)
    assert anon.get("/app/dispatch").status_code == 401
    assert anon.post("/app/dispatch/book", data=slot).status_code == 401
    with db.session() as s:
        assert s.scalar(select(ScheduleItem).where(
            ScheduleItem.ext_id == slot["job_id"])) is None


def test_two_dispatchers_booking_at_once_get_one_job(db, app_client, make_token) -> None:
    import threading

    r = _board(db, app_client, make_token, users="u1", duration="60", tz="America/Chicago",
               **{"from": "2026-11-30T08:00", "to": "2026-11-30T09:00"})
    slot = forms(r.text, "/app/dispatch/book")[0]
    other = app_client.__class__(app_client.app)
    sign_in(other, make_token("admin"), {"role": "dispatcher", "name": "Max"})
    other_page = other.get("/app/dispatch", params={
        "week": WEEK, "users": "u1", "duration": "60", "tz": "America/Chicago",
        "from": "2026-11-30T08:00", "to": "2026-11-30T09:00"}).text
    other_slot = forms(other_page, "/app/dispatch/book")[0]
    assert slot["start"] == other_slot["start"] and slot["job_id"] != other_slot["job_id"]
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def post(client, data) -> None:  # type: ignore[no-untyped-def]
        barrier.wait()
        statuses.append(client.post("/app/dispatch/book", data=data,
                                    follow_redirects=False).status_code)

    threads = [threading.Thread(target=post, args=(app_client, slot)),
               threading.Thread(target=post, args=(other, other_slot))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [303, 409]
    with db.session() as s:
        jobs = list(s.scalars(select(ScheduleItem.ext_id).where(
            ScheduleItem.kind == "job", ScheduleItem.ext_id != "j1")))
    assert len(jobs) == 1
