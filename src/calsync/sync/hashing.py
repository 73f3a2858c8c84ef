"""Content hashes the planner compares: "changed" means the content changed, not the etag.

Both sides hash the same normalised fields (summary, description, location, start, end,
all_day, status), so a local :class:`OutgoingEvent` and the :class:`RemoteEvent` a provider
returns for it hash alike when the provider kept what calsync wrote. External events also
hash what availability reads (busy status, privacy, the owner's answer, the occurrences).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from calsync.sync.connector import OutgoingEvent, RemoteEvent

HASH_VERSION = 1


def _text(value: str | None) -> str:
    return " ".join((value or "").replace("\r\n", "\n").split())


def _instant(value: dt.datetime | dt.date | None, all_day: bool) -> str:
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        if all_day:
            return value.date().isoformat()
        if value.tzinfo is None:
            return "floating:" + value.isoformat()
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return value.isoformat()


def _digest(doc: list[Any]) -> str:
    return hashlib.sha256(json.dumps(doc, ensure_ascii=False).encode()).hexdigest()


def content_hash(summary: str | None, description: str | None, location: str | None,
                 start: dt.datetime | dt.date | None, end: dt.datetime | dt.date | None,
                 all_day: bool, status: str) -> str:
    """The normalised content hash both sides share."""
    return _digest([HASH_VERSION, _text(summary), _text(description), _text(location),
                    _instant(start, all_day), _instant(end, all_day), bool(all_day),
                    status or "confirmed"])


def outgoing_hash(event: OutgoingEvent) -> str:
    return content_hash(event.summary, event.description, event.location, event.start,
                        event.end, event.all_day, event.status)


def remote_hash(event: RemoteEvent) -> str:
    return content_hash(event.summary, event.description, event.location, event.start,
                        event.end, event.all_day, event.status)


def external_hash(event: RemoteEvent) -> str:
    """What an external busy block depends on: content plus busy data and occurrences."""
    occ = [[_instant(o.start, False), _instant(o.end, False)] for o in event.occurrences]
    return _digest([remote_hash(event), event.busy, event.private, event.response or "",
                    event.recurring, _text(event.organizer), sorted(event.attendees), occ])
