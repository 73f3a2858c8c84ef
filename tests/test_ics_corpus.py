"""Real-world iCalendar files (../shared/ics-corpus) through the CalDAV connector.

Every file goes through the pure parser (no crash; each event imported with sane instants
or quarantined with a reason naming the property), every file is also placed on a real
server as an external object and pulled through the connector, and a handful of
instants are checked against values worked out by hand from the files.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from calsync.config import Settings
from calsync.sync.connector import ConnectContext, Occurrence, Window, load_connector_factory
from calsync.ical.parse import ParseOptions, parse_calendar, parse_resource
from tests.caldav_servers import (  # noqa: F401 - fixtures used by name
    DavServer,
    dav_server,
    radicale_server,
    xandikos_server,
)
from tests.conftest import ICS_CORPUS, need

UTC = dt.timezone.utc
FILES = ICS_CORPUS / "files"
WINDOW = Window(dt.datetime(1990, 1, 1, tzinfo=UTC), dt.datetime(2031, 1, 1, tzinfo=UTC))
OPTIONS = ParseOptions(default_tz=UTC, max_occurrences=500)
CORPUS = sorted(FILES.glob("*.ics")) if FILES.is_dir() else []


def corpus_file(name: str) -> bytes:
    need(FILES.is_dir(), f"ICS corpus not found at {FILES}")
    return (FILES / name).read_bytes()


def at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def test_corpus_is_present() -> None:
    need(len(CORPUS) >= 60, f"ICS corpus not found (or incomplete) at {FILES}")


@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_every_file_is_imported_or_quarantined(path: Path) -> None:
    raw = path.read_bytes()
    parsed = parse_calendar(raw, WINDOW, OPTIONS, remote_id=path.name)
    has_vevent = re.search(rb"^BEGIN:VEVENT", raw, re.IGNORECASE | re.MULTILINE) is not None
    if has_vevent:
        assert parsed.events or parsed.problems, "a file with VEVENTs gave nothing"
    for event in parsed.events:
        assert event.remote_id == path.name
        assert event.start is not None and event.end is not None
        assert len(event.occurrences) <= OPTIONS.max_occurrences
        for occ in event.occurrences:
            assert occ.start.tzinfo is not None and occ.start.utcoffset() == dt.timedelta(0)
            assert occ.end >= occ.start
            assert occ.end > WINDOW.start and occ.start < WINDOW.end
        assert event.occurrences == sorted(event.occurrences, key=lambda o: (o.start, o.end))
    for problem in parsed.problems:
        assert "property " in problem or "not an iCalendar object" in problem \
            or "cannot be expanded" in problem, problem
    # the resource view never raises either: an event, a quarantine entry, or nothing
    resource = parse_resource(raw, f"/cal/{path.name}", '"e"', WINDOW, OPTIONS)
    if parsed.problems:
        assert resource.quarantined is not None and resource.quarantined.reason
    elif parsed.events:
        assert resource.event is not None


def test_every_file_through_a_real_server(dav_server: DavServer) -> None:
    """PUT every file as a user's object; pull it back through the connector."""
    need(bool(CORPUS), f"ICS corpus not found at {FILES}")
    cal = dav_server.make_calendar("corpus")
    accepted: dict[str, bytes] = {}
    for i, path in enumerate(CORPUS):
        raw = path.read_bytes()
        resp = dav_server.http.put(f"{cal}corpus-{i}.ics", content=raw,
                                   headers={"Content-Type": "text/calendar"})
        if resp.status_code in (201, 204):
            accepted[f"corpus-{i}.ics"] = raw
        else:  # the server refused it: that is the server's call, not a crash of ours
            assert resp.status_code in (400, 403, 409, 412, 415, 500), resp.status_code
    assert len(accepted) >= 20
    ctx = ConnectContext(provider="caldav", url=dav_server.base_url, account=dav_server.username,
                         credentials={"username": dav_server.username, "password": "x"},
                         settings=Settings())
    conn = load_connector_factory("caldav").connect(ctx)
    out = conn.changes(cal, None, WINDOW)
    got = {e.remote_id.rsplit("/", 1)[1]: e for e in out.changed}
    quarantined = {q.remote_id.rsplit("/", 1)[1]: q for q in out.quarantined}
    assert not set(got) & set(quarantined)
    for name, raw in accepted.items():
        stored = dav_server.get(f"{cal}{name}").content  # what the server keeps
        expected = parse_resource(stored, name, None, WINDOW, conn.parse_options)
        if expected.quarantined is not None:
            assert name in quarantined and quarantined[name].reason
        elif expected.event is not None:
            assert name in got, name
            assert got[name].occurrences == expected.event.occurrences
        else:
            assert name not in got and name not in quarantined
    conn.close()


