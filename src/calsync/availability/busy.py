"""The busy model: pure functions over loaded rows. No I/O, ``now`` is a parameter.

A user is busy at an instant when any of these covers it (DESIGN 7):

- a job assigned to them with status ``scheduled`` **or** ``completed`` (a completed job
  still took that time; only ``cancelled`` and deleted jobs free it);
- time off and blocked events (unless cancelled or deleted);
- an external event whose ``busy_status`` is ``busy``, ``oof`` or ``tentative``, unless it
  is cancelled or the user declined it (``free``, ``workingElsewhere`` and transparent
  events never block);
- time outside their working hours, in their own timezone. ``working_hours`` maps
  ``mon``..``sun`` to ``[["HH:MM", "HH:MM"], ...]``; a weekday missing from the dict, or an
  empty list, means not working that day; an **empty dict means no working-hours limit**
  (the user is bookable around the clock).

Working hours are wall-clock times: each span is placed on its local date with zoneinfo
and converted to UTC, so on DST change days the UTC instants follow the zone (a wall-clock
time inside a spring-forward gap takes the offset before the change; an ambiguous one
takes its first occurrence). ``"24:00"`` ends a span at the next local midnight.

Staleness (fail closed) looks at the user's ``primary`` and ``conflict`` calendars only;
a user with none of them has no external busy data that could go stale.

Intervals are half-open ``[start, end)`` pairs of aware UTC datetimes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from calsync.timezones import UTC, zone

Interval = tuple[dt.datetime, dt.datetime]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
BUSY_SCHEDULE_STATUSES = frozenset({"scheduled", "completed"})
BUSY_EXTERNAL_STATUSES = frozenset({"busy", "oof", "tentative"})
CONFLICT_KIND = {"job": "job", "time_off": "time_off", "block": "blocked"}
STALE_CALENDAR_STATUSES = frozenset({"error", "guarded"})
STALE_CONNECTION_STATUSES = frozenset({"needs_reauth", "error"})
WATCHED_ROLES = ("primary", "conflict")


@dataclass(frozen=True)
class UserProfile:
    id: str
    name: str
    timezone: str
    working_hours: dict[str, Any]
    private_mode: bool


@dataclass(frozen=True)
class ScheduleEntry:
    """One calsync schedule item as seen by one of its users."""

    kind: str  # job | time_off | block
    id: str
    user_id: str
    start: dt.datetime
    end: dt.datetime
    status: str = "scheduled"
    title: str = ""
    job_type: str | None = None
    account: str | None = None
    location: str | None = None
    notes: str | None = None
    reason: str | None = None
    all_day: bool = False
    tzid: str = "UTC"
    assignees: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExternalEntry:
    """One occurrence of an external event, with the event's details."""

    owner_id: str
    start: dt.datetime
    end: dt.datetime
    busy_status: str = "busy"
    status: str = "confirmed"
    response: str | None = None
    private_at_source: bool = False
    all_day: bool = False
    calendar_name: str = ""
    summary: str | None = None
    description: str | None = None
    location: str | None = None
    organizer: str | None = None
    attendees: tuple[Any, ...] = ()
    remote_id: str | None = None
    event_id: int | None = None


@dataclass(frozen=True)
class CalendarHealth:
    """A primary or conflict calendar of the user and its connection's state."""

    name: str
    role: str
    status: str
    last_success_at: dt.datetime | None
    connection_status: str
    provider: str = ""


@dataclass(frozen=True)
class BusyBlock:
    """Something that makes the user busy inside the asked range (clipped to it)."""

    kind: str  # job | time_off | blocked | external | outside_hours
    start: dt.datetime
    end: dt.datetime
    schedule: ScheduleEntry | None = None
    external: ExternalEntry | None = None


@dataclass(frozen=True)
class UserBusyInput:
    """Everything the core needs about one user for one range."""

    profile: UserProfile
    items: Sequence[ScheduleEntry] = ()
    externals: Sequence[ExternalEntry] = ()
    calendars: Sequence[CalendarHealth] = field(default_factory=tuple)


