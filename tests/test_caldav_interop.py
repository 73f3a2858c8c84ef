"""Interoperability with another CalDAV client: the ``caldav`` library.

What calsync writes must be found by the server's own time-range search (so the server
understood the VTIMEZONE and the dates) and read by an independent client; what that
client writes must be pulled by calsync.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import caldav

from calsync.config import Settings
from calsync.sync.connector import (
    ConnectContext,
    Occurrence,
    OutgoingEvent,
    Window,
    load_connector_factory,
)
from tests.caldav_servers import (  # noqa: F401 - fixtures used by name
    DavServer,
    dav_server,
    radicale_server,
    xandikos_server,
)

UTC = dt.timezone.utc
CHI = ZoneInfo("America/Chicago")


def test_calsync_copies_are_found_by_server_side_time_range_search(
        dav_server: DavServer) -> None:
    cal = dav_server.make_calendar("interop")
    ctx = ConnectContext(provider="caldav", url=dav_server.base_url,
                         account=dav_server.username,
                         credentials={"username": dav_server.username, "password": "x"},
                         settings=Settings())
    conn = load_connector_factory("caldav").connect(ctx)
    conn.create(cal, OutgoingEvent(
        key="job-j1", uid="calsync-job-j1@example.com", summary="Install: Acme",
        start=dt.datetime(2026, 11, 24, 9, tzinfo=CHI),
        end=dt.datetime(2026, 11, 24, 11, tzinfo=CHI), all_day=False, tzid="America/Chicago"))
    conn.create(cal, OutgoingEvent(
        key="time-off-t1", uid="calsync-time-off-t1@example.com", summary="Time off",
        start=dt.date(2026, 12, 24), end=dt.date(2026, 12, 27), all_day=True,
        tzid="America/Chicago"))
    with caldav.DAVClient(url=dav_server.base_url, username=dav_server.username,
                          password="x") as client:
        calendar = client.calendar(url=cal)
        # 15:00-17:00 UTC is inside the job only if the server applied America/Chicago
        hits = calendar.search(start=dt.datetime(2026, 11, 24, 16, tzinfo=UTC),
                               end=dt.datetime(2026, 11, 24, 16, 30, tzinfo=UTC),
                               event=True, expand=False)
        assert [h.icalendar_component["X-CALSYNC-KEY"] for h in hits] == ["job-j1"]
        misses = calendar.search(start=dt.datetime(2026, 11, 24, 9, tzinfo=UTC),
                                 end=dt.datetime(2026, 11, 24, 11, tzinfo=UTC),
                                 event=True, expand=False)
        assert misses == []
        days = calendar.search(start=dt.datetime(2026, 12, 25, 12, tzinfo=UTC),
                               end=dt.datetime(2026, 12, 25, 13, tzinfo=UTC),
                               event=True, expand=False)
        component = days[0].icalendar_component
        assert str(component["SUMMARY"]) == "Time off"
        assert component["DTSTART"].dt == dt.date(2026, 12, 24)
    conn.close()


def test_events_written_by_another_client_are_pulled(dav_server: DavServer) -> None:
    cal = dav_server.make_calendar("interop")
    with caldav.DAVClient(url=dav_server.base_url, username=dav_server.username,
                          password="x") as client:
        client.calendar(url=cal).save_event(
            dtstart=dt.datetime(2026, 11, 26, 12, tzinfo=UTC),
            dtend=dt.datetime(2026, 11, 26, 13, tzinfo=UTC),
            summary="Lunch with Sam", rrule={"FREQ": "DAILY", "COUNT": 3})
    ctx = ConnectContext(provider="caldav", url=dav_server.base_url,
                         account=dav_server.username,
                         credentials={"username": dav_server.username, "password": "x"},
                         settings=Settings())
    conn = load_connector_factory("caldav").connect(ctx)
    window = Window(dt.datetime(2026, 11, 1, tzinfo=UTC), dt.datetime(2026, 12, 1, tzinfo=UTC))
    (event,) = conn.changes(cal, None, window).changed
    assert event.summary == "Lunch with Sam" and event.calsync_key is None and event.recurring
    assert event.occurrences == [
        Occurrence(dt.datetime(2026, 11, d, 12, tzinfo=UTC),
                   dt.datetime(2026, 11, d, 13, tzinfo=UTC)) for d in (26, 27, 28)]
    conn.close()
