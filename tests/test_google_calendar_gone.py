"""A Google calendar that was deleted (or unshared): events.list answers 404 notFound, the
connector raises CalendarGone naming the calendar and what to do, and the account's other
calendars go on syncing; a 410 stays an expired sync token (full resync), not a gone
calendar. Through the real google-api-python-client against the emulator."""

from __future__ import annotations

import datetime as dt

import pytest

from calsync.errors import CalendarGone, SyncTokenInvalid
from calsync.sync.connector import Window, load_connector_factory
from calsync_google import GoogleConnector
from tests.emulators.google import GoogleEmulator, google_emulator_fixture, signed_in_context

UTC = dt.timezone.utc
CAL = "tech@example.com"
TEAM = "team@group.calendar.google.com"
WINDOW = Window(dt.datetime(2026, 11, 1, tzinfo=UTC), dt.datetime(2027, 11, 1, tzinfo=UTC))

google_emulator = google_emulator_fixture()


@pytest.fixture
def em(google_emulator: GoogleEmulator) -> GoogleEmulator:
    google_emulator.add_calendar(CAL, TEAM, "Team")
    return google_emulator


def connect(em: GoogleEmulator) -> GoogleConnector:
    connector = load_connector_factory("google").connect(
        signed_in_context(em, CAL, sleep=lambda _s: None))
    assert isinstance(connector, GoogleConnector)
    return connector


def busy(em: GoogleEmulator, cal: str, day: int) -> None:
    em.put_busy(cal, dt.datetime(2026, 11, day, 15, tzinfo=UTC),
                dt.datetime(2026, 11, day, 16, tzinfo=UTC), summary="Dentist")


def test_a_deleted_conflict_calendar_raises_calendar_gone_and_the_primary_goes_on(
        em: GoogleEmulator) -> None:
    c = connect(em)
    busy(em, CAL, 3)
    busy(em, TEAM, 4)
    tokens = {cal: c.changes(cal, None, WINDOW).token for cal in (CAL, TEAM)}
    em.remove_calendar(TEAM)
    for token in (tokens[TEAM], None):  # the stored sync token, and a full resync
        with pytest.raises(CalendarGone) as info:
            c.changes(TEAM, token, WINDOW)
        message = str(info.value)
        assert TEAM in message and CAL in message
        assert "choose another calendar" in message and "remove it" in message
        assert "Dentist" not in message and info.value.context["calendar_id"] == TEAM
    busy(em, CAL, 5)
    assert len(c.changes(CAL, tokens[CAL], WINDOW).changed) == 1
    assert [cal.id for cal in c.list_calendars()] == [CAL]


def test_calendars_delete_through_the_api_then_its_events_list_answers_404(
        em: GoogleEmulator) -> None:
    c = connect(em)
    token = c.changes(TEAM, None, WINDOW).token
    c.runner.run(c.api.calendars.delete(calendarId=TEAM), "delete calendar")
    with pytest.raises(CalendarGone):
        c.changes(TEAM, token, WINDOW)


def test_an_expired_sync_token_is_a_full_resync_not_a_gone_calendar(
        em: GoogleEmulator) -> None:
    c = connect(em)
    token = c.changes(TEAM, None, WINDOW).token
    em.invalidate_sync_tokens()
    with pytest.raises(SyncTokenInvalid):
        c.changes(TEAM, token, WINDOW)
    assert c.changes(TEAM, None, WINDOW).token
