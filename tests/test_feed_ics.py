"""Pure RFC 5545 text: escaping, folding on UTF-8 boundaries, dates, one VEVENT."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from calsync.feeds import ics

UTC = dt.timezone.utc


def _item(**over: object) -> SimpleNamespace:
    base = dict(kind="job", ext_id="j1", title="Fiber install", job_type="Install",
                account="Acme Corp", location="1 Main St, Springfield", notes="Gate; code",
                reason=None, status="scheduled", all_day=False,
                start_at=dt.datetime(2026, 11, 24, 15, 0, tzinfo=UTC),
                end_at=dt.datetime(2026, 11, 24, 17, 0, tzinfo=UTC), start_date=None,
                end_date=None, tzid="America/Chicago", sequence=3,
                created_at=dt.datetime(2026, 11, 1, 8, 0, tzinfo=UTC),
                updated_at=dt.datetime(2026, 11, 20, 8, 30, 5, tzinfo=UTC))
    base.update(over)
    return SimpleNamespace(**base)


@pytest.mark.parametrize("raw, escaped", [
    ("a,b;c\\d", "a\\,b\\;c\\\\d"),
    ("line1\nline2", "line1\\nline2"),
    ("crlf\r\nnext\rlast", "crlf\\nnext\\nlast"),
    ("tab\tkept", "tab\tkept"),
    ("bell\x07gone", "bellgone"),
    ("日本語 😀", "日本語 😀"),
])
def test_escape_text(raw: str, escaped: str) -> None:
    assert ics.escape_text(raw) == escaped


def test_fold_never_splits_a_character_and_keeps_75_octets() -> None:
    line = "SUMMARY:" + "😀日本" * 40
    folded = ics.fold_line(line)
    parts = folded.split("\r\n")
    assert len(parts) > 1
    assert all(len(p.encode()) <= 75 for p in parts)
    assert all(p.startswith(" ") for p in parts[1:])
    assert ics.unfold(folded) == line
    # each physical line is valid UTF-8 on its own (no character was cut)
    for p in parts:
        p.encode("utf-8").decode("utf-8")
    assert len(parts[0].encode()) >= 72  # filled up to the boundary, not folded early


def test_short_lines_are_not_folded() -> None:
    assert ics.fold_line("X" * 75) == "X" * 75
    assert ics.fold_line("X" * 76) == "X" * 75 + "\r\n X"


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=400))
def test_fold_roundtrip_property(value: str) -> None:
    line = "DESCRIPTION:" + ics.escape_text(value)
    folded = ics.fold_line(line)
    assert ics.unfold(folded) == line
    for part in folded.split("\r\n"):
        assert len(part.encode("utf-8")) <= 75


def test_render_event_fields() -> None:
    text = ics.render_event(_item(), "https://dispatch.example/jobs/{job_id}")
    lines = ics.unfold(text).split("\r\n")
    assert lines[0] == "BEGIN:VEVENT" and lines[-2] == "END:VEVENT" and lines[-1] == ""
    assert "UID:job-j1@calsync" in lines
    assert "DTSTAMP:20261120T083005Z" in lines
    assert "LAST-MODIFIED:20261120T083005Z" in lines
    assert "SEQUENCE:3" in lines
    assert "DTSTART;TZID=America/Chicago:20261124T090000" in lines
    assert "DTEND;TZID=America/Chicago:20261124T110000" in lines
    assert "SUMMARY:Install: Acme Corp" in lines
    assert "LOCATION:1 Main St\\, Springfield" in lines
    assert "DESCRIPTION:Gate\\; code\\n\\nhttps://dispatch.example/jobs/j1" in lines
    assert "URL:https://dispatch.example/jobs/j1" in lines
    assert "CATEGORIES:Job,Install" in lines
    assert "STATUS:CONFIRMED" in lines


def test_summaries_by_kind() -> None:
    assert ics.event_summary(_item(account=None)) == "Fiber install"
    assert ics.event_summary(_item(kind="time_off", reason="Vacation")) == "Time off: Vacation"
    assert ics.event_summary(_item(kind="time_off", reason=None)) == "Time off"
    assert ics.event_summary(_item(kind="block", title="Training")) == "Training"


def test_all_day_is_value_date() -> None:
    item = _item(kind="time_off", reason="Vacation", all_day=True,
                 start_date=dt.date(2026, 12, 24), end_date=dt.date(2026, 12, 27))
    lines = ics.render_event(item).split("\r\n")
    assert "DTSTART;VALUE=DATE:20261224" in lines and "DTEND;VALUE=DATE:20261227" in lines
    assert "CATEGORIES:Time off" in lines and not any(x.startswith("URL") for x in lines)


def test_second_pass_of_ambiguous_hour_is_written_in_utc() -> None:
    # 2027-11-07 01:30 happens twice in Chicago; the CST one (07:30Z) cannot be named by
    # wall-clock time plus TZID, so it is written as UTC; the CDT one keeps its TZID.
    first = dt.datetime(2027, 11, 7, 6, 30, tzinfo=UTC)
    second = dt.datetime(2027, 11, 7, 7, 30, tzinfo=UTC)
    assert ics.datetime_property("DTSTART", first, "America/Chicago") == \
        "DTSTART;TZID=America/Chicago:20271107T013000\r\n"
    assert ics.datetime_property("DTSTART", second, "America/Chicago") == \
        "DTSTART:20271107T073000Z\r\n"
    assert ics.datetime_property("DTSTART", second, "UTC") == "DTSTART:20271107T073000Z\r\n"


def test_fragment_key_moves_with_content_sequence_and_settings() -> None:
    h = "a" * 64
    k = ics.fragment_key(h, 1, ics.settings_digest(""))
    assert len(k) <= 80
    assert k != ics.fragment_key("b" * 64, 1, ics.settings_digest(""))
    assert k != ics.fragment_key(h, 2, ics.settings_digest(""))
    assert k != ics.fragment_key(h, 1, ics.settings_digest("https://x/{job_id}"))


def test_vtimezone_covers_years_and_is_cached() -> None:
    text = ics.vtimezone("Europe/Berlin", 2025, 2029)
    assert text.startswith("BEGIN:VTIMEZONE\r\nTZID:Europe/Berlin\r\n")
    assert "20270328T0" in text and "20271031T0" in text  # 2027's changes are listed
    assert "2029" not in text.replace("2029-01-01", "")  # nothing past the range
    assert ics.vtimezone("Europe/Berlin", 2025, 2029) is text
