"""Availability check, free-slot search and the dispatcher schedule, masked per viewer.

The ``*_results`` functions are pure (loaded inputs in, JSON-ready dicts out); the
``check_availability`` / ``search_availability`` / ``schedule_of`` wrappers load the
inputs in one session first. Every external event passes through
:func:`calsync.privacy.mask_for_viewer` before it is put in a result.

Fail closed: a user with a stale primary/conflict calendar (see
:func:`calsync.availability.busy.stale_calendars`) is reported ``"stale": true`` with the
calendars named, is never ``"available"``, and gets no free slots offered.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.orm import Session

from calsync.availability.busy import (
    MICROSECOND,
    CalendarHealth,
    Interval,
    MicroInterval,
    UserBusyInput,
    UserProfile,
    busy_blocks,
    external_is_busy,
    free_slot_starts,
    instant_of,
    micros,
    outside_hours,
    stale_calendars,
)
from calsync.availability.store import load_busy_inputs, load_search_inputs
from calsync.availability.views import (
    block_view,
    conflict_entry,
    external_view,
    iso,
    schedule_view,
)
from calsync.privacy import Viewer, mask_for_viewer


def _stale(data: UserBusyInput, now: dt.datetime, stale_after: dt.timedelta) -> list[str]:
    return stale_calendars(data.calendars, now, stale_after)


def check_results(inputs: Mapping[str, UserBusyInput], start: dt.datetime, end: dt.datetime,
                  viewer: Viewer, now: dt.datetime,
                  stale_after: dt.timedelta) -> list[dict[str, Any]]:
    """One ``{"user_id", "available", "stale", "stale_calendars", "conflicts"}`` per user."""
    results = []
    for uid, data in inputs.items():
        conflicts: list[dict[str, Any]] = []
        seen: set[tuple[Any, ...]] = set()
        for block in busy_blocks(data, start, end):
            entry = conflict_entry(mask_for_viewer(block_view(block, data.profile), viewer))
            key = tuple(entry.values())
            if key not in seen:  # an event listed twice (e.g. on two calendars) shows once
                seen.add(key)
                conflicts.append(entry)
        stale = _stale(data, now, stale_after)
        results.append({"user_id": uid, "available": not conflicts and not stale,
                        "stale": bool(stale), "stale_calendars": stale,
                        "conflicts": conflicts})
    return results


def search_results(inputs: Mapping[str, UserBusyInput], start: dt.datetime,
                   end: dt.datetime, duration: dt.timedelta, now: dt.datetime,
                   stale_after: dt.timedelta) -> list[dict[str, Any]]:
    """One ``{"user_id", "stale", "stale_calendars", "slots"}`` per user; stale users get
    no slots (fail closed)."""
    busy = {uid: [(b.start, b.end) for b in busy_blocks(data, start, end,
                                                         include_outside_hours=False)]
            for uid, data in inputs.items()}
    return slot_results({u: d.profile for u, d in inputs.items()},
                        {u: d.calendars for u, d in inputs.items()}, busy, start, end,
                        duration, now, stale_after)


def slot_results(profiles: Mapping[str, UserProfile],
                 calendars: Mapping[str, Sequence[CalendarHealth]],
                 busy: Mapping[str, Sequence[Interval]], start: dt.datetime,
                 end: dt.datetime, duration: dt.timedelta, now: dt.datetime,
                 stale_after: dt.timedelta) -> list[dict[str, Any]]:
    """:func:`search_results` from each user's busy spans (items and external events,
    as :func:`calsync.availability.store.load_busy_times` gives them): working hours are
    added here."""
    busy_us = {u: [(micros(s), micros(e)) for s, e in spans] for u, spans in busy.items()}
    return micro_slot_results(profiles, calendars, busy_us, start, end, duration, now,
                              stale_after)


def micro_slot_results(profiles: Mapping[str, UserProfile],
                       calendars: Mapping[str, Sequence[CalendarHealth]],
                       busy: Mapping[str, Sequence[MicroInterval]], start: dt.datetime,
                       end: dt.datetime, duration: dt.timedelta, now: dt.datetime,
                       stale_after: dt.timedelta) -> list[dict[str, Any]]:
    """:func:`slot_results` with busy spans in microseconds since the epoch (as
    :func:`calsync.availability.store.load_search_inputs` gives them). Users who share a
    timezone and hours share one working-hours computation, slots are worked out on
    integers and each boundary is formatted once."""
    step = duration // MICROSECOND
    start_us, end_us = micros(start), micros(end)
    hours_memo: dict[tuple[str, str], list[MicroInterval]] = {}
    texts: dict[int, str] = {}  # slot boundary -> ISO text
    results = []
    for uid, profile in profiles.items():
        stale = stale_calendars(calendars.get(uid, ()), now, stale_after)
        slots: list[dict[str, str]] = []
        if not stale:
            key = (profile.timezone, repr(profile.working_hours))
            off = hours_memo.get(key)
            if off is None:
                off = hours_memo[key] = [
                    (micros(s), micros(e))
                    for s, e in outside_hours(profile.working_hours, profile.timezone,
                                              start, end)]
            for a in free_slot_starts([*busy.get(uid, ()), *off], start_us, end_us, step):
                a_text = texts.get(a)
                if a_text is None:
                    a_text = texts[a] = iso(instant_of(a))
                b_text = texts.get(a + step)
                if b_text is None:
                    b_text = texts[a + step] = iso(instant_of(a + step))
                slots.append({"start": a_text, "end": b_text})
        results.append({"user_id": uid, "stale": bool(stale), "stale_calendars": stale,
                        "slots": slots})
    return results


def schedule_results(inputs: Mapping[str, UserBusyInput], viewer: Viewer,
                     now: dt.datetime, stale_after: dt.timedelta) -> list[dict[str, Any]]:
    """Per user: calsync's schedule items and external busy blocks, masked for ``viewer``."""
    results = []
    for uid, data in inputs.items():
        p = data.profile
        items = [mask_for_viewer(schedule_view(i), viewer) for i in data.items
                 if i.status != "cancelled"]
        busy = [mask_for_viewer(external_view(e, p), viewer) for e in data.externals
                if external_is_busy(e)]
        stale = _stale(data, now, stale_after)
        results.append({"user_id": uid, "name": p.name, "timezone": p.timezone,
                        "working_hours": p.working_hours, "stale": bool(stale),
                        "stale_calendars": stale, "items": items, "external": busy})
    return results


