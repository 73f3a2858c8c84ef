"""Reading whole feeds of the ics corpus (pure, no server): a feed icalendar refuses as a
whole because of one broken component keeps its other events (the broken one quarantined,
named without its text); a cut-off file and a page that is not iCalendar are refused."""

from __future__ import annotations

import datetime as dt

import pytest

from calsync.ical import ParseOptions
from calsync.sync.connector import Window
from calsync_ics.feed import FeedInvalid, read_feed
from tests.ics_feed_server import CORPUS

UTC = dt.timezone.utc
WINDOW = Window(dt.datetime(2000, 1, 1, tzinfo=UTC), dt.datetime(2030, 1, 1, tzinfo=UTC))


def test_one_broken_component_does_not_sink_the_feed() -> None:
    # Twinkle: a VTODO with a broken DTSTART makes icalendar refuse the file
    contents = read_feed((CORPUS / "ical4j__twinkle.ics").read_bytes(), WINDOW, ParseOptions())
    assert len(contents.events) == 7 and all(e.occurrences for e in contents.events)
    # khal: both events carry a VALARM icalendar cannot read: quarantined, named by UID
    raw = (CORPUS / "khal__non_dst_error.ics").read_bytes()
    contents = read_feed(raw, WINDOW, ParseOptions())
    assert contents.events == [] and len(contents.quarantined) == 2
    for q in contents.quarantined:
        assert "VALARM in VEVENT UID=" in q.reason
        assert "Utrecht" not in q.reason and "Bruxelles" not in q.reason


@pytest.mark.parametrize("name, message", [
    ("ical4j__13-MoonPhase.ics", "cut off"),
    ("icalendar__issue_53_description_parsed_properly.ics", "not an iCalendar feed"),
])
def test_a_cut_off_file_or_no_calendar_is_refused(name: str, message: str) -> None:
    with pytest.raises(FeedInvalid, match=message):
        read_feed((CORPUS / name).read_bytes(), WINDOW, ParseOptions())


def test_a_feed_cut_off_after_a_complete_event_is_refused_not_shortened() -> None:
    whole = (CORPUS / "node-ical__tripit-location-escaping.ics").read_text()
    cut = whole[:whole.index("END:VEVENT", len(whole) // 2) + len("END:VEVENT")]
    broken = cut + "\r\nBEGIN:VEVENT\r\nDTSTART:2011"  # the download stopped here
    with pytest.raises(FeedInvalid):
        read_feed(broken, WINDOW, ParseOptions())
