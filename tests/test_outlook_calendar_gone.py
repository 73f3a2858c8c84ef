"""A calendar deleted in Outlook: its delta answers 404 ErrorItemNotFound and the connector
raises CalendarGone naming the calendar and what to do, while the connection's other
calendars go on syncing. Through the real msal/httpx against the Graph emulator."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from calsync.config import load_settings
from calsync.errors import CalendarGone, SyncError, SyncTokenInvalid
from calsync.sync.connector import Window
from calsync_outlook.connector import OutlookConnector
from tests.conftest import SECRET
from tests.emulators.graph import GraphEmulator, signed_in_connector

UTC = dt.timezone.utc
USER = "jane@contoso.com"
WINDOW = Window(dt.datetime(2026, 11, 1, tzinfo=UTC), dt.datetime(2027, 3, 1, tzinfo=UTC))


@pytest.fixture
def em() -> Iterator[GraphEmulator]:
    with GraphEmulator() as emulator:
        emulator.add_mailbox(USER, calendars=(("Calendar", True), ("Team", True)))
        yield emulator


@pytest.fixture
def connector(em: GraphEmulator) -> Iterator[OutlookConnector]:
    settings = em.configure(load_settings(env={"CALSYNC_SECRET_KEY": SECRET}))
    with signed_in_connector(em, settings) as c:
        yield c


def busy(em: GraphEmulator, cal: str, day: int) -> None:
    em.put_busy(USER, cal, dt.datetime(2026, 11, day, 15, tzinfo=UTC),
                dt.datetime(2026, 11, day, 16, tzinfo=UTC), subject="Dentist")


def test_a_deleted_conflict_calendar_raises_calendar_gone_and_the_primary_goes_on(
        em: GraphEmulator, connector: OutlookConnector) -> None:
    primary, team = em.calendar_id(USER), em.calendar_id(USER, "Team")
    busy(em, primary, 3)
    busy(em, team, 4)
    tokens = {cal: connector.changes(cal, None, WINDOW).token for cal in (primary, team)}
    em.remove_calendar(USER, team)
    for token in (tokens[team], None):  # the stored delta link, and a full resync
        with pytest.raises(CalendarGone) as info:
            connector.changes(team, token, WINDOW)
        message = str(info.value)
        assert team in message and USER in message
        assert "choose another calendar" in message and "remove it" in message
        assert "Dentist" not in message
        assert isinstance(info.value, SyncError) and info.value.context["calendar_id"] == team
    busy(em, primary, 5)
    assert len(connector.changes(primary, tokens[primary], WINDOW).changed) == 1


def test_deleting_a_calendar_through_graph_answers_404_for_its_delta(
        em: GraphEmulator, connector: OutlookConnector) -> None:
    team = em.calendar_id(USER, "Team")
    token = connector.changes(team, None, WINDOW).token
    assert token
    resp = connector.graph.request("DELETE", f"/me/calendars/{team}")
    assert resp.status == 204
    assert [c.name for c in connector.list_calendars()] == ["Calendar"]
    raw = connector.graph.request("GET", token)
    assert raw.status == 404 and raw.error_code() == "ErrorItemNotFound"
    with pytest.raises(CalendarGone):
        connector.changes(team, token, WINDOW)


def test_an_expired_delta_link_is_not_taken_for_a_gone_calendar(
        em: GraphEmulator, connector: OutlookConnector) -> None:
    primary = em.calendar_id(USER)
    token = connector.changes(primary, None, WINDOW).token
    em.expire_delta_tokens()
    with pytest.raises(SyncTokenInvalid):
        connector.changes(primary, token, WINDOW)
