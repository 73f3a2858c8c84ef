"""Timezone names: validation at the edge (pytz's list) and zoneinfo for arithmetic."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pytz

UTC = dt.timezone.utc


def is_valid_tz(name: str) -> bool:
    if name not in pytz.all_timezones_set:
        return False
    try:
        zone(name)
    except ZoneInfoNotFoundError:
        return False
    return True


@lru_cache(maxsize=1024)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def tz_name(tz: Any) -> str | None:
    """The IANA name of a tzinfo (zoneinfo or pytz), or None when it has none."""
    key = getattr(tz, "key", None) or getattr(tz, "zone", None)
    return str(key) if key else None


def to_utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        raise ValueError("naive datetime")
    return value.astimezone(UTC)


def localize(naive: dt.datetime, tzid: str) -> dt.datetime:
    """Attach a zone to a wall-clock time (fold=0: the first of an ambiguous pair)."""
    return naive.replace(tzinfo=zone(tzid))
