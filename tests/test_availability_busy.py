"""The pure busy model: working hours across DST, busy rules, merging, slots, staleness."""

from __future__ import annotations

import datetime as dt

import pytest

from calsync.availability.busy import (
    CalendarHealth,
    ExternalEntry,
    ScheduleEntry,
    UserBusyInput,
    UserProfile,
    busy_blocks,
    busy_intervals,
    complement,
    external_is_busy,
    free_slots,
    merge,
    outside_hours,
    stale_calendars,
    working_intervals,
)

UTC = dt.timezone.utc
H = dt.timedelta(hours=1)


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def total(intervals: list[tuple[dt.datetime, dt.datetime]]) -> dt.timedelta:
    return sum((e - s for s, e in intervals), dt.timedelta())


ALL_WEEK_9_TO_5 = {d: [["08:00", "17:00"]] for d in
                   ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}
ALL_DAY = {d: [["00:00", "24:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


def profile(hours: dict | None = None, tz: str = "America/Chicago",
            private: bool = True) -> UserProfile:
    return UserProfile("u1", "Jane", tz, hours if hours is not None else {}, private)


# --- working hours and DST ----------------------------------------------------------------

@pytest.mark.parametrize("tz, day, expected_start, expected_end", [
    # America/Chicago springs forward on Sunday 2026-03-08 (CST -6 -> CDT -5).
    ("America/Chicago", dt.date(2026, 3, 7), utc(2026, 3, 7, 14), utc(2026, 3, 7, 23)),
    ("America/Chicago", dt.date(2026, 3, 8), utc(2026, 3, 8, 13), utc(2026, 3, 8, 22)),
    # ... and falls back on Sunday 2026-11-01 (CDT -5 -> CST -6).
    ("America/Chicago", dt.date(2026, 10, 31), utc(2026, 10, 31, 13), utc(2026, 10, 31, 22)),
    ("America/Chicago", dt.date(2026, 11, 1), utc(2026, 11, 1, 14), utc(2026, 11, 1, 23)),
    # Europe/Berlin: forward on 2026-03-29 (+1 -> +2), back on 2026-10-25 (+2 -> +1).
    ("Europe/Berlin", dt.date(2026, 3, 28), utc(2026, 3, 28, 7), utc(2026, 3, 28, 16)),
    ("Europe/Berlin", dt.date(2026, 3, 29), utc(2026, 3, 29, 6), utc(2026, 3, 29, 15)),
    ("Europe/Berlin", dt.date(2026, 10, 25), utc(2026, 10, 25, 7), utc(2026, 10, 25, 16)),
])
def test_working_hours_follow_the_zone_on_dst_days(tz, day, expected_start, expected_end) -> None:
    start = utc(day.year, day.month, day.day) - 12 * H
    spans = working_intervals(ALL_WEEK_9_TO_5, tz, start, start + 48 * H)
    assert (expected_start, expected_end) in spans


@pytest.mark.parametrize("tz, day, hours", [
    ("America/Chicago", dt.date(2026, 3, 8), 23),
    ("America/Chicago", dt.date(2026, 11, 1), 25),
    ("America/Chicago", dt.date(2026, 11, 2), 24),
    ("Europe/Berlin", dt.date(2026, 3, 29), 23),
    ("Europe/Berlin", dt.date(2026, 10, 25), 25),
])
def test_a_whole_local_day_is_23_or_25_hours_on_dst_days(tz, day, hours) -> None:
    from zoneinfo import ZoneInfo

    z = ZoneInfo(tz)
    start = dt.datetime.combine(day, dt.time(), z).astimezone(UTC)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), z).astimezone(UTC)
    only_that_day = {["mon", "tue", "wed", "thu", "fri", "sat", "sun"][day.weekday()]:
                     [["00:00", "24:00"]]}
    spans = working_intervals(only_that_day, tz, start - 24 * H, end + 24 * H)
    assert spans == [(start, end)]
    assert total(spans) == hours * H


def test_span_across_the_spring_forward_gap_is_shorter_in_real_time() -> None:
    # 01:00-04:00 wall clock on 2026-03-08 in Chicago: 01:00 CST = 07:00Z, 04:00 CDT = 09:00Z.
    spans = working_intervals({"sun": [["01:00", "04:00"]]}, "America/Chicago",
                              utc(2026, 3, 8), utc(2026, 3, 9))
    assert spans == [(utc(2026, 3, 8, 7), utc(2026, 3, 8, 9))]


def test_span_starting_in_the_repeated_fall_back_hour_takes_its_first_occurrence() -> None:
    # 01:30 on 2026-11-01 in Chicago happens twice; the first (CDT, -5) is 06:30Z.
    spans = working_intervals({"sun": [["01:30", "03:00"]]}, "America/Chicago",
                              utc(2026, 11, 1), utc(2026, 11, 2))
    assert spans == [(utc(2026, 11, 1, 6, 30), utc(2026, 11, 1, 9))]


def test_missing_weekday_or_empty_list_means_not_working_and_empty_dict_means_no_limit() -> None:
    # 2026-11-23 is a Monday, 2026-11-24 a Tuesday, 2026-11-25 a Wednesday.
    hours = {"mon": [["08:00", "12:00"], ["13:00", "17:00"]], "tue": []}
    mon = working_intervals(hours, "America/Chicago", utc(2026, 11, 23, 6), utc(2026, 11, 24, 6))
    assert mon == [(utc(2026, 11, 23, 14), utc(2026, 11, 23, 18)),
                   (utc(2026, 11, 23, 19), utc(2026, 11, 23, 23))]
    assert working_intervals(hours, "America/Chicago", utc(2026, 11, 24, 6),
                             utc(2026, 11, 26, 6)) == []
    assert working_intervals({}, "America/Chicago", utc(2026, 11, 24), utc(2026, 11, 25)) == [
        (utc(2026, 11, 24), utc(2026, 11, 25))]
    assert outside_hours({}, "America/Chicago", utc(2026, 11, 24), utc(2026, 11, 25)) == []
    # The lunch break is outside working hours.
    assert outside_hours(hours, "America/Chicago", utc(2026, 11, 23, 15),
                         utc(2026, 11, 23, 20)) == [(utc(2026, 11, 23, 18), utc(2026, 11, 23, 19))]


# --- busy rules ---------------------------------------------------------------------------

def ext(start: dt.datetime, end: dt.datetime, **kw) -> ExternalEntry:
    return ExternalEntry(owner_id="u1", start=start, end=end, calendar_name="Work", **kw)


@pytest.mark.parametrize("fields, busy", [
    ({"busy_status": "busy"}, True),
    ({"busy_status": "tentative"}, True),
    ({"busy_status": "oof"}, True),
    ({"busy_status": "free"}, False),
    ({"busy_status": "workingElsewhere"}, False),
    ({"busy_status": "transparent"}, False),
    ({"busy_status": "busy", "status": "cancelled"}, False),
    ({"busy_status": "busy", "response": "declined"}, False),
    ({"busy_status": "tentative", "response": "accepted"}, True),
    ({"busy_status": "busy", "status": "tentative"}, True),
])
def test_which_external_events_block(fields, busy) -> None:
    assert external_is_busy(ext(utc(2026, 1, 1, 9), utc(2026, 1, 1, 10), **fields)) is busy


def test_tentative_blocks_and_free_does_not() -> None:
    data = UserBusyInput(profile(), externals=[
        ext(utc(2026, 1, 5, 9), utc(2026, 1, 5, 10), busy_status="tentative", summary="Maybe"),
        ext(utc(2026, 1, 5, 11), utc(2026, 1, 5, 12), busy_status="free", summary="Lunch?"),
    ])
    assert busy_intervals(data, utc(2026, 1, 5), utc(2026, 1, 6)) == [
        (utc(2026, 1, 5, 9), utc(2026, 1, 5, 10))]


def test_declined_invitation_leaves_the_user_free() -> None:
    data = UserBusyInput(profile(), externals=[
        ext(utc(2026, 1, 5, 9), utc(2026, 1, 5, 10), response="declined", summary="Sync")])
    assert busy_blocks(data, utc(2026, 1, 5), utc(2026, 1, 6)) == []


def test_overlapping_duplicate_is_one_busy_interval() -> None:
    twice = [ext(utc(2026, 1, 5, 9), utc(2026, 1, 5, 10), summary="Dentist"),
             ext(utc(2026, 1, 5, 9), utc(2026, 1, 5, 10), summary="Dentist"),
             ext(utc(2026, 1, 5, 9, 30), utc(2026, 1, 5, 11), summary="Overlap")]
    data = UserBusyInput(profile(), externals=twice)
    assert busy_intervals(data, utc(2026, 1, 5), utc(2026, 1, 6)) == [
        (utc(2026, 1, 5, 9), utc(2026, 1, 5, 11))]


def job(start: dt.datetime, end: dt.datetime, status: str = "scheduled",
        kind: str = "job") -> ScheduleEntry:
    return ScheduleEntry(kind=kind, id="j", user_id="u1", start=start, end=end, status=status,
                         title="Install")


def test_job_crossing_midnight_blocks_both_days() -> None:
    # 22:00 to 02:00 Chicago time (CST): 04:00Z to 08:00Z the next UTC day.
    night = job(utc(2026, 1, 6, 4), utc(2026, 1, 6, 8))
    data = UserBusyInput(profile(), items=[night])
    evening = busy_blocks(data, utc(2026, 1, 6, 3), utc(2026, 1, 6, 6))  # 21:00-24:00 local
    after_midnight = busy_blocks(data, utc(2026, 1, 6, 6), utc(2026, 1, 6, 7))  # 00:00-01:00
    assert [b.kind for b in evening] == ["job"] and [b.kind for b in after_midnight] == ["job"]
    assert busy_blocks(data, utc(2026, 1, 6, 8), utc(2026, 1, 6, 9)) == []


@pytest.mark.parametrize("status, busy", [("scheduled", True), ("completed", True),
                                          ("cancelled", False)])
def test_job_status_decides_busy(status, busy) -> None:
    data = UserBusyInput(profile(), items=[job(utc(2026, 1, 5, 9), utc(2026, 1, 5, 10), status)])
    assert bool(busy_blocks(data, utc(2026, 1, 5), utc(2026, 1, 6))) is busy


def test_blocks_have_kinds_and_outside_hours_is_one() -> None:
    hours = {"mon": [["08:00", "17:00"]]}
    data = UserBusyInput(profile(hours), items=[
        job(utc(2026, 1, 5, 15), utc(2026, 1, 5, 16)),
        job(utc(2026, 1, 5, 16), utc(2026, 1, 5, 17), kind="time_off"),
        job(utc(2026, 1, 5, 17), utc(2026, 1, 5, 18), kind="block")],
        externals=[ext(utc(2026, 1, 5, 18), utc(2026, 1, 5, 19), summary="x")])
    kinds = [b.kind for b in busy_blocks(data, utc(2026, 1, 5, 13), utc(2026, 1, 5, 20))]
    # 13:00-14:00Z is 07:00-08:00 local: outside hours; 14:00Z (08:00) starts the day.
    assert kinds == ["outside_hours", "job", "time_off", "blocked", "external"]


# --- intervals and slots --------------------------------------------------------------------

def test_merge_and_complement() -> None:
    a, b, c = utc(2026, 1, 1, 9), utc(2026, 1, 1, 10), utc(2026, 1, 1, 11)
    assert merge([(b, c), (a, b), (a, a)]) == [(a, c)]
    assert complement([(b, c)], a, utc(2026, 1, 1, 12)) == [(a, b), (c, utc(2026, 1, 1, 12))]


def test_free_slots_tile_each_free_interval_from_its_start() -> None:
    start, end = utc(2026, 1, 5, 8), utc(2026, 1, 5, 12)
    busy = [(utc(2026, 1, 5, 9), utc(2026, 1, 5, 9, 45))]
    slots = free_slots(busy, start, end, dt.timedelta(minutes=30))
    starts = [s.strftime("%H:%M") for s, _ in slots]
    assert starts == ["08:00", "08:30", "09:45", "10:15", "10:45", "11:15"]
    assert all(e - s == dt.timedelta(minutes=30) for s, e in slots)
    # Slots never overlap busy time.
    assert all(not (s < busy[0][1] and e > busy[0][0]) for s, e in slots)


# --- staleness ------------------------------------------------------------------------------

NOW = utc(2026, 1, 5, 12)
STALE_AFTER = dt.timedelta(minutes=30)


@pytest.mark.parametrize("cal, stale", [
    (CalendarHealth("Work", "primary", "ok", NOW - dt.timedelta(minutes=5), "ok"), False),
    (CalendarHealth("Work", "primary", "ok", NOW - dt.timedelta(minutes=31), "ok"), True),
    (CalendarHealth("Work", "conflict", "ok", None, "ok"), True),
    (CalendarHealth("Work", "primary", "error", NOW, "ok"), True),
    (CalendarHealth("Work", "primary", "guarded", NOW, "ok"), True),
    (CalendarHealth("Work", "conflict", "ok", NOW, "needs_reauth"), True),
    (CalendarHealth("Work", "conflict", "ok", NOW, "error"), True),
    (CalendarHealth("Work", "ignored", "error", None, "error"), False),
])
def test_staleness(cal, stale) -> None:
    assert stale_calendars([cal], NOW, STALE_AFTER) == (["Work"] if stale else [])
