"""Reading a fetched feed: one :class:`RemoteEvent` per UID, with its own small iCalendar
text as ``source`` (so the engine can re-expand it as the window slides), the refresh
interval the feed asks for and its name. Pure: no I/O.

``X-WR-TIMEZONE`` (the calendar-wide zone Google, Outlook.com and many exporters write
instead of TZIDs) is turned into RFC 5545 form with the ``x-wr-timezone`` library before
anything is read, so floating times are read in the feed's zone, not the user's. The
parsing itself is the core's (:mod:`calsync.ical`), as for CalDAV.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import icalendar
import x_wr_timezone

from calsync.errors import ProviderError
from calsync.ical import ParseOptions, decode, parse_resource, unreadable_reason
from calsync.sync.connector import Quarantined, RemoteEvent, Window


class FeedInvalid(ProviderError):
    """The answer is not an iCalendar feed at all (an HTML page, a truncated file)."""


@dataclass
class FeedContents:
    name: str | None = None
    refresh: dt.timedelta | None = None  # REFRESH-INTERVAL, else X-PUBLISHED-TTL
    events: list[RemoteEvent] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _duration(value: Any) -> dt.timedelta | None:
    try:
        delta = value.dt if hasattr(value, "dt") else \
            icalendar.vDuration.from_ical(str(value))  # type: ignore[no-untyped-call]
    except Exception:  # noqa: BLE001 - a broken hint is ignored, not fatal
        return None
    return delta if isinstance(delta, dt.timedelta) and delta > dt.timedelta(0) else None


_BLOCK = re.compile(r"^BEGIN:(VEVENT|VTIMEZONE)[ \t]*\r?\n.*?^END:\1[ \t]*(?:\r?\n|\Z)",
                    re.IGNORECASE | re.MULTILINE | re.DOTALL)
_HEADER_PROPS = ("X-WR-CALNAME", "X-WR-TIMEZONE", "REFRESH-INTERVAL", "X-PUBLISHED-TTL")


def _complete(text: str) -> bool:
    """The feed ends its last event and then the calendar (not a cut-off download)."""
    upper = text.upper()
    last_begin = upper.rfind("BEGIN:VEVENT")
    return upper.rfind("END:VCALENDAR") > max(upper.rfind("END:VEVENT"), last_begin) \
        and upper.rfind("END:VEVENT") > last_begin


def _salvage(text: str, quarantined: list[Quarantined]) -> list[Any]:
    """A complete feed icalendar refuses as a whole (one broken component): each VEVENT
    and VTIMEZONE read on its own, the broken ones quarantined. A feed that does not end
    with END:VCALENDAR is never salvaged: a cut-off download must not drop events."""
    cal = icalendar.Calendar()
    unfolded = re.sub(r"\r?\n[ \t]", "", text)
    for line in unfolded.splitlines():
        name, sep, value = line.partition(":")
        prop = name.split(";", 1)[0].strip().upper()
        if sep and prop in _HEADER_PROPS and prop not in cal:
            try:
                cal.add(prop, icalendar.vDuration.from_ical(value.strip())  # type: ignore[no-untyped-call]
                        if prop in ("REFRESH-INTERVAL", "X-PUBLISHED-TTL") else value.strip())
            except Exception:  # noqa: BLE001 - a broken hint is ignored
                continue
    for match in _BLOCK.finditer(text):
        block = match.group(0)
        try:
            component = icalendar.Component.from_ical(block)
        except Exception as exc:  # noqa: BLE001 - this component is the broken one
            if match.group(1).upper() == "VTIMEZONE":  # its events fall back to the TZID
                continue
            uid = re.search(r"^UID:(.*)$", re.sub(r"\r?\n[ \t]", "", block),
                            re.IGNORECASE | re.MULTILINE)
            remote_id = uid.group(1).strip() if uid else \
                "nouid:" + hashlib.sha256(block.encode()).hexdigest()[:16]
            quarantined.append(Quarantined(remote_id, unreadable_reason(exc, block)))
            continue
        cal.add_component(component)
    return [cal]


def _calendars(text: str, quarantined: list[Quarantined]) -> list[Any]:
    if "BEGIN:VCALENDAR" not in text.upper():
        raise FeedInvalid("the answer is not an iCalendar feed (no BEGIN:VCALENDAR); check "
                          "that the address is the calendar's .ics link")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            found = list(icalendar.Calendar.from_ical(text, multiple=True))
        except Exception as exc:  # noqa: BLE001 - the whole file is unreadable
            if not _complete(text):
                raise FeedInvalid(f"the feed cannot be read: "
                                  f"{unreadable_reason(exc, text)}") from exc
            found = _salvage(text, quarantined)
    if not found:
        raise FeedInvalid("the feed cannot be read: no complete VCALENDAR in it (the file "
                          "may be cut off)")
    return found


def _standard(cal: Any, notes: list[str]) -> Any:
    if "X-WR-TIMEZONE" not in cal:
        return cal
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return x_wr_timezone.to_standard(cal)
    except Exception as exc:  # noqa: BLE001 - an unknown zone name: keep floating times
        notes.append(f"X-WR-TIMEZONE could not be applied ({type(exc).__name__}); floating "
                     f"times read in the user's zone")
        return cal


def _text_of(group: list[Any], timezones: list[Any]) -> str:
    """One event's own calendar: its components and the VTIMEZONEs they name."""
    wrapper = icalendar.Calendar()
    wrapper.add("PRODID", "-//calsync//subscribed calendar//EN")
    wrapper.add("VERSION", "2.0")
    named = b"".join(event.to_ical() for event in group)
    for tz in timezones:
        tzid = str(tz.get("TZID") or "")
        if tzid and (f"TZID={tzid}".encode() in named or f'TZID="{tzid}"'.encode() in named):
            wrapper.add_component(tz)
    for event in group:
        wrapper.add_component(event)
    text: str = wrapper.to_ical().decode("utf-8")
    return text