# --- rules ------------------------------------------------------------------------------

def schedule_status_is_busy(status: str | None) -> bool:
    """The rule for a schedule item's ``status`` (loaders that skip the entry use it)."""
    return status in BUSY_SCHEDULE_STATUSES


def external_fields_are_busy(busy_status: str | None, status: str | None,
                             response: str | None) -> bool:
    """The rule for an external event's busy status, status and the user's answer."""
    if (status or "").lower() == "cancelled":
        return False
    if (response or "").lower() == "declined":
        return False
    return (busy_status or "").lower() in BUSY_EXTERNAL_STATUSES


def schedule_is_busy(entry: ScheduleEntry) -> bool:
    return schedule_status_is_busy(entry.status)


def external_is_busy(entry: ExternalEntry) -> bool:
    return external_fields_are_busy(entry.busy_status, entry.status, entry.response)


# --- intervals --------------------------------------------------------------------------

def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Union of intervals: sorted, overlapping and touching ones joined, empty ones dropped."""
    out: list[Interval] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def clip(interval: Interval, start: dt.datetime, end: dt.datetime) -> Interval | None:
    s, e = max(interval[0], start), min(interval[1], end)
    return (s, e) if e > s else None


def complement(intervals: Sequence[Interval], start: dt.datetime,
               end: dt.datetime) -> list[Interval]:
    """The parts of ``[start, end)`` that no interval covers (``intervals`` merged)."""
    gaps: list[Interval] = []
    cursor = start
    for s, e in intervals:
        if e <= cursor:
            continue
        if s >= end:
            break
        if s > cursor:
            gaps.append((cursor, s))
        cursor = max(cursor, e)
    if cursor < end:
        gaps.append((cursor, end))
    return gaps


# --- working hours ----------------------------------------------------------------------

def _wall(day: dt.date, hhmm: str, tz: dt.tzinfo) -> dt.datetime:
    if hhmm == "24:00":
        day, hhmm = day + dt.timedelta(days=1), "00:00"
    hour, minute = int(hhmm[:2]), int(hhmm[3:5])
    return dt.datetime.combine(day, dt.time(hour, minute), tz).astimezone(UTC)


def working_intervals(working_hours: dict[str, Any], tzid: str, start: dt.datetime,
                      end: dt.datetime) -> list[Interval]:
    """The user's working time inside ``[start, end)`` in UTC. Empty dict: all of it."""
    if not working_hours:
        return [(start, end)] if end > start else []
    tz = zone(tzid)
    first = start.astimezone(tz).date() - dt.timedelta(days=1)
    last = end.astimezone(tz).date() + dt.timedelta(days=1)
    spans: list[Interval] = []
    day = first
    while day <= last:
        for span in working_hours.get(WEEKDAYS[day.weekday()]) or ():
            piece = clip((_wall(day, span[0], tz), _wall(day, span[1], tz)), start, end)
            if piece:
                spans.append(piece)
        day += dt.timedelta(days=1)
    return merge(spans)


def outside_hours(working_hours: dict[str, Any], tzid: str, start: dt.datetime,
                  end: dt.datetime) -> list[Interval]:
    """The parts of ``[start, end)`` outside the user's working hours."""
    return complement(working_intervals(working_hours, tzid, start, end), start, end)


# --- busy blocks, busy time, free slots -------------------------------------------------

def busy_blocks(data: UserBusyInput, start: dt.datetime, end: dt.datetime,
                include_outside_hours: bool = True) -> list[BusyBlock]:
    """Every reason the user is busy inside ``[start, end)``, clipped, sorted by start."""
    blocks: list[BusyBlock] = []
    for item in data.items:
        piece = clip((item.start, item.end), start, end)
        if piece and schedule_is_busy(item):
            blocks.append(BusyBlock(CONFLICT_KIND.get(item.kind, item.kind), *piece,
                                    schedule=item))
    for ext in data.externals:
        piece = clip((ext.start, ext.end), start, end)
        if piece and external_is_busy(ext):
            blocks.append(BusyBlock("external", *piece, external=ext))
    if include_outside_hours:
        p = data.profile
        for s, e in outside_hours(p.working_hours, p.timezone, start, end):
            blocks.append(BusyBlock("outside_hours", s, e))
    blocks.sort(key=lambda b: (b.start, b.end, b.kind))
    return blocks


