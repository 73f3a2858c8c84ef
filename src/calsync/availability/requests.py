"""Parsing availability requests (API bodies, query strings, CLI arguments).

Each parser raises :class:`calsync.errors.ValidationError` naming the request, the field
and why. Limits keep one request bounded: at most ``MAX_USERS`` users, a check range of at
most ``MAX_CHECK_DAYS`` days, a search or schedule range of at most ``MAX_SEARCH_DAYS``.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from calsync.errors import ValidationError
from calsync.timezones import UTC

MAX_USERS = 500
MAX_CHECK_DAYS = 366
MAX_SEARCH_DAYS = 62
MIN_DURATION_MINUTES = 5
MAX_DURATION_MINUTES = 24 * 60


@dataclass(frozen=True)
class RangeRequest:
    user_ids: tuple[str, ...]
    start: dt.datetime
    end: dt.datetime
    duration: dt.timedelta | None = None


def parse_instant(value: Any, record: str, field: str) -> dt.datetime:
    """An ISO 8601 date-time with a UTC offset (``Z`` allowed), returned in UTC."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(record, field, "is required: an ISO 8601 date-time with offset")
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValidationError(record, field, f"{value!r} is not an ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        raise ValidationError(record, field, f"{value!r} has no UTC offset (add one, e.g. Z)")
    return parsed.astimezone(UTC)


def _range(raw: dict[str, Any], record: str, max_days: int) -> tuple[dt.datetime, dt.datetime]:
    start = parse_instant(raw.get("start"), record, "start")
    end = parse_instant(raw.get("end"), record, "end")
    if end <= start:
        raise ValidationError(record, "end", "must be after start")
    if end - start > dt.timedelta(days=max_days):
        raise ValidationError(record, "end", f"the range is longer than {max_days} days")
    return start, end


def _user_ids(value: Any, record: str, field: str = "user_ids") -> tuple[str, ...]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(u, str) and u.strip() for u in value)):
        raise ValidationError(record, field, "expected a non-empty list of user ids")
    ids = tuple(dict.fromkeys(value))
    if len(ids) > MAX_USERS:
        raise ValidationError(record, field, f"more than {MAX_USERS} users")
    return ids


def _object(raw: Any, record: str, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValidationError(record, "*", "expected a JSON object")
    for key in sorted(raw, key=str):  # a typo must not be ignored silently
        if key not in allowed:
            raise ValidationError(record, str(key),
                                  f"unknown field; expected {', '.join(sorted(allowed))}")
    return raw


CHECK_FIELDS = frozenset({"user_ids", "start", "end"})
SEARCH_FIELDS = CHECK_FIELDS | {"duration_minutes"}


def parse_check(raw: Any, record: str = "availability check") -> RangeRequest:
    body = _object(raw, record, CHECK_FIELDS)
    ids = _user_ids(body.get("user_ids"), record)
    return RangeRequest(ids, *_range(body, record, MAX_CHECK_DAYS))


def parse_search(raw: Any, record: str = "availability search") -> RangeRequest:
    body = _object(raw, record, SEARCH_FIELDS)
    ids = _user_ids(body.get("user_ids"), record)
    start, end = _range(body, record, MAX_SEARCH_DAYS)
    minutes = body.get("duration_minutes")
    if (not isinstance(minutes, int) or isinstance(minutes, bool)
            or not MIN_DURATION_MINUTES <= minutes <= MAX_DURATION_MINUTES):
        raise ValidationError(record, "duration_minutes",
                              f"expected whole minutes from {MIN_DURATION_MINUTES} "
                              f"to {MAX_DURATION_MINUTES}, got {minutes!r}")
    return RangeRequest(ids, start, end, dt.timedelta(minutes=minutes))


_UNENCODED_PLUS = re.compile(r"(T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}:\d{2})$")


def _query_instant(value: str | None) -> str | None:
    """A '+' offset sent unencoded in a query string arrives as a space: take it back."""
    return _UNENCODED_PLUS.sub(r"\1+\2", value) if value else value


def parse_schedule_query(users: str | None, start: str | None, end: str | None,
                         record: str = "schedule query") -> RangeRequest:
    start, end = _query_instant(start), _query_instant(end)
    ids = [u.strip() for u in (users or "").split(",") if u.strip()]
    if not ids:
        raise ValidationError(record, "users", "expected a comma-separated list of user ids")
    return RangeRequest(_user_ids(ids, record, "users"),
                        *_range({"start": start, "end": end}, record, MAX_SEARCH_DAYS))