def _groups(events: list[Any]) -> list[tuple[str, list[Any]]]:
    """(remote id, components) per event: a master with its overrides by UID; a second
    master with the same UID stands alone (``UID#2``); no UID: named by its content."""
    out: list[tuple[str, list[Any]]] = []
    by_uid: dict[str, list[Any]] = {}
    seen: dict[str, int] = {}
    for comp in events:
        uid = str(comp.get("UID") or "").strip()
        if not uid:
            digest = hashlib.sha256(comp.to_ical()).hexdigest()[:16]
            out.append((f"nouid:{digest}", [comp]))
            continue
        group = by_uid.get(uid)
        is_override = "RECURRENCE-ID" in comp
        if group is not None and (is_override or all("RECURRENCE-ID" in c for c in group)):
            group.append(comp)
            continue
        seen[uid] = seen.get(uid, 0) + 1
        rid = uid if seen[uid] == 1 else f"{uid}#{seen[uid]}"
        by_uid[uid] = [comp]
        out.append((rid, by_uid[uid]))
    return out


def read_feed(raw: bytes | str, window: Window, options: ParseOptions) -> FeedContents:
    """Every event of the feed, expanded inside ``window``. Raises :class:`FeedInvalid`
    when the answer is no iCalendar feed; an unreadable event is quarantined (named by
    component and property, none of its text), the others are kept."""
    text = decode(raw)
    out = FeedContents()
    events: list[Any] = []
    timezones: list[Any] = []
    for cal in _calendars(text, out.quarantined):
        if out.name is None and cal.get("X-WR-CALNAME"):
            out.name = str(cal.get("X-WR-CALNAME"))[:200]
        for prop in ("REFRESH-INTERVAL", "X-PUBLISHED-TTL"):
            if out.refresh is None and cal.get(prop) is not None:
                out.refresh = _duration(cal.get(prop))
        cal = _standard(cal, out.notes)
        timezones.extend(cal.walk("VTIMEZONE"))
        events.extend(cal.walk("VEVENT"))
    for remote_id, group in _groups(events):
        try:
            source = _text_of(group, timezones)
        except Exception as exc:  # noqa: BLE001 - a value icalendar cannot write back
            out.quarantined.append(Quarantined(remote_id, unreadable_reason(exc)))
            continue
        parsed = parse_resource(source, remote_id, None, window, options)
        out.notes.extend(parsed.notes)
        if parsed.quarantined is not None:
            out.quarantined.append(parsed.quarantined)
        elif parsed.event is not None:
            parsed.event.raw = None  # the source is enough; keep one copy of the text
            out.events.append(parsed.event)
    return out
