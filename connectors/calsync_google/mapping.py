"""Google Calendar event resources <-> calsync's RemoteEvent / OutgoingEvent.

- Event ids calsync chooses: base32hex (``a-v0-9``) of SHA-256 of the item key, so a
  create can be repeated safely and a copy found again after a crash.
- ``extendedProperties.private.calsyncKey`` tags what calsync wrote.
- ``transparency: transparent`` -> free; ``eventType`` outOfOffice -> oof,
  workingLocation -> workingElsewhere, focusTime -> busy; ``status: tentative`` ->
  tentative; ``visibility`` private/confidential -> private; the owner's own answer is
  the attendee marked ``self: true``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from calsync.sync.connector import (
    BusyStatus,
    Occurrence,
    OutgoingEvent,
    RemoteEvent,
    Window,
)

KEY_PROPERTY = "calsyncKey"
UID_PROPERTY = "calsyncUid"
UTC = dt.timezone.utc

_EVENT_TYPE_BUSY: dict[str, BusyStatus] = {
    "outOfOffice": "oof",
    "workingLocation": "workingElsewhere",
    "focusTime": "busy",
}
_RESPONSES = {"accepted": "accepted", "declined": "declined", "tentative": "tentative"}


class EventShapeError(ValueError):
    """A Google event resource calsync cannot read (it is quarantined, not dropped)."""


def event_id_for_key(key: str) -> str:
    """The deterministic, valid Google event id for an item key (52 chars, a-v0-9)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return base64.b32hexencode(digest).decode("ascii").rstrip("=").lower()


def _zone(name: str | None, fallback: str) -> ZoneInfo:
    for candidate in (name, fallback, "UTC"):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def _parse_when(value: Any, what: str) -> tuple[dt.datetime | dt.date, str | None]:
    if not isinstance(value, dict):
        raise EventShapeError(f"{what} is missing")
    try:
        if "date" in value:
            return dt.date.fromisoformat(value["date"]), value.get("timeZone")
        if "dateTime" in value:
            parsed = dt.datetime.fromisoformat(str(value["dateTime"]).replace("Z", "+00:00"))
            if parsed.tzinfo is None:
                raise EventShapeError(f"{what}.dateTime has no UTC offset")
            return parsed, value.get("timeZone")
    except ValueError as exc:
        raise EventShapeError(f"{what}: {exc}") from None
    raise EventShapeError(f"{what} has neither date nor dateTime")


def _instant(value: dt.datetime | dt.date, tz: ZoneInfo) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value.astimezone(UTC)
    return dt.datetime.combine(value, dt.time(), tz).astimezone(UTC)


def busy_of(item: dict[str, Any]) -> BusyStatus:
    event_type = item.get("eventType")
    if event_type in _EVENT_TYPE_BUSY:
        return _EVENT_TYPE_BUSY[event_type]
    if item.get("transparency") == "transparent":
        return "free"
    if item.get("status") == "tentative":
        return "tentative"
    return "busy"


def to_remote(item: dict[str, Any], window: Window, calendar_tz: str) -> RemoteEvent:
    """A (non-cancelled) Google event or instance as a RemoteEvent. Raises EventShapeError."""
    if not item.get("id"):
        raise EventShapeError("event has no id")
    start, start_tz = _parse_when(item.get("start"), "start")
    end, _end_tz = _parse_when(item.get("end"), "end")
    all_day = isinstance(start, dt.date) and not isinstance(start, dt.datetime)
    if all_day != (isinstance(end, dt.date) and not isinstance(end, dt.datetime)):
        raise EventShapeError("start and end mix date and dateTime")
    tz = _zone(start_tz, calendar_tz)
    s_utc, e_utc = _instant(start, tz), _instant(end, tz)
    if e_utc < s_utc:
        raise EventShapeError("end is before start")
    occurrences = []
    if s_utc < window.end and (e_utc > window.start or (e_utc == s_utc
                                                         and s_utc >= window.start)):
        occurrences.append(Occurrence(s_utc, e_utc))
    props = (item.get("extendedProperties") or {}).get("private") or {}
    response = None
    for attendee in item.get("attendees") or []:
        if attendee.get("self"):
            response = _RESPONSES.get(attendee.get("responseStatus", ""))
    status = item.get("status", "confirmed")
    updated = None
    if item.get("updated"):
        try:
            updated = dt.datetime.fromisoformat(str(item["updated"]).replace("Z", "+00:00"))
        except ValueError:
            updated = None
    return RemoteEvent(
        remote_id=item["id"],
        etag=item.get("etag"),
        uid=item.get("iCalUID"),
        calsync_key=props.get(KEY_PROPERTY),
        summary=item.get("summary"),
        description=item.get("description"),
        location=item.get("location"),
        start=start,
        end=end,
        all_day=all_day,
        tzid=start_tz or (None if all_day else calendar_tz),
        busy=busy_of(item),
        status="tentative" if status == "tentative" else "confirmed",
        response=response,
        private=item.get("visibility") in ("private", "confidential"),
        organizer=(item.get("organizer") or {}).get("email"),
        attendees=[a["email"] for a in item.get("attendees") or [] if a.get("email")],
        recurring=bool(item.get("recurringEventId") or item.get("recurrence")),
        occurrences=occurrences,
        last_modified=updated,
        raw=json.dumps(item, sort_keys=True),
    )


def _when_body(value: dt.datetime | dt.date, all_day: bool, tzid: str) -> dict[str, str]:
    if all_day:
        day = value.date() if isinstance(value, dt.datetime) else value
        return {"date": day.isoformat()}
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise ValueError(f"timed event needs an aware datetime, got {value!r}")
    local = value.astimezone(_zone(tzid, "UTC"))
    return {"dateTime": local.isoformat(), "timeZone": tzid}


def to_body(event: OutgoingEvent, with_id: bool) -> dict[str, Any]:
    """The Google event resource calsync writes for ``event``."""
    body: dict[str, Any] = {
        "summary": event.summary,
        "description": event.description,
        "location": event.location,
        "start": _when_body(event.start, event.all_day, event.tzid),
        "end": _when_body(event.end, event.all_day, event.tzid),
        "transparency": "transparent" if event.busy in ("free", "workingElsewhere")
        else "opaque",
        "status": "tentative" if event.status == "tentative" else "confirmed",
        "extendedProperties": {"private": {KEY_PROPERTY: event.key, UID_PROPERTY: event.uid}},
        "reminders": {"useDefault": False},
    }
    if with_id:
        body["id"] = event_id_for_key(event.key)
    return body
