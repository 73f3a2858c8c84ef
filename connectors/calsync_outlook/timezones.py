"""Time zone names on the Graph edge: Windows names (what Exchange stores) <-> IANA names
(what calsync uses), and which name to send when writing.

Both tables are CLDR's ``windowsZones`` mapping, complete, not a hand-picked subset:
- Windows -> IANA: the golden zone (territory "001") of every Windows name, as icalendar
  ships it (``icalendar.timezone.windows_to_olson``), completed by tzlocal's copy of the same
  CLDR file for Windows names added after icalendar's snapshot.
- IANA -> Windows: every IANA zone CLDR lists under a Windows name, territories and
  backward-compatible aliases included (``Asia/Manila`` -> ``Singapore Standard Time``,
  ``Asia/Jakarta`` -> ``SE Asia Standard Time``), from tzlocal (an APScheduler 3 dependency,
  generated from CLDR).

Writes send the IANA name itself when Graph documents it as accepted (the "additional time
zones" of the ``dateTimeTimeZone`` resource), else the CLDR Windows name; a zone with
neither is written as a UTC instant.
"""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON
from tzlocal.windows_tz import tz_win, win_tz

WINDOWS_TO_IANA: dict[str, str] = {**win_tz, **WINDOWS_TO_OLSON}

# UTC spellings: Graph answers "UTC" (and "tzone://Microsoft/Utc" for some events).
_UTC_NAMES = {"UTC", "Etc/UTC", "Etc/GMT", "GMT", "Z", "Etc/Zulu", "Zulu", "Etc/UCT", "UCT",
              "Universal", "Etc/Universal", "tzone://Microsoft/Utc"}

# Windows zones that newer CLDR releases split off (2025) and that Exchange may not know yet:
# writes use the long-established zone with the same rules, as CLDR did before the split.
_WRITE_AS: dict[str, str] = {"Alberta Standard Time": "Mountain Standard Time",
                             "British Columbia Standard Time": "Pacific Standard Time",
                             "Manitoba Standard Time": "Central Standard Time"}

IANA_TO_WINDOWS: dict[str, str] = {iana: _WRITE_AS.get(win, win)
                                   for iana, win in tz_win.items() if iana}
IANA_TO_WINDOWS.update({iana: win for win, iana in WINDOWS_TO_IANA.items()
                        if iana not in IANA_TO_WINDOWS})
IANA_TO_WINDOWS.update({name: "UTC" for name in _UTC_NAMES})

# The IANA names Graph's calendar API accepts in dateTimeTimeZone.timeZone besides the
# Windows names ("Additional time zones", learn.microsoft.com/graph/api/resources/
# datetimetimezone). Spellings the page leaves ambiguous (Kiev/Kyiv, Rangoon/Yangon,
# Astana/Almaty) are left out: those zones are sent by their Windows name.
GRAPH_IANA_NAMES: frozenset[str] = frozenset("""
Etc/GMT+12 Etc/GMT+11 Pacific/Honolulu America/Anchorage America/Santa_Isabel
America/Los_Angeles America/Phoenix America/Chihuahua America/Denver America/Guatemala
America/Chicago America/Mexico_City America/Regina America/Bogota America/New_York
America/Indiana/Indianapolis America/Caracas America/Asuncion America/Halifax America/Cuiaba
America/La_Paz America/Santiago America/St_Johns America/Sao_Paulo
America/Argentina/Buenos_Aires America/Cayenne America/Godthab America/Montevideo
America/Bahia Etc/GMT+2 Atlantic/Azores Atlantic/Cape_Verde Africa/Casablanca Etc/GMT
Europe/London Atlantic/Reykjavik Europe/Berlin Europe/Budapest Europe/Paris Europe/Warsaw
Africa/Lagos Africa/Windhoek Europe/Bucharest Asia/Beirut Africa/Cairo Asia/Damascus
Africa/Johannesburg Europe/Istanbul Asia/Jerusalem Asia/Amman Asia/Baghdad
Europe/Kaliningrad Asia/Riyadh Africa/Nairobi Asia/Tehran Asia/Dubai Asia/Baku
Europe/Moscow Indian/Mauritius Asia/Tbilisi Asia/Yerevan Asia/Kabul Asia/Karachi
Asia/Tashkent Asia/Kolkata Asia/Colombo Asia/Kathmandu Asia/Dhaka Asia/Yekaterinburg
Asia/Bangkok Asia/Novosibirsk Asia/Shanghai Asia/Krasnoyarsk Asia/Singapore Australia/Perth
Asia/Taipei Asia/Ulaanbaatar Asia/Irkutsk Asia/Tokyo Asia/Seoul Australia/Adelaide
Australia/Darwin Australia/Brisbane Australia/Sydney Pacific/Port_Moresby Australia/Hobart
Asia/Yakutsk Pacific/Guadalcanal Asia/Vladivostok Pacific/Auckland Etc/GMT-12 Pacific/Fiji
Asia/Magadan Pacific/Tongatapu Pacific/Apia Pacific/Kiritimati
""".split())


def _known_iana(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def windows_to_iana(name: str | None) -> str | None:
    """The IANA zone for a Windows zone name (or an IANA name passed through), else None."""
    if not name:
        return None
    if name in _UTC_NAMES:
        return "UTC"
    if name in WINDOWS_TO_IANA:
        return WINDOWS_TO_IANA[name]
    if "/" in name and _known_iana(name):
        return name
    return None


def iana_to_windows(name: str) -> str | None:
    """The Windows zone name CLDR maps an IANA zone to, else None."""
    return IANA_TO_WINDOWS.get(name)


def graph_zone_name(iana: str) -> str | None:
    """The name to send Graph for ``iana`` in a write: the IANA name where Graph accepts
    it, else the Windows name; None when Graph knows the zone by neither."""
    if iana in _UTC_NAMES:
        return "UTC"
    if iana in GRAPH_IANA_NAMES:
        return iana
    return iana_to_windows(iana)