def test_hand_checked_instants() -> None:
    # EXDATE-IN-UTC: America/Chicago without VTIMEZONE, weekly from Tue 2007-05-08 05:15 CDT,
    # EXDATE 05-15 and 05-22 10:15Z, UNTIL 2009-01-02 05:59Z: 87 Tuesdays - 2 = 85.
    parsed = parse_calendar(corpus_file("ical4j__EXDATE-IN-UTC.ics"), WINDOW, OPTIONS)
    (event,) = parsed.events
    occ = event.occurrences
    assert len(occ) == 85
    assert occ[0] == Occurrence(at(2007, 5, 8, 10, 15), at(2007, 5, 8, 11, 15))  # PT1H
    assert occ[1].start == at(2007, 5, 29, 10, 15)
    assert Occurrence(at(2007, 11, 6, 11, 15), at(2007, 11, 6, 12, 15)) in occ  # CST
    assert occ[-1].start == at(2008, 12, 30, 11, 15)

    # Windows TZID 'W. Australia Standard Time' VTIMEZONE, event itself in UTC.
    (event,) = parse_calendar(corpus_file("ical.net__XProperty2.ics"), WINDOW, OPTIONS).events
    assert event.occurrences == [Occurrence(at(2008, 1, 17, 23, 30), at(2008, 1, 18, 2, 30))]
    assert event.busy == "busy"

    # 'GMT-05.00/-04.00' (US Eastern's pair): Thu 2012-07-26 13:00 EDT = 17:00Z, every two
    # weeks until 2012-11-01 03:59:59Z -> 7 occurrences, the last 2012-10-18.
    (event,) = parse_calendar(corpus_file("khal__event_dtr_notz_untilz.ics"), WINDOW,
                              OPTIONS).events
    assert len(event.occurrences) == 7
    assert event.occurrences[0] == Occurrence(at(2012, 7, 26, 17), at(2012, 7, 26, 18))
    assert event.occurrences[-1].start == at(2012, 10, 18, 17)

    # Windows display names without VTIMEZONE (Outlook Web App).
    events = {e.summary.strip(): e for e in parse_calendar(  # type: ignore[union-attr]
        corpus_file("node-ical__Office-2012-owa.ics"), WINDOW, OPTIONS).events}
    assert events["TEST Syd"].occurrences[0] == Occurrence(at(2020, 10, 28, 2, 30),
                                                           at(2020, 10, 28, 4))  # AEDT +11
    assert events["TEST"].occurrences[0] == Occurrence(at(2020, 10, 28, 17, 30),
                                                       at(2020, 10, 28, 19))  # EDT -4
    assert events["TEST 3"].occurrences[0].start == at(2020, 11, 2, 18, 30)  # EST -5

    # Override listed before its master (Google): daily x3 from 2026-02-10 10:00 MST.
    (event,) = parse_calendar(corpus_file("node-ical__google-recurrence-order.ics"), WINDOW,
                              OPTIONS).events
    assert event.summary == "TEST RECURR 3" and event.recurring
    assert event.occurrences == [
        Occurrence(at(2026, 2, 10, 17), at(2026, 2, 10, 17, 30)),
        Occurrence(at(2026, 2, 11, 17, 30), at(2026, 2, 11, 18)),
        Occurrence(at(2026, 2, 12, 17), at(2026, 2, 12, 17, 30)),
    ]

    # Floating UNTIL on a New York DTSTART: local 2013-11-18 18:30 is included (9 Mondays).
    (event,) = parse_calendar(corpus_file("vobject__UntilRespectsTimezoneTest.ics"), WINDOW,
                              OPTIONS).events
    assert len(event.occurrences) == 9
    assert event.occurrences[-1] == Occurrence(at(2013, 11, 18, 23, 30), at(2013, 11, 19, 1, 30))

    # Apple: STATUS TENTATIVE / CANCELLED, Vancouver times.
    events = {e.summary: e for e in parse_calendar(
        corpus_file("node-ical__tentative-apple-calendar.ics"), WINDOW, OPTIONS).events}
    assert events["Tentative"].status == "tentative"
    assert events["Cancelled"].status == "cancelled"
    assert events["Confirmed"].occurrences == [Occurrence(at(2022, 7, 5, 16), at(2022, 7, 5, 17))]