def busy_intervals(data: UserBusyInput, start: dt.datetime, end: dt.datetime) -> list[Interval]:
    """The user's busy time inside ``[start, end)``: the union of all busy blocks."""
    return merge((b.start, b.end) for b in busy_blocks(data, start, end))


EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = dt.timedelta(microseconds=1)
_MINUTE = 60_000_000  # microseconds


def micros(instant: dt.datetime) -> int:
    """An instant as whole microseconds since the Unix epoch (exact, unlike timestamp())."""
    return (instant - EPOCH) // MICROSECOND


def instant_of(us: int) -> dt.datetime:
    """The UTC instant ``us`` microseconds after the Unix epoch."""
    return EPOCH + us * MICROSECOND


MicroInterval = tuple[int, int]


def free_slot_starts(busy: Iterable[MicroInterval], start: int, end: int,
                     step: int) -> list[int]:
    """:func:`free_slots` in whole microseconds since the epoch (``busy`` in any order,
    overlapping or empty intervals allowed): the start of each slot, each ``step`` long.
    A search works on integers and formats each distinct boundary once."""
    starts: list[int] = []
    cursor = start
    for s, e in sorted(busy):
        if e <= cursor or e <= s:
            continue
        if s >= end:
            break
        if s > cursor:  # a free interval [cursor, s): tile it from its first whole minute
            starts.extend(range(-(-cursor // _MINUTE) * _MINUTE, s - step + 1, step))
        cursor = e
    if cursor < end:
        starts.extend(range(-(-cursor // _MINUTE) * _MINUTE, end - step + 1, step))
    return starts


def free_slot_micros(busy: Sequence[Interval], start: dt.datetime, end: dt.datetime,
                     duration: dt.timedelta) -> list[tuple[int, int]]:
    """:func:`free_slots` as ``(start, end)`` microseconds since the epoch."""
    step = duration // MICROSECOND
    return [(a, a + step) for a in free_slot_starts(
        ((micros(s), micros(e)) for s, e in busy), micros(start), micros(end), step)]


def free_slots(busy: Sequence[Interval], start: dt.datetime, end: dt.datetime,
               duration: dt.timedelta) -> list[Interval]:
    """Back-to-back slots of ``duration`` inside each free interval of ``[start, end)``.

    Slots are aligned to the start of each free interval (the start of a working span, or
    the end of whatever was busy before it), rounded up to a whole minute, and tile it:
    for 30-minute slots in a free 08:00-10:15 that gives 08:00, 08:30, 09:00, 09:30.
    Instants are returned in UTC.
    """
    return [(instant_of(a), instant_of(b))
            for a, b in free_slot_micros(busy, start, end, duration)]


# --- staleness (fail closed) ------------------------------------------------------------

def calendar_is_stale(cal: CalendarHealth, now: dt.datetime, stale_after: dt.timedelta) -> bool:
    """A watched calendar is stale when its connection needs re-auth or failed, its latest
    sync failed (status error/guarded), or it has not synced successfully within
    ``stale_after`` (or never)."""
    if cal.connection_status in STALE_CONNECTION_STATUSES:
        return True
    if cal.status in STALE_CALENDAR_STATUSES:
        return True
    return cal.last_success_at is None or cal.last_success_at < now - stale_after


def stale_calendars(calendars: Iterable[CalendarHealth], now: dt.datetime,
                    stale_after: dt.timedelta) -> list[str]:
    """Names of the user's primary/conflict calendars whose busy data cannot be trusted."""
    names = {c.name or "(unnamed calendar)" for c in calendars
             if c.role in WATCHED_ROLES and calendar_is_stale(c, now, stale_after)}
    return sorted(names)