def check_availability(session: Session, user_ids: Sequence[str], start: dt.datetime,
                       end: dt.datetime, viewer: Viewer, now: dt.datetime,
                       stale_after: dt.timedelta) -> list[dict[str, Any]]:
    """Load and check. Raises NotFound for an unknown user."""
    inputs = load_busy_inputs(session, user_ids, start, end)
    return check_results(inputs, start, end, viewer, now, stale_after)


def search_availability(session: Session, user_ids: Sequence[str], start: dt.datetime,
                        end: dt.datetime, duration: dt.timedelta, now: dt.datetime,
                        stale_after: dt.timedelta) -> list[dict[str, Any]]:
    """Load (people and busy spans only, one statement) and search. Raises NotFound for
    an unknown user."""
    profiles, calendars, busy = load_search_inputs(session, user_ids, start, end)
    return micro_slot_results(profiles, calendars, busy, start, end, duration, now,
                              stale_after)


def schedule_of(session: Session, user_ids: Sequence[str], start: dt.datetime,
                end: dt.datetime, viewer: Viewer, now: dt.datetime,
                stale_after: dt.timedelta) -> list[dict[str, Any]]:
    inputs = load_busy_inputs(session, user_ids, start, end, with_assignees=True)
    return schedule_results(inputs, viewer, now, stale_after)
