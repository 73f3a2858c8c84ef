"""The sync window slides: CalDAV events keep their iCalendar text (``source``) and the
connector's ``expand`` computes their occurrences for a later window without a request,
with the parsing and bounds of a pull. Objects are real Radicale objects."""

from __future__ import annotations

import datetime as dt

import pytest

from calsync.errors import SyncError
from calsync.sync.connector import Occurrence, Window
from tests.caldav_servers import (  # noqa: F401 - fixtures used by name
    DavServer,
    dav_server,
    radicale_server,
)
from tests.test_caldav_connector import connector, job, put_external

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 12, 1, tzinfo=UTC)
FIRST = Window(NOW - dt.timedelta(days=31), NOW + dt.timedelta(days=365))
LATER = Window(FIRST.start + dt.timedelta(days=180), FIRST.end + dt.timedelta(days=180))


def test_weekly_series_without_end_is_expanded_for_a_later_window(
        radicale_server: DavServer) -> None:
    cal = radicale_server.make_calendar()
    rid = put_external(radicale_server, cal,
                       "SUMMARY:Physio\r\nDTSTART:20261104T170000Z\r\nDTEND:20261104T180000Z"
                       "\r\nRRULE:FREQ=WEEKLY\r\n")
    conn = connector(radicale_server)
    [event] = conn.changes(cal, None, FIRST).changed
    assert event.remote_id == rid and event.source is not None
    assert "RRULE:FREQ=WEEKLY" in event.source
    assert max(o.start for o in event.occurrences) < FIRST.end
    later = conn.expand(event.source, LATER)
    beyond = [o for o in later if o.start >= FIRST.end]
    assert beyond, "occurrences that only fall inside the later window"
    assert beyond[0] == Occurrence(dt.datetime(2027, 12, 1, 17, tzinfo=UTC),
                                   dt.datetime(2027, 12, 1, 18, tzinfo=UTC))
    assert all(LATER.start <= o.start < LATER.end for o in later)
    assert all(b.start - a.start == dt.timedelta(days=7) for a, b in zip(later, later[1:]))
    assert len(later) == 56  # every Wednesday of the 396-day window
    conn.close()


def test_single_event_beyond_the_window_is_listed_and_busy_later(
        radicale_server: DavServer) -> None:
    """A full listing has no time-range: an event past the window's end is stored (no
    occurrences yet) and blocks its time once the window reaches it."""
    cal = radicale_server.make_calendar()
    put_external(radicale_server, cal, "SUMMARY:Wedding\r\nDTSTART:20280315T140000Z\r\n"
                                       "DTEND:20280315T220000Z\r\n")
    conn = connector(radicale_server)
    [event] = conn.changes(cal, None, FIRST).changed
    assert event.occurrences == [] and event.source is not None
    assert conn.expand(event.source, LATER) == [
        Occurrence(dt.datetime(2028, 3, 15, 14, tzinfo=UTC),
                   dt.datetime(2028, 3, 15, 22, tzinfo=UTC))]
    conn.close()


def test_overrides_and_exdates_hold_in_a_later_window(radicale_server: DavServer) -> None:
    cal = radicale_server.make_calendar()
    body = ("SUMMARY:Standup\r\nDTSTART;TZID=America/Chicago:20280201T090000\r\n"
            "DTEND;TZID=America/Chicago:20280201T091500\r\nRRULE:FREQ=DAILY;COUNT=4\r\n"
            "EXDATE;TZID=America/Chicago:20280202T090000\r\n")
    override = ("BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20261101T000000Z\r\n"
                "RECURRENCE-ID;TZID=America/Chicago:20280203T090000\r\n"
                "DTSTART;TZID=America/Chicago:20280203T110000\r\n"
                "DTEND;TZID=America/Chicago:20280203T111500\r\nSUMMARY:Moved\r\n"
                "END:VEVENT\r\n")
    rid = put_external(radicale_server, cal, body)
    uid = rid.rsplit("/", 1)[-1].removesuffix(".ics")
    ics = radicale_server.get(f"{cal}{uid}.ics").text
    ics = ics.replace("END:VCALENDAR", override.format(uid=uid) + "END:VCALENDAR")
    assert radicale_server.put(f"{cal}{uid}.ics", ics).status_code in (201, 204)
    conn = connector(radicale_server)
    [event] = conn.changes(cal, None, FIRST).changed
    assert event.occurrences == []
    assert event.source is not None
    starts = [o.start for o in conn.expand(event.source, LATER)]
    assert starts == [dt.datetime(2028, 2, 1, 15, tzinfo=UTC),
                      dt.datetime(2028, 2, 3, 17, tzinfo=UTC),
                      dt.datetime(2028, 2, 4, 15, tzinfo=UTC)]
    conn.close()


def test_calsyncs_own_copies_carry_no_source(dav_server: DavServer) -> None:
    cal = dav_server.make_calendar()
    conn = connector(dav_server)
    made = conn.create(cal, job())
    assert made.source is None
    [listed] = conn.changes(cal, None, FIRST).changed
    assert listed.calsync_key == "job-j1" and listed.source is None
    conn.close()


def test_expansion_is_bounded_as_in_a_pull(radicale_server: DavServer) -> None:
    conn = connector(radicale_server)
    hourly = ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\nBEGIN:VEVENT\r\nUID:h@x\r\n"
              "DTSTAMP:20261101T000000Z\r\nDTSTART:20261201T000000Z\r\n"
              "DTEND:20261201T001000Z\r\nRRULE:FREQ=HOURLY\r\nSUMMARY:Pill\r\nEND:VEVENT\r\n"
              "END:VCALENDAR\r\n")
    assert len(conn.expand(hourly, LATER)) == conn.parse_options.max_occurrences
    minutely = hourly.replace("FREQ=HOURLY", "FREQ=MINUTELY").replace("20261201T00", "19900101T00")
    with pytest.raises(SyncError, match=r"VEVENT UID='h@x': property RRULE: FREQ=MINUTELY"):
        conn.expand(minutely, LATER)
    conn.close()


def test_a_source_that_no_longer_reads_raises_a_reason_without_its_text(
        radicale_server: DavServer) -> None:
    conn = connector(radicale_server)
    broken = ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\nBEGIN:VEVENT\r\nUID:b@x\r\n"
              "DTSTAMP:20261101T000000Z\r\nSUMMARY:Divorce lawyer\r\n"
              "DTSTART:20270101T100000Z\r\nRRULE:FREQ=SOMETIMES\r\nEND:VEVENT\r\n"
              "END:VCALENDAR\r\n")
    with pytest.raises(SyncError) as info:
        conn.expand(broken, LATER)
    assert "VEVENT UID='b@x': property RRULE" in str(info.value)
    assert "Divorce" not in str(info.value)
    assert conn.expand("BEGIN:VCALENDAR\r\nBEGIN:VTODO\r\nUID:t\r\nEND:VTODO\r\n"
                       "END:VCALENDAR\r\n", LATER) == []
    conn.close()
