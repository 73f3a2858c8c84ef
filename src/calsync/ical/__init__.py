"""Reading iCalendar text into :class:`calsync.sync.connector.RemoteEvent` values: the
parser and recurrence expansion every connector that reads iCalendar shares (CalDAV and
iCloud resources, subscribed ``.ics`` feeds). Pure: no I/O.

Public API (what connectors import): :class:`ParseOptions`, :func:`parse_calendar`,
:func:`parse_resource`, :func:`unreadable_reason`, :func:`safe_message`,
:func:`private_values`, :func:`decode`, :func:`zone_or_utc`, :data:`KEY_PROPERTY` and
:func:`resolve_tzid`.
"""

from __future__ import annotations

from calsync.ical.parse import (
    KEY_PROPERTY,
    CalendarParse,
    ParseOptions,
    ResourceParse,
    decode,
    parse_calendar,
    parse_resource,
    private_values,
    safe_message,
    unreadable_reason,
    zone_or_utc,
)
from calsync.ical.timezones import resolve_tzid

__all__ = ["KEY_PROPERTY", "CalendarParse", "ParseOptions", "ResourceParse", "decode",
           "parse_calendar", "parse_resource", "private_values", "resolve_tzid",
           "safe_message", "unreadable_reason", "zone_or_utc"]
