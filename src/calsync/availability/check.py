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
    UserBusyInput,
    busy_blocks,
    external_is_busy,
    free_slots,
    merge,
    stale_calendars,
)
from calsync.availability.store import load_busy_inputs
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
    results = []
    for uid, data in inputs.items():
        stale = _stale(data, now, stale_after)
        slots: list[dict[str, str]] = []
        if not stale:
            busy = merge((b.start, b.end) for b in busy_blocks(data, start, end))
            slots = [{"start": iso(s), "end": iso(e)}
                     for s, e in free_slots(busy, start, end, duration)]
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
    inputs = load_busy_inputs(session, user_ids, start, end)
    return search_results(inputs, start, end, duration, now, stale_after)


def schedule_of(session: Session, user_ids: Sequence[str], start: dt.datetime,
                end: dt.datetime, viewer: Viewer, now: dt.datetime,
                stale_after: dt.timedelta) -> list[dict[str, Any]]:
    inputs = load_busy_inputs(session, user_ids, start, end, with_assignees=True)
    return schedule_results(inputs, viewer, now, stale_after)
