"""Schedule items as calendar events, both ways (no I/O).

- :func:`item_key` / :func:`outgoing_event`: what calsync writes for a job, time off or block
  (summary as in the feed: job "Job type: account", "Time off: reason", a block's title).
- :func:`apply_remote_edit`: a user's remote edit of a time off or block copied onto the
  :class:`ScheduleItem` (fields only; the caller rehashes, bumps the sequence, marks feeds).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re

from calsync.db.models import ScheduleItem
from calsync.sync.connector import OutgoingEvent, RemoteEvent
from calsync.timezones import UTC, zone

TIME_OFF = "Time off"
_SAFE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_TIME_OFF_PREFIX = re.compile(r"^\s*time off\s*(?:[:\-–—]\s*)?", re.IGNORECASE)


def item_key(kind: str, ext_id: str) -> str:
    """Deterministic key of an item's copy (``job-j1``, ``time-off-t1``, ``block-b1``);
    ids with characters unsafe in URLs are replaced by a hash."""
    safe = ext_id if _SAFE.match(ext_id) else "h" + hashlib.sha256(ext_id.encode()).hexdigest()[:24]
    return f"{kind.replace('_', '-')}-{safe}"


def summary_of(item: ScheduleItem) -> str:
    if item.kind == "job":
        parts = [p for p in (item.job_type, item.account) if p]
        return ": ".join(parts) if parts else (item.title or "Job")
    if item.kind == "time_off":
        return f"{TIME_OFF}: {item.reason}" if item.reason else TIME_OFF
    return item.title or "Blocked"


def outgoing_event(item: ScheduleItem) -> OutgoingEvent:
    key = item_key(item.kind, item.ext_id)
    start: dt.datetime | dt.date
    end: dt.datetime | dt.date
    if item.all_day and item.start_date and item.end_date:
        start, end = item.start_date, item.end_date
    else:
        tz = zone(item.tzid)
        start, end = item.start_at.astimezone(tz), item.end_at.astimezone(tz)
    categories = tuple(c for c in (item.kind.replace("_", " "), item.job_type) if c)
    description = item.notes or ""
    if item.kind == "job" and item.title and summary_of(item) != item.title:
        description = f"{item.title}\n\n{description}".strip()
    return OutgoingEvent(
        key=key, uid=f"{key}@calsync", summary=summary_of(item), start=start, end=end,
        all_day=bool(item.all_day and item.start_date), tzid=item.tzid,
        description=description, location=item.location or "", categories=categories,
        status="cancelled" if item.status == "cancelled" else "confirmed",
        sequence=item.sequence, busy="oof" if item.kind == "time_off" else "busy")


def _date(value: dt.datetime | dt.date) -> dt.date:
    return value.date() if isinstance(value, dt.datetime) else value


def apply_remote_edit(item: ScheduleItem, remote: RemoteEvent) -> None:
    """Copy a user's remote edit onto a time off or block (not jobs: dispatch owns them)."""
    summary = (remote.summary or "").strip()
    if item.kind == "time_off":
        reason = _TIME_OFF_PREFIX.sub("", summary, count=1) if _TIME_OFF_PREFIX.match(summary) \
            else summary
        item.reason = reason or None
    else:
        item.title = summary
    item.location = remote.location or None
    item.notes = remote.description or None
    if remote.start is None or remote.end is None:
        return
    if remote.all_day:
        start_d, end_d = _date(remote.start), _date(remote.end)
        if end_d <= start_d:
            end_d = start_d + dt.timedelta(days=1)
        tz = zone(item.tzid)
        item.all_day = True
        item.start_date, item.end_date = start_d, end_d
        item.start_at = dt.datetime.combine(start_d, dt.time(), tz).astimezone(UTC)
        item.end_at = dt.datetime.combine(end_d, dt.time(), tz).astimezone(UTC)
    else:
        start, end = remote.start, remote.end
        assert isinstance(start, dt.datetime) and isinstance(end, dt.datetime)
        if start.tzinfo is None:  # floating: the item's own zone
            start, end = start.replace(tzinfo=zone(item.tzid)), end.replace(tzinfo=zone(item.tzid))
        item.all_day = False
        item.start_date = item.end_date = None
        item.start_at, item.end_at = start.astimezone(UTC), end.astimezone(UTC)
