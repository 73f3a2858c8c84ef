"""How the pages write dates and times: in the person's own time zone, short and plain."""

from __future__ import annotations

import datetime as dt

from calsync.timezones import zone

WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def parse_iso(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


def local(value: dt.datetime, tzid: str) -> dt.datetime:
    return value.astimezone(zone(tzid))


def hhmm(value: dt.datetime) -> str:
    return value.strftime("%H:%M")


def day_label(day: dt.date) -> str:
    """``Mon 30 Nov``"""
    return f"{day.strftime('%a')} {day.day} {day.strftime('%b')}"


def when(value: dt.datetime | None, tzid: str) -> str:
    """``Tue 1 Dec 2026, 09:14`` in ``tzid``, or ``never``."""
    if value is None:
        return "never"
    t = local(value, tzid)
    return f"{day_label(t.date())} {t.year}, {hhmm(t)}"


def span(start: dt.datetime, end: dt.datetime, tzid: str) -> str:
    """``Mon 30 Nov 09:00–10:00`` (the end's day is named when it differs)."""
    a, b = local(start, tzid), local(end, tzid)
    if a.date() == b.date():
        return f"{day_label(a.date())} {hhmm(a)}–{hhmm(b)}"
    return f"{day_label(a.date())} {hhmm(a)} – {day_label(b.date())} {hhmm(b)}"
