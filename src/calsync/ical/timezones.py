"""TZID resolution for what real calendar software writes.

icalendar already resolves IANA names, VTIMEZONE blocks and the Windows standard names
("W. Europe Standard Time"). This module adds what is left: Windows *display* names
("(UTC-05:00) Eastern Time (US & Canada)", "Amsterdam, Berlin, ..."), offset-style
names ("GMT-05.00/-04.00", "UTC+11", "(GMT +01:00)"), and gives up with ``None`` for
made-up names, which the parser then treats as floating time in the user's zone.
"""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

# Windows display names (the city lists Outlook writes when it has no standard name).
# The key is the text after the "(UTC±hh:mm) " prefix, lower-cased.
_DISPLAY_NAMES = {
    "amsterdam, berlin, bern, rome, stockholm, vienna": "Europe/Berlin",
    "belgrade, bratislava, budapest, ljubljana, prague": "Europe/Budapest",
    "brussels, copenhagen, madrid, paris": "Europe/Paris",
    "sarajevo, skopje, warsaw, zagreb": "Europe/Warsaw",
    "dublin, edinburgh, lisbon, london": "Europe/London",
    "athens, bucharest": "Europe/Bucharest",
    "helsinki, kyiv, riga, sofia, tallinn, vilnius": "Europe/Helsinki",
    "moscow, st. petersburg": "Europe/Moscow",
    "eastern time (us & canada)": "America/New_York",
    "central time (us & canada)": "America/Chicago",
    "mountain time (us & canada)": "America/Denver",
    "pacific time (us & canada)": "America/Los_Angeles",
    "arizona": "America/Phoenix",
    "alaska": "America/Anchorage",
    "hawaii": "Pacific/Honolulu",
    "atlantic time (canada)": "America/Halifax",
    "canberra, melbourne, sydney": "Australia/Sydney",
    "brisbane": "Australia/Brisbane",
    "perth": "Australia/Perth",
    "osaka, sapporo, tokyo": "Asia/Tokyo",
    "beijing, chongqing, hong kong, urumqi": "Asia/Shanghai",
    "kuala lumpur, singapore": "Asia/Singapore",
    "chennai, kolkata, mumbai, new delhi": "Asia/Kolkata",
    "abu dhabi, muscat": "Asia/Dubai",
    "auckland, wellington": "Pacific/Auckland",
    "coordinated universal time": "UTC",
    "eastern": "America/New_York",
    "central": "America/Chicago",
    "mountain": "America/Denver",
    "pacific": "America/Los_Angeles",
}
_LOWER_WINDOWS = {k.lower(): v for k, v in WINDOWS_TO_OLSON.items()}

# "GMT-05.00/-04.00" (standard/daylight offsets, as Lotus and old Exchange wrote them):
# the usual zone with exactly that pair.
_OFFSET_PAIRS = {
    (-5 * 60, -4 * 60): "America/New_York", (-6 * 60, -5 * 60): "America/Chicago",
    (-7 * 60, -6 * 60): "America/Denver", (-8 * 60, -7 * 60): "America/Los_Angeles",
    (-9 * 60, -8 * 60): "America/Anchorage", (-4 * 60, -3 * 60): "America/Halifax",
    (0, 60): "Europe/London", (60, 120): "Europe/Berlin", (120, 180): "Europe/Helsinki",
    (600, 660): "Australia/Sydney", (720, 780): "Pacific/Auckland",
}
_PAIR = re.compile(r"^(?:utc|gmt)\s*([+-])(\d{1,2})[.:]?(\d{2})\s*/\s*([+-])(\d{1,2})[.:]?(\d{2})$",
                   re.IGNORECASE)
_DISPLAY_PREFIX = re.compile(r"^\((?:utc|gmt)\s*[+-]?[\d:.]*\)\s*", re.IGNORECASE)
_OFFSET = re.compile(r"^\(?\s*(?:utc|gmt)\s*([+-])\s*(\d{1,2})(?:[:.]?(\d{2}))?", re.IGNORECASE)


def _zone(name: str) -> dt.tzinfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def resolve_tzid(tzid: str) -> tuple[dt.tzinfo | None, str]:
    """Map a TZID nobody defined to a tzinfo, with a note saying how.

    Returns ``(tzinfo, note)``; tzinfo is None when the name means nothing known.
    """
    name = tzid.strip().strip('"').strip()
    if not name:
        return None, "empty TZID"
    zone = _zone(name)
    if zone is not None:
        return zone, f"TZID {tzid!r} is the IANA zone {name}"
    if name.lower() in _LOWER_WINDOWS:
        iana = _LOWER_WINDOWS[name.lower()]
        return _zone(iana), f"Windows TZID {tzid!r} mapped to {iana}"
    rest = _DISPLAY_PREFIX.sub("", name).lower().strip()
    if rest in _DISPLAY_NAMES:
        iana = _DISPLAY_NAMES[rest]
        return _zone(iana), f"Windows display name {tzid!r} mapped to {iana}"
    for known, iana in _DISPLAY_NAMES.items():
        if "," in known and rest.startswith(known.split(",")[0] + ","):
            return _zone(iana), f"Windows display name {tzid!r} mapped to {iana}"
    if "/" in name:  # vendor prefixes such as /softwarestudio.org/Olson_2001/America/Chicago
        parts = name.split("/")
        for i in range(len(parts) - 1):
            zone = _zone("/".join(parts[i:]))
            if zone is not None:
                iana = "/".join(parts[i:])
                return zone, f"TZID {tzid!r} read as {iana}"
    pair = _PAIR.match(name)
    if pair:
        std = (-1 if pair.group(1) == "-" else 1) * (int(pair.group(2)) * 60 + int(pair.group(3)))
        dst = (-1 if pair.group(4) == "-" else 1) * (int(pair.group(5)) * 60 + int(pair.group(6)))
        if (std, dst) in _OFFSET_PAIRS:
            iana = _OFFSET_PAIRS[(std, dst)]
            return _zone(iana), f"TZID {tzid!r} (standard/daylight offsets) read as {iana}"
    match = _OFFSET.match(name)
    if match:
        sign = -1 if match.group(1) == "-" else 1
        hours, minutes = int(match.group(2)), int(match.group(3) or 0)
        if hours <= 14 and minutes < 60:
            offset = dt.timedelta(hours=hours, minutes=minutes) * sign
            return (dt.timezone(offset),
                    f"TZID {tzid!r} read as the fixed offset UTC{match.group(1)}"
                    f"{hours:02d}:{minutes:02d} (no daylight saving)")
    return None, f"unknown TZID {tzid!r} without VTIMEZONE"
