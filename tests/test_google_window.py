"""A Google sync token from an events.list with timeMin/timeMax stays bound to that range
(developers.google.com/calendar/api/v3/reference/events/list: the token's listing keeps
the first request's parameters; timeMin/timeMax may not be sent with it): an incremental
pull does not report an event created later outside the range, even when the caller's
window has slid past it; a new full listing with the new window does. Deletions inside the
range arrive as ``status: cancelled``. Through the real google-api-python-client against
the emulator."""

from __future__ import annotations

import datetime as dt

import pytest

from calsync.sync.connector import Window, load_connector_factory
from calsync_google import GoogleConnector
from tests.emulators.google import GoogleEmulator, google_emulator_fixture, signed_in_context

UTC = dt.timezone.utc
CAL = "tech@example.com"
FIRST = Window(dt.datetime(2026, 11, 1, tzinfo=UTC), dt.datetime(2027, 3, 1, tzinfo=UTC))
# three months later the sync window has slid forward
LATER = Window(dt.datetime(2027, 2, 1, tzinfo=UTC), dt.datetime(2027, 6, 1, tzinfo=UTC))

google_emulator = google_emulator_fixture()


@pytest.fixture
def em(google_emulator: GoogleEmulator) -> GoogleEmulator:
    return google_emulator


def connect(em: GoogleEmulator) -> GoogleConnector:
    connector = load_connector_factory("google").connect(
        signed_in_context(em, CAL, sleep=lambda _s: None))
    assert isinstance(connector, GoogleConnector)
    return connector


def at(month: int, day: int, year: int = 2027) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime(year, month, day, 15, tzinfo=UTC)
    return start, start + dt.timedelta(hours=1)


def test_a_sync_token_reports_only_the_range_of_its_first_listing(em: GoogleEmulator) -> None:
    c = connect(em)
    kept = em.put_busy(CAL, *at(1, 10), summary="In the first window")
    token = c.changes(CAL, None, FIRST).token
    beyond = em.put_busy(CAL, *at(5, 12), summary="Enters the window in May")
    inside = em.put_busy(CAL, *at(2, 15), summary="Inside both")
    em.remove_event(CAL, kept["id"])
    # the caller passes today's (slid) window, yet the token stays bound to FIRST
    incremental = c.changes(CAL, token, LATER)
    assert {e.remote_id for e in incremental.changed} == {inside["id"]}
    assert incremental.deleted == [kept["id"]] and not incremental.full
    # a new full listing with the new window is what brings the May event in
    full = c.changes(CAL, None, LATER)
    assert full.full and {e.remote_id for e in full.changed} == {inside["id"], beyond["id"]}
    may = next(e for e in full.changed if e.remote_id == beyond["id"])
    assert may.occurrences[0].start == at(5, 12)[0]


def test_an_event_moved_out_of_the_range_is_still_reported(em: GoogleEmulator) -> None:
    c = connect(em)
    moved = em.put_busy(CAL, *at(1, 10))
    token = c.changes(CAL, None, FIRST).token
    em.put_event(CAL, {**moved, "start": {"dateTime": at(5, 3)[0].isoformat()},
                       "end": {"dateTime": at(5, 3)[1].isoformat()}})
    incremental = c.changes(CAL, token, FIRST)
    [event] = incremental.changed
    assert event.remote_id == moved["id"] and event.occurrences == []  # outside the window


def test_an_unbounded_series_reports_instances_of_the_first_range_only(
        em: GoogleEmulator) -> None:
    c = connect(em)
    token = c.changes(CAL, None, FIRST).token
    em.put_event(CAL, {"summary": "Weekly", "recurrence": ["RRULE:FREQ=WEEKLY"],
                       "start": {"dateTime": "2027-02-22T15:00:00Z"},
                       "end": {"dateTime": "2027-02-22T16:00:00Z"}})
    incremental = c.changes(CAL, token, LATER)
    assert [e.occurrences[0].start for e in incremental.changed] == [
        dt.datetime(2027, 2, 22, 15, tzinfo=UTC)]  # the only instance before FIRST ends
    full = c.changes(CAL, None, LATER)
    assert len(full.changed) == 15  # Feb 22 .. May 31, weekly
