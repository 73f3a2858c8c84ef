"""Event views: the dicts that :func:`calsync.privacy.mask_for_viewer` takes.

A view carries every field an output might show plus the bookkeeping the masking rule
needs (``owner_id``, ``private_mode``, ``private_at_source``). Nothing built here leaves
the process without going through ``mask_for_viewer``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from calsync.availability.busy import (
    CONFLICT_KIND,
    BusyBlock,
    ExternalEntry,
    ScheduleEntry,
    UserProfile,
)

CALSYNC_SOURCE = "calsync"
OUTSIDE_HOURS_SUMMARY = "Outside working hours"


def iso(value: dt.datetime) -> str:
    return value.isoformat()


def schedule_summary(entry: ScheduleEntry) -> str:
    if entry.kind == "job":
        if entry.title:
            return entry.title
        label = ": ".join(x for x in (entry.job_type, entry.account) if x)
        return label or "Job"
    if entry.kind == "time_off":
        return f"Time off: {entry.reason}" if entry.reason else "Time off"
    return entry.title or "Blocked"


def schedule_view(entry: ScheduleEntry) -> dict[str, Any]:
    """A calsync schedule item (not masked: it is calsync's own data)."""
    return {"kind": CONFLICT_KIND.get(entry.kind, entry.kind), "id": entry.id,
            "start": iso(entry.start), "end": iso(entry.end), "all_day": entry.all_day,
            "summary": schedule_summary(entry), "title": entry.title,
            "job_type": entry.job_type, "account": entry.account,
            "location": entry.location, "notes": entry.notes, "reason": entry.reason,
            "status": entry.status, "timezone": entry.tzid,
            "assignees": list(entry.assignees), "source": CALSYNC_SOURCE}


def external_view(entry: ExternalEntry, owner: UserProfile) -> dict[str, Any]:
    """An external event occurrence, with everything its owner may see."""
    return {"kind": "external", "owner_id": entry.owner_id,
            "private_mode": owner.private_mode, "private_at_source": entry.private_at_source,
            "start": iso(entry.start), "end": iso(entry.end), "all_day": entry.all_day,
            "summary": entry.summary or "", "description": entry.description,
            "location": entry.location, "organizer": entry.organizer,
            "attendees": list(entry.attendees), "source": entry.calendar_name,
            "busy_status": entry.busy_status, "status": entry.status,
            "response": entry.response, "remote_id": entry.remote_id}


def block_view(block: BusyBlock, owner: UserProfile) -> dict[str, Any]:
    """A busy block as a conflict view. Items and events keep their own full times;
    ``outside_hours`` pieces are clipped to the asked range."""
    if block.schedule is not None:
        return schedule_view(block.schedule)
    if block.external is not None:
        return external_view(block.external, owner)
    return {"kind": block.kind, "start": iso(block.start), "end": iso(block.end),
            "summary": OUTSIDE_HOURS_SUMMARY, "source": CALSYNC_SOURCE}


CONFLICT_KEYS = ("kind", "start", "end", "summary", "source")


def conflict_entry(masked_view: dict[str, Any]) -> dict[str, Any]:
    """The conflict-list shape of an already masked view."""
    return {k: masked_view.get(k) for k in CONFLICT_KEYS}
