"""Graph calendarView/delta links stay bound to the range of the request that started them
(learn.microsoft.com/graph/api/event-delta: startDateTime/endDateTime are carried in the
delta link): an incremental round does not report an event created later outside that
range, even when the caller's window has slid past it; a new full listing with the new
window does. Deletions inside the range arrive as ``@removed``. Through the real
msal/httpx against the Graph emulator."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from calsync.config import load_settings
from calsync.sync.connector import Window
from calsync_outlook.connector import OutlookConnector
from tests.conftest import SECRET
from tests.emulators.graph import GraphEmulator, signed_in_connector

UTC = dt.timezone.utc
USER = "jane@contoso.com"
FIRST = Window(dt.datetime(2026, 11, 1, tzinfo=UTC), dt.datetime(2027, 3, 1, tzinfo=UTC))
# three months later the sync window has slid forward
LATER = Window(dt.datetime(2027, 2, 1, tzinfo=UTC), dt.datetime(2027, 6, 1, tzinfo=UTC))


@pytest.fixture
def em() -> Iterator[GraphEmulator]:
    with GraphEmulator() as emulator:
        emulator.add_mailbox(USER)
        yield emulator


@pytest.fixture
def connector(em: GraphEmulator) -> Iterator[OutlookConnector]:
    settings = em.configure(load_settings(env={"CALSYNC_SECRET_KEY": SECRET}))
    with signed_in_connector(em, settings) as c:
        yield c


def at(month: int, day: int, year: int = 2027) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime(year, month, day, 15, tzinfo=UTC)
    return start, start + dt.timedelta(hours=1)


def test_a_delta_link_reports_only_the_range_of_its_first_request(
        em: GraphEmulator, connector: OutlookConnector) -> None:
    cal = em.calendar_id(USER)
    kept = em.put_busy(USER, cal, *at(1, 10), subject="In the first window")
    token = connector.changes(cal, None, FIRST).token
    beyond = em.put_busy(USER, cal, *at(5, 12), subject="Enters the window in May")
    inside = em.put_busy(USER, cal, *at(2, 15), subject="Inside both")
    em.remove_event(USER, kept["id"])
    # the caller passes today's (slid) window, yet the delta link stays bound to FIRST
    incremental = connector.changes(cal, token, LATER)
    assert {e.remote_id for e in incremental.changed} == {inside["id"]}
    assert incremental.deleted == [kept["id"]] and not incremental.full
    assert beyond["id"] not in {e.remote_id for e in incremental.changed}
    # a new full listing with the new window is what brings the May event in
    full = connector.changes(cal, None, LATER)
    assert full.full and {e.remote_id for e in full.changed} == {inside["id"], beyond["id"]}
    may = next(e for e in full.changed if e.remote_id == beyond["id"])
    assert may.occurrences[0].start == at(5, 12)[0]


def test_an_event_moved_out_of_the_range_is_reported_removed(
        em: GraphEmulator, connector: OutlookConnector) -> None:
    cal = em.calendar_id(USER)
    moved = em.put_busy(USER, cal, *at(1, 10))
    token = connector.changes(cal, None, FIRST).token
    em.edit_event(USER, moved["id"], {
        "start": {"dateTime": "2027-05-03T15:00:00.0000000", "timeZone": "UTC"},
        "end": {"dateTime": "2027-05-03T16:00:00.0000000", "timeZone": "UTC"}})
    incremental = connector.changes(cal, token, FIRST)
    assert incremental.deleted == [moved["id"]] and incremental.changed == []
