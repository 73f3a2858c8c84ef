"""Windows time zone names (what Outlook/Exchange store) <-> IANA names (what calsync uses).

A compact table of the common zones from the CLDR ``windowsZones`` mapping (territory
"001", the golden zone of each Windows name). Unknown Windows names fall back to UTC with
the caller told (``None``), unknown IANA names are written as UTC instants.
"""

from __future__ import annotations

WINDOWS_TO_IANA: dict[str, str] = {
    "UTC": "UTC",
    "Dateline Standard Time": "Etc/GMT+12",
    "Hawaiian Standard Time": "Pacific/Honolulu",
    "Alaskan Standard Time": "America/Anchorage",
    "Pacific Standard Time": "America/Los_Angeles",
    "US Mountain Standard Time": "America/Phoenix",
    "Mountain Standard Time": "America/Denver",
    "Central Standard Time": "America/Chicago",
    "Central America Standard Time": "America/Guatemala",
    "Canada Central Standard Time": "America/Regina",
    "Central Standard Time (Mexico)": "America/Mexico_City",
    "Eastern Standard Time": "America/New_York",
    "US Eastern Standard Time": "America/Indianapolis",
    "Atlantic Standard Time": "America/Halifax",
    "Newfoundland Standard Time": "America/St_Johns",
    "E. South America Standard Time": "America/Sao_Paulo",
    "Argentina Standard Time": "America/Buenos_Aires",
    "GMT Standard Time": "Europe/London",
    "Greenwich Standard Time": "Atlantic/Reykjavik",
    "W. Europe Standard Time": "Europe/Berlin",
    "Central Europe Standard Time": "Europe/Budapest",
    "Romance Standard Time": "Europe/Paris",
    "Central European Standard Time": "Europe/Warsaw",
    "GTB Standard Time": "Europe/Bucharest",
    "FLE Standard Time": "Europe/Kiev",
    "E. Europe Standard Time": "Europe/Chisinau",
    "Russian Standard Time": "Europe/Moscow",
    "Turkey Standard Time": "Europe/Istanbul",
    "Israel Standard Time": "Asia/Jerusalem",
    "South Africa Standard Time": "Africa/Johannesburg",
    "Egypt Standard Time": "Africa/Cairo",
    "Arabian Standard Time": "Asia/Dubai",
    "India Standard Time": "Asia/Calcutta",
    "China Standard Time": "Asia/Shanghai",
    "Singapore Standard Time": "Asia/Singapore",
    "Tokyo Standard Time": "Asia/Tokyo",
    "Korea Standard Time": "Asia/Seoul",
    "AUS Eastern Standard Time": "Australia/Sydney",
    "E. Australia Standard Time": "Australia/Brisbane",
    "W. Australia Standard Time": "Australia/Perth",
    "New Zealand Standard Time": "Pacific/Auckland",
}

# IANA aliases that CLDR lists under a Windows name besides the golden zone.
_EXTRA_IANA: dict[str, str] = {
    "Etc/UTC": "UTC", "Etc/GMT": "UTC", "GMT": "UTC", "Z": "UTC",
    "Asia/Kolkata": "India Standard Time", "Europe/Kyiv": "FLE Standard Time",
    "America/Indiana/Indianapolis": "US Eastern Standard Time",
    "America/Argentina/Buenos_Aires": "Argentina Standard Time",
    "Europe/Amsterdam": "W. Europe Standard Time", "Europe/Rome": "W. Europe Standard Time",
    "Europe/Vienna": "W. Europe Standard Time", "Europe/Zurich": "W. Europe Standard Time",
    "Europe/Stockholm": "W. Europe Standard Time", "Europe/Oslo": "W. Europe Standard Time",
    "Europe/Madrid": "Romance Standard Time", "Europe/Brussels": "Romance Standard Time",
    "Europe/Copenhagen": "Romance Standard Time", "Europe/Dublin": "GMT Standard Time",
    "Europe/Lisbon": "GMT Standard Time", "America/Toronto": "Eastern Standard Time",
    "America/Detroit": "Eastern Standard Time", "America/Vancouver": "Pacific Standard Time",
    "America/Winnipeg": "Central Standard Time", "America/Edmonton": "Mountain Standard Time",
    "America/Boise": "Mountain Standard Time",
}

IANA_TO_WINDOWS: dict[str, str] = {iana: win for win, iana in WINDOWS_TO_IANA.items()}
IANA_TO_WINDOWS.update({k: v for k, v in _EXTRA_IANA.items() if v in WINDOWS_TO_IANA})
IANA_TO_WINDOWS.update({k: "UTC" for k, v in _EXTRA_IANA.items() if v == "UTC"})


def windows_to_iana(name: str | None) -> str | None:
    """The IANA zone for a Windows zone name (or an IANA name passed through), else None."""
    if not name:
        return None
    if name in WINDOWS_TO_IANA:
        return WINDOWS_TO_IANA[name]
    if "/" in name or name == "UTC":
        return name
    return None


def iana_to_windows(name: str) -> str | None:
    """The Windows zone name Outlook shows for an IANA zone, else None."""
    return IANA_TO_WINDOWS.get(name)
