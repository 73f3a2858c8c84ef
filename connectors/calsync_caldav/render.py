"""Render an :class:`OutgoingEvent` as the iCalendar object calsync PUTs. Pure: no I/O."""

from __future__ import annotations

import datetime as dt
import functools
import warnings
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import icalendar

from calsync.ical import KEY_PROPERTY
from calsync.sync.connector import OutgoingEvent

PRODID = "-//calsync//calsync CalDAV connector//EN"
_STATUS = {"confirmed": "CONFIRMED", "tentative": "TENTATIVE", "cancelled": "CANCELLED"}
_CDO = {"tentative": "TENTATIVE", "oof": "OOF", "workingElsewhere": "WORKINGELSEWHERE",
        "free": "FREE", "busy": "BUSY"}


def _zone(tzid: str) -> ZoneInfo | None:
    if not tzid or tzid.upper() == "UTC":
        return None
    try:
        return ZoneInfo(tzid)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _in_zone(value: dt.datetime, zone: ZoneInfo | None) -> dt.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=zone or dt.timezone.utc)
    return value.astimezone(zone or dt.timezone.utc)


@functools.lru_cache(maxsize=512)
def _vtimezone(tzid: str, first_year: int, last_year: int) -> str:
    """The VTIMEZONE text of ``tzid`` with its transitions from the start of
    ``first_year`` to the end of ``last_year``: worked out once per zone and years (it is
    most of the cost of rendering an event)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zone = icalendar.Timezone.from_tzid(tzid, first_date=dt.date(first_year, 1, 1),
                                            last_date=dt.date(last_year, 12, 31))
    return str(zone.to_ical().decode("utf-8"))


def render_event(event: OutgoingEvent, now: dt.datetime) -> str:
    """A VCALENDAR with one VEVENT (and the VTIMEZONE its TZID needs, covering the
    event's years and one either side), CRLF-terminated."""
    cal = icalendar.Calendar()
    cal.add("PRODID", PRODID)
    cal.add("VERSION", "2.0")
    vevent = icalendar.Event()
    vevent.add("UID", event.uid)
    vevent.add(KEY_PROPERTY, event.key)
    vevent.add("DTSTAMP", now.astimezone(dt.timezone.utc))
    vevent.add("SEQUENCE", event.sequence)
    vevent.add("SUMMARY", event.summary)
    if event.description:
        vevent.add("DESCRIPTION", event.description)
    if event.location:
        vevent.add("LOCATION", event.location)
    if event.categories:
        vevent.add("CATEGORIES", list(event.categories))
    vevent.add("STATUS", _STATUS.get(event.status, "CONFIRMED"))
    vevent.add("TRANSP", "TRANSPARENT" if event.busy in ("free", "workingElsewhere")
               else "OPAQUE")
    if event.busy != "busy":
        vevent.add("X-MICROSOFT-CDO-BUSYSTATUS", _CDO[event.busy])
    zone = _zone(event.tzid)
    vtimezone = ""
    if event.all_day:
        start = event.start.date() if isinstance(event.start, dt.datetime) else event.start
        end = event.end.date() if isinstance(event.end, dt.datetime) else event.end
        if end <= start:
            end = start + dt.timedelta(days=1)
        vevent.add("DTSTART", start)
        vevent.add("DTEND", end)
    else:
        if not isinstance(event.start, dt.datetime) or not isinstance(event.end, dt.datetime):
            raise ValueError(f"{event.key}: a timed event needs date-times for start and end")
        vevent.add("DTSTART", _in_zone(event.start, zone))
        vevent.add("DTEND", _in_zone(event.end, zone))
        if zone is not None:
            vtimezone = _vtimezone(event.tzid, min(event.start, event.end).year - 1,
                                   max(event.start, event.end).year + 1)
    cal.add_component(vevent)
    text = str(cal.to_ical().decode("utf-8"))
    if vtimezone:  # before the VEVENT, as add_component would have placed it
        at = text.index("BEGIN:VEVENT\r\n")
        text = text[:at] + vtimezone + text[at:]
    return text
