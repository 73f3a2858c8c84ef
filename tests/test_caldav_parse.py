"""The pure ICS normaliser the CalDAV connector uses (calsync.ical.parse) and its renderer."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from calsync.sync.connector import Occurrence, OutgoingEvent, RemoteEvent, Window
from calsync.ical.parse import CalendarParse, ParseOptions, parse_calendar, parse_resource
from calsync_caldav.render import render_event

UTC = dt.timezone.utc
CHI = ZoneInfo("America/Chicago")
WINDOW = Window(dt.datetime(2026, 1, 1, tzinfo=UTC), dt.datetime(2027, 1, 1, tzinfo=UTC))
OPTS = ParseOptions(default_tz=CHI, owner_emails=frozenset({"me@example.com"}))


def cal(*events: str, extra: str = "") -> str:
    body = "".join(f"BEGIN:VEVENT\r\n{e}END:VEVENT\r\n" for e in events)
    return f"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\n{extra}{body}END:VCALENDAR\r\n"


def one(text: str, options: ParseOptions = OPTS,
        window: Window = WINDOW) -> tuple[RemoteEvent, CalendarParse]:
    parsed = parse_calendar(text, window, options)
    assert not parsed.problems, parsed.problems
    assert len(parsed.events) == 1
    return parsed.events[0], parsed


def at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(("props", "busy"), [
    ("", "busy"),
    ("TRANSP:TRANSPARENT\r\n", "free"),
    ("TRANSP:OPAQUE\r\n", "busy"),
    ("X-MICROSOFT-CDO-BUSYSTATUS:FREE\r\n", "free"),
    ("X-MICROSOFT-CDO-BUSYSTATUS:TENTATIVE\r\n", "tentative"),
    ("X-MICROSOFT-CDO-BUSYSTATUS:OOF\r\n", "oof"),
    ("X-MICROSOFT-CDO-BUSYSTATUS:BUSY\r\nTRANSP:TRANSPARENT\r\n", "busy"),
    ("X-MICROSOFT-CDO-BUSYSTATUS:WORKINGELSEWHERE\r\n", "workingElsewhere"),
])
def test_busy_status(props: str, busy: str) -> None:
    event, _ = one(cal(f"UID:a\r\nDTSTART:20260301T100000Z\r\nDTEND:20260301T110000Z\r\n{props}"))
    assert event.busy == busy


@pytest.mark.parametrize(("props", "status", "private"), [
    ("STATUS:CANCELLED\r\n", "cancelled", False),
    ("STATUS:Tentative\r\nCLASS:PRIVATE\r\n", "tentative", True),
    ("STATUS:CONFIRMED\r\nCLASS:CONFIDENTIAL\r\n", "confirmed", True),
    ("CLASS:PUBLIC\r\n", "confirmed", False),
])
def test_status_and_class(props: str, status: str, private: bool) -> None:
    event, _ = one(cal(f"UID:a\r\nDTSTART:20260301T100000Z\r\n{props}"))
    assert (event.status, event.private) == (status, private)


@pytest.mark.parametrize(("partstat", "response"), [
    ("DECLINED", "declined"), ("ACCEPTED", "accepted"), ("TENTATIVE", "tentative"),
    ("NEEDS-ACTION", None)])
def test_owner_partstat(partstat: str, response: str | None) -> None:
    event, _ = one(cal("UID:a\r\nDTSTART:20260301T100000Z\r\n"
                       f"ATTENDEE;PARTSTAT={partstat}:mailto:ME@example.com\r\n"
                       "ATTENDEE;PARTSTAT=ACCEPTED:mailto:you@example.com\r\n"))
    assert event.response == response


def test_someone_elses_decline_is_not_the_owners() -> None:
    event, _ = one(cal("UID:a\r\nDTSTART:20260301T100000Z\r\n"
                       "ATTENDEE;PARTSTAT=DECLINED:mailto:you@example.com\r\n"))
    assert event.response is None


def test_missing_dtend_follows_rfc5545() -> None:
    timed, _ = one(cal("UID:a\r\nDTSTART:20260301T100000Z\r\n"))
    assert timed.occurrences == [Occurrence(at(2026, 3, 1, 10), at(2026, 3, 1, 10))]
    day, _ = one(cal("UID:b\r\nDTSTART;VALUE=DATE:20260301\r\n"))
    assert day.all_day and day.end == dt.date(2026, 3, 2)
    # all-day spans are midnight to midnight in the user's zone (CST = UTC-6)
    assert day.occurrences == [Occurrence(at(2026, 3, 1, 6), at(2026, 3, 2, 6))]
    dur, _ = one(cal("UID:c\r\nDTSTART:20260301T100000Z\r\nDURATION:PT90M\r\n"))
    assert dur.occurrences == [Occurrence(at(2026, 3, 1, 10), at(2026, 3, 1, 11, 30))]


def test_floating_time_is_read_in_the_users_zone_and_said_so() -> None:
    event, parsed = one(cal("UID:a\r\nDTSTART:20260701T090000\r\nDTEND:20260701T100000\r\n"))
    assert event.occurrences == [Occurrence(at(2026, 7, 1, 14), at(2026, 7, 1, 15))]  # CDT
    assert any("floating" in n for n in parsed.notes)


@pytest.mark.parametrize(("tzid", "start_utc"), [
    ("W. Europe Standard Time", at(2026, 7, 1, 7)),  # Windows name -> Europe/Berlin (CEST)
    ("(UTC-05:00) Eastern Time (US & Canada)", at(2026, 7, 1, 13)),  # EDT
    ("GMT-05.00/-04.00", at(2026, 7, 1, 13)),
    ("UTC+11", at(2026, 6, 30, 22)),
    ("Made Up Zone", at(2026, 7, 1, 14)),  # unknown: floating in America/Chicago (CDT)
])
def test_windows_and_made_up_tzids(tzid: str, start_utc: dt.datetime) -> None:
    event, parsed = one(cal(f'UID:a\r\nDTSTART;TZID="{tzid}":20260701T090000\r\n'
                            f'DTEND;TZID="{tzid}":20260701T100000\r\n'))
    assert event.occurrences == [Occurrence(start_utc, start_utc + dt.timedelta(hours=1))]
    if tzid == "Made Up Zone":
        assert any("unknown TZID 'Made Up Zone'" in n and "floating" in n for n in parsed.notes)


def test_recurrence_rdate_exdate_override_and_cancelled_instance() -> None:
    text = cal(
        "UID:s\r\nSUMMARY:Series\r\nDTSTART;TZID=America/Chicago:20260302T090000\r\n"
        "DTEND;TZID=America/Chicago:20260302T100000\r\nRRULE:FREQ=WEEKLY;COUNT=4\r\n"
        "EXDATE;TZID=America/Chicago:20260309T090000\r\n"
        "RDATE;TZID=America/Chicago:20260304T120000\r\n",
        "UID:s\r\nRECURRENCE-ID;TZID=America/Chicago:20260316T090000\r\n"
        "DTSTART;TZID=America/Chicago:20260316T150000\r\n"
        "DTEND;TZID=America/Chicago:20260316T160000\r\n",
        "UID:s\r\nRECURRENCE-ID;TZID=America/Chicago:20260323T090000\r\n"
        "DTSTART;TZID=America/Chicago:20260323T090000\r\n"
        "DTEND;TZID=America/Chicago:20260323T100000\r\nSTATUS:CANCELLED\r\n")
    event, _ = one(text)
    assert event.recurring and event.summary == "Series" and event.uid == "s"
    # 2026-03-08 DST starts in Chicago: CST (-6) before, CDT (-5) after
    assert event.occurrences == [
        Occurrence(at(2026, 3, 2, 15), at(2026, 3, 2, 16)),
        Occurrence(at(2026, 3, 4, 18), at(2026, 3, 4, 19)),
        Occurrence(at(2026, 3, 16, 20), at(2026, 3, 16, 21)),
    ]


def test_expansion_is_bounded() -> None:
    text = cal("UID:d\r\nDTSTART:20260101T100000Z\r\nDTEND:20260101T110000Z\r\n"
               "RRULE:FREQ=DAILY\r\n")
    event, _ = one(text, ParseOptions(default_tz=CHI, max_occurrences=10))
    assert len(event.occurrences) == 10
    event, _ = one(text)
    assert len(event.occurrences) == 365


def test_vtodo_only_object_is_not_an_event() -> None:
    text = ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VTODO\r\nUID:t\r\n"
            "SUMMARY:milk\r\nEND:VTODO\r\nEND:VCALENDAR\r\n")
    out = parse_resource(text, "/c/t.ics", '"1"', WINDOW, OPTS)
    assert out.event is None and out.quarantined is None


@pytest.mark.parametrize(("body", "prop"), [
    ("DTSTART:20260301T100000Z\r\nDTEND:None\r\n", "DTEND"),
    ("DTSTART:Next Year\r\n", "DTSTART"),
    ("SUMMARY:no start\r\n", "DTSTART"),
    ("DTSTART:20260301T100000Z\r\nDURATION:PT1W\r\n", "DURATION"),
    ("DTSTART;VALUE=DATE:20260301\r\nDTEND:20260302T100000Z\r\n", "DTEND"),
])
def test_malformed_event_is_quarantined_with_the_property(body: str, prop: str) -> None:
    out = parse_resource(cal(f"UID:bad\r\n{body}"), "/c/bad.ics", '"1"', WINDOW, OPTS)
    assert out.event is None and out.quarantined is not None
    assert out.quarantined.remote_id == "/c/bad.ics"
    assert f"property {prop}" in out.quarantined.reason and "UID='bad'" in out.quarantined.reason


def test_garbage_is_quarantined() -> None:
    out = parse_resource(b"\xff\xfe not a calendar", "/c/x.ics", None, WINDOW, OPTS)
    assert out.quarantined is not None and out.event is None


def test_calsync_key_round_trips_through_render() -> None:
    outgoing = OutgoingEvent(
        key="block-b1", uid="calsync-block-b1@example.com", summary="Training; room 2, east",
        start=dt.datetime(2026, 11, 25, 13, tzinfo=CHI),
        end=dt.datetime(2026, 11, 25, 15, tzinfo=CHI), all_day=False, tzid="America/Chicago",
        description="Bring laptop\nand badge", location="HQ", categories=("blocked",),
        status="tentative", sequence=3, busy="free")
    text = render_event(outgoing, at(2026, 11, 20))
    assert "BEGIN:VTIMEZONE\r\nTZID:America/Chicago" in text
    assert "DTSTART;TZID=America/Chicago:20261125T130000" in text
    assert "SEQUENCE:3" in text and "TRANSP:TRANSPARENT" in text
    event, _ = one(text)
    assert event.calsync_key == "block-b1" and event.uid == outgoing.uid
    assert event.summary == outgoing.summary and event.description == outgoing.description
    assert event.location == "HQ" and event.status == "tentative" and event.busy == "free"
    assert event.occurrences == [Occurrence(at(2026, 11, 25, 19), at(2026, 11, 25, 21))]


def test_sub_daily_rule_from_long_ago_is_quarantined_not_expanded() -> None:
    text = cal("UID:m\r\nDTSTART:19900101T000000Z\r\nDTEND:19900101T000100Z\r\n"
               "RRULE:FREQ=MINUTELY\r\n")
    out = parse_resource(text, "/c/m.ics", None, WINDOW, OPTS)
    assert out.quarantined is not None
    assert "property RRULE: FREQ=MINUTELY" in out.quarantined.reason
    hourly, _ = one(cal("UID:h\r\nDTSTART:20260301T000000Z\r\nDTEND:20260301T003000Z\r\n"
                        "RRULE:FREQ=HOURLY;COUNT=5\r\n"))
    assert [o.start for o in hourly.occurrences] == [at(2026, 3, 1, h) for h in range(5)]
    ancient, _ = one(cal("UID:d\r\nDTSTART:19000101T090000Z\r\nDTEND:19000101T100000Z\r\n"
                         "RRULE:FREQ=DAILY\r\n"))
    assert len(ancient.occurrences) == 365 and ancient.occurrences[0].start == at(2026, 1, 1, 9)


# -- all-day events of zero length (RFC 5545 3.6.1: a date lasts its day) ------------------

def test_all_day_dtend_equal_to_dtstart_lasts_one_day() -> None:
    event, parsed = one(cal("UID:z\r\nDTSTART;VALUE=DATE:20260301\r\n"
                            "DTEND;VALUE=DATE:20260301\r\nSUMMARY:Holiday\r\n"))
    assert event.all_day and event.start == dt.date(2026, 3, 1)
    assert event.end == dt.date(2026, 3, 2)
    assert event.occurrences == [Occurrence(at(2026, 3, 1, 6), at(2026, 3, 2, 6))]
    assert any("DTEND equal to DTSTART read as one day" in n for n in parsed.notes)


def test_recurring_zero_length_all_day_event_and_its_override_last_one_day() -> None:
    event, _ = one(cal("UID:w\r\nDTSTART;VALUE=DATE:20260302\r\nDTEND;VALUE=DATE:20260302\r\n"
                       "RRULE:FREQ=WEEKLY;COUNT=3\r\n",
                       "UID:w\r\nRECURRENCE-ID;VALUE=DATE:20260309\r\n"
                       "DTSTART;VALUE=DATE:20260310\r\nDTEND;VALUE=DATE:20260310\r\n"))
    assert event.occurrences == [Occurrence(at(2026, 3, 2, 6), at(2026, 3, 3, 6)),
                                 Occurrence(at(2026, 3, 10, 5), at(2026, 3, 11, 5)),
                                 Occurrence(at(2026, 3, 16, 5), at(2026, 3, 17, 5))]


def test_recurring_all_day_event_without_dtend_lasts_one_day_each() -> None:
    event, _ = one(cal("UID:n\r\nDTSTART;VALUE=DATE:20260302\r\nRRULE:FREQ=DAILY;COUNT=2\r\n"))
    assert event.occurrences == [Occurrence(at(2026, 3, 2, 6), at(2026, 3, 3, 6)),
                                 Occurrence(at(2026, 3, 3, 6), at(2026, 3, 4, 6))]


def test_zero_length_timed_event_stays_an_instant() -> None:
    event, _ = one(cal("UID:i\r\nDTSTART:20260301T100000Z\r\nDTEND:20260301T100000Z\r\n"))
    assert event.occurrences == [Occurrence(at(2026, 3, 1, 10), at(2026, 3, 1, 10))]


# -- quarantine reasons: component and property, never the event's text ----------------

PRIVATE = ("SUMMARY:Divorce lawyer Smith\r\nLOCATION:12 Hidden Lane\\, Springfield\r\n"
           "DESCRIPTION:Bring the custody papers\\nand the gate code 4321\r\n"
           "ORGANIZER;CN=Jane Secretperson:mailto:jane.secret@example.org\r\n"
           "ATTENDEE;CN=Bob Hiddenname:mailto:bob.hidden@example.org\r\n")
LEAKS = ("Divorce", "Hidden", "custody", "4321", "Secretperson", "jane.secret", "Hiddenname",
         "bob.hidden", "Springfield")


@pytest.mark.parametrize(("body", "prop"), [
    ("DTSTART:20260301T100000Z\r\nDTSTART:20260302T100000Z\r\n", "DTSTART"),  # a list
    ("DTSTART:20260301T100000Z\r\nDTEND:20260301T110000Z\r\nDTEND:20260301T120000Z\r\n",
     "DTEND"),
    ("DTSTART;VALUE=DATE,DATE-TIME:20260301\r\n", "DTSTART"),  # a parameter list
    ("DTSTART:20260301T100000Z\r\nRRULE:FREQ=SOMETIMES\r\n", "RRULE"),
    ("DTSTART:20260301T100000Z\r\nRRULE:FREQ=DAILY,WEEKLY\r\n", "RRULE"),
    ("DTSTART:20260301T100000Z\r\nRRULE:FREQ=WEEKLY;BYDAY=XX\r\n", "RRULE"),
    ("DTSTART;TZID=Europe/Berlin,Europe/Paris:20260301T100000\r\n", "DTSTART"),
    ("DTSTART:Divorce lawyer Smith\r\n", "DTSTART"),  # the summary's words in a date
    ("DTSTART:20260301T100000Z\r\nRRULE:FREQ=DAILY;COUNT=3\r\n"
     "EXDATE:custody papers\r\n", "EXDATE"),
    ("DTSTART:20260301T100000Z\r\nDURATION:the custody hour\r\n", "DURATION"),
])
def test_quarantine_reason_names_component_and_property_not_the_text(body: str,
                                                                      prop: str) -> None:
    out = parse_resource(cal(f"UID:abc@x\r\n{PRIVATE}{body}"), "/c/bad.ics", '"1"', WINDOW,
                         OPTS)
    assert out.event is None and out.quarantined is not None
    reason = out.quarantined.reason
    assert reason.startswith(f"VEVENT UID='abc@x': property {prop}"), reason
    assert not [word for word in LEAKS if word in reason], reason
    assert "\n" not in reason and len(reason) < 400


def test_unknown_tzid_is_read_as_floating_and_the_note_names_it_without_text() -> None:
    out = parse_resource(cal(f"UID:abc@x\r\n{PRIVATE}DTSTART;TZID=Mars/Olympus:20260301T100000"
                             "\r\nDTEND;TZID=Mars/Olympus:20260301T110000\r\n"),
                         "/c/tz.ics", '"1"', WINDOW, OPTS)
    assert out.event is not None and out.event.occurrences == [
        Occurrence(at(2026, 3, 1, 16), at(2026, 3, 1, 17))]  # floating: the user's zone
    assert any("VEVENT UID='abc@x': unknown TZID 'Mars/Olympus'" in n for n in out.notes)
    assert not [w for n in out.notes for w in LEAKS if w in n]


def test_broken_lines_inside_the_text_never_reach_notes() -> None:
    """A description whose continuation lines lost their fold: icalendar reports each as a
    line it cannot parse, quoting it; the note says a line was skipped, not what it said."""
    text = cal(f"UID:abc@x\r\n{PRIVATE}DTSTART:20260301T100000Z\r\n"
               "DESCRIPTION:first line\r\nthe custody hearing is on Monday\r\n"
               "Divorce lawyer Smith will call\r\n")
    out = parse_resource(text, "/c/fold.ics", '"1"', WINDOW, OPTS)
    assert out.event is not None
    assert out.notes and not [w for n in out.notes for w in LEAKS if w in n], out.notes


def test_a_file_icalendar_refuses_whole_names_the_line_at_fault() -> None:
    from calsync.ical.parse import unreadable_reason

    text = cal(f"UID:abc@x\r\n{PRIVATE}DTSTART;VALUE=DATE,DATE-TIME:20260301\r\n")
    try:
        import icalendar

        icalendar.Calendar.from_ical(text)
    except Exception as exc:  # noqa: BLE001 - what icalendar raises for the whole file
        reason = unreadable_reason(exc, text)
    else:
        pytest.fail("icalendar accepted the file")
    assert reason.startswith("VEVENT UID='abc@x': property DTSTART: "), reason
    assert not [w for w in LEAKS if w in reason]