@pytest.mark.parametrize(("name", "prop"), [
    ("ics-parser__issue-340.ics", "DTEND"),  # DTEND:None
    ("node-ical__test_date_duration.ics", "DURATION"),  # PT1W
    ("node-ical__ms_timezones.ics", "DTSTART"),  # one event with an empty DTSTART
])
def test_hand_checked_quarantine_reasons(name: str, prop: str) -> None:
    parsed = parse_calendar(corpus_file(name), WINDOW, OPTIONS)
    assert any(f"property {prop}" in p for p in parsed.problems), parsed.problems


# Lines whose values may show in a reason: the busy-time properties and identifiers.
_SHOWABLE = re.compile(r"^(DTSTART|DTEND|DURATION|RRULE|RDATE|EXDATE|RECURRENCE-ID|UID|TZID|"
                       r"BEGIN|END|DTSTAMP|CREATED|LAST-MODIFIED|TZOFFSET\w*|TRIGGER|"
                       r"X-WR-TIMEZONE|VERSION|PRODID|CALSCALE|METHOD|SEQUENCE|STATUS|TRANSP|"
                       r"CLASS|PRIORITY|GEO)\b", re.IGNORECASE)


def _private_fragments(raw: bytes) -> set[str]:
    """Text of the file that is not a busy-time property: every such line's value (and
    the line itself when it has no name), in pieces of 10 characters and more."""
    text = re.sub(r"\r?\n[ \t]", "", raw.decode("utf-8", "replace"))
    uids = [line[4:].strip() for line in text.splitlines() if line.upper().startswith("UID:")]
    out: set[str] = set()
    for line in text.splitlines():
        if not line.strip() or _SHOWABLE.match(line):
            continue
        named = re.match(r"^[A-Za-z0-9-]+[;:]", line) and ":" in line
        value = line.split(":", 1)[1] if named else line
        for piece in re.split(r"\\[nN]|[;,]", value):
            piece = piece.strip()
            if len(piece) >= 10 and not any(piece in uid for uid in uids):  # labels name UIDs
                out.add(piece)
    return out


@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_reasons_and_notes_name_the_place_not_the_text(path: Path) -> None:
    """Quarantine reasons and notes reach logs and error columns: they name the component
    and property, and carry no text of the event (summary, description, location,
    organizer, attendees, stray lines of a broken description)."""
    raw = path.read_bytes()
    resource = parse_resource(raw, f"/cal/{path.name}", '"e"', WINDOW, OPTIONS)
    parsed = parse_calendar(raw, WINDOW, OPTIONS, remote_id=path.name)
    said = [*parsed.problems, *parsed.notes, *resource.notes]
    if resource.quarantined is not None:
        said.append(resource.quarantined.reason)
    fragments = _private_fragments(raw)
    leaked = sorted({f for f in fragments for line in said if f in line})
    assert not leaked, (leaked, said)
    for problem in parsed.problems:
        if "no calendar component could be read" in problem:
            continue  # a file cut off before any component (ical4j 13-MoonPhase)
        assert re.match(r"^V[A-Z]+( in V[A-Z]+)?( UID='[^']*'| without UID)?"
                        r"( RECURRENCE-ID=\S+)?: property [A-Z-]+", problem), problem
