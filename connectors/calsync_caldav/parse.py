"""The iCalendar parser now lives in the core (:mod:`calsync.ical.parse`), shared with the
subscribed-calendar connector; this name stays for existing imports."""

from __future__ import annotations

from calsync.ical.parse import *  # noqa: F403
from calsync.ical.parse import (  # noqa: F401 - re-exported names
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
