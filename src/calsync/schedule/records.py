"""Pure parsing of incoming records (import file and API bodies, DESIGN 4.3).

Each ``parse_*`` function takes a JSON-like dict and returns a frozen record, or raises
:class:`ValidationError` naming the record, the field and why. No I/O here.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from dataclasses import dataclass
from typing import Any

from calsync.errors import ValidationError
from calsync.timezones import UTC, is_valid_tz, zone

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
JOB_STATUSES = ("scheduled", "completed", "cancelled")
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$")
MAX_TEXT = 20_000

# The fields each record may carry. Anything else is rejected by name: a typo such as
# "locaton" would otherwise drop the data without a word.
USER_FIELDS = frozenset({"id", "name", "email", "timezone", "private_mode", "working_hours",
                         "deleted"})
_ITEM_COMMON = frozenset({"id", "start", "end", "all_day", "timezone", "location", "notes",
                          "deleted"})
JOB_FIELDS = _ITEM_COMMON | {"title", "job_type", "account", "assignees", "status"}
TIME_OFF_FIELDS = _ITEM_COMMON | {"user", "reason"}
BLOCK_FIELDS = _ITEM_COMMON | {"user", "title"}


@dataclass(frozen=True)
class UserRecord:
    id: str
    name: str
    email: str | None
    timezone: str
    private_mode: bool
    working_hours: dict[str, list[list[str]]]
    deleted: bool = False


@dataclass(frozen=True)
class ItemRecord:
    """A job, time off or block, normalised. Instants are aware UTC."""

    kind: str  # job | time_off | block
    id: str
    title: str
    user_ids: tuple[str, ...]
    start_at: dt.datetime
    end_at: dt.datetime
    all_day: bool
    start_date: dt.date | None
    end_date: dt.date | None
    tzid: str | None  # None: take the first assignee's timezone
    job_type: str | None = None
    account: str | None = None
    location: str | None = None
    notes: str | None = None
    reason: str | None = None
    status: str = "scheduled"
    deleted: bool = False


class _Reader:
    """Field access that raises ValidationError with the record's name."""

    def __init__(self, raw: Any, record: str) -> None:
        self.record = record
        if not isinstance(raw, dict):
            raise ValidationError(record, "*", "expected a JSON object")
        self.raw = raw

    def fail(self, field: str, why: str) -> ValidationError:
        return ValidationError(self.record, field, why)

    def only(self, allowed: frozenset[str]) -> None:
        """Reject the first field (in sorted order) that the record does not know."""
        for key in sorted(self.raw, key=str):
            if key in allowed:
                continue
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f"did you mean {close[0]!r}?" if close else \
                f"expected {', '.join(sorted(allowed))}"
            raise self.fail(str(key), f"unknown field; {hint}")

    def text(self, field: str, required: bool = False, default: str | None = None) -> str | None:
        value = self.raw.get(field)
        if value is None:
            if required:
                raise self.fail(field, "is required")
            return default
        if not isinstance(value, str):
            raise self.fail(field, f"expected a string, got {type(value).__name__}")
        if required and not value.strip():
            raise self.fail(field, "must not be empty")
        if len(value) > MAX_TEXT:
            raise self.fail(field, f"longer than {MAX_TEXT} characters")
        if "\x00" in value:
            raise self.fail(field, "contains a NUL character")
        return value

    def boolean(self, field: str, default: bool) -> bool:
        value = self.raw.get(field, default)
        if not isinstance(value, bool):
            raise self.fail(field, f"expected true or false, got {value!r}")
        return value

    def ident(self, field: str = "id") -> str:
        value = self.text(field, required=True)
        assert value is not None
        if len(value) > 128 or "/" in value or value != value.strip():
            raise self.fail(field, "must be 1-128 characters, no '/' or surrounding spaces")
        return value


def record_name(section: str, index: int | None, raw: Any) -> str:
    rid = raw.get("id") if isinstance(raw, dict) else None
    where = f"{section}[{index}]" if index is not None else section
    return f"{where} (id={rid!r})" if rid is not None else where


def parse_user(raw: Any, record: str = "user") -> UserRecord:
    r = _Reader(raw, record)
    r.only(USER_FIELDS)
    uid = r.ident()
    deleted = r.boolean("deleted", False)
    if deleted:
        return UserRecord(uid, "", None, "UTC", True, {}, deleted=True)
    name = r.text("name", required=True)
    email = r.text("email")
    if email is not None and "@" not in email:
        raise r.fail("email", f"{email!r} is not an e-mail address")
    tzname = r.text("timezone", default="UTC")
    assert tzname is not None
    if not is_valid_tz(tzname):
        raise r.fail("timezone", f"{tzname!r} is not an IANA timezone name (e.g. America/Chicago)")
    hours = parse_working_hours(r, raw.get("working_hours"))
    return UserRecord(uid, name or "", email, tzname, r.boolean("private_mode", True), hours)


def parse_working_hours(r: _Reader, value: Any) -> dict[str, list[list[str]]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise r.fail("working_hours", "expected an object of weekday -> [[start, end], ...]")
    out: dict[str, list[list[str]]] = {}
    for day, spans in value.items():
        field = f"working_hours.{day}"
        if day not in WEEKDAYS:
            raise r.fail(field, f"unknown weekday; use one of {', '.join(WEEKDAYS)}")
        if not isinstance(spans, list):
            raise r.fail(field, "expected a list of [start, end] pairs")
        clean: list[list[str]] = []
        for i, span in enumerate(spans):
            if (not isinstance(span, list) or len(span) != 2
                    or not all(isinstance(s, str) and _HHMM.match(s) for s in span)):
                raise r.fail(f"{field}[{i}]", f"expected [\"HH:MM\", \"HH:MM\"], got {span!r}")
            if span[0] >= span[1]:
                raise r.fail(f"{field}[{i}]", f"start {span[0]} is not before end {span[1]}")
            clean.append([span[0], span[1]])
        clean.sort()
        for a, b in zip(clean, clean[1:]):
            if b[0] < a[1]:
                raise r.fail(field, f"spans {a} and {b} overlap")
        out[day] = clean
    return out


def _instant(r: _Reader, field: str, tzid: str | None) -> dt.datetime:
    value = r.text(field, required=True)
    assert value is not None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise r.fail(field, f"{value!r} is not an ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        if tzid is None:
            raise r.fail(field, f"{value!r} has no UTC offset (add one, e.g. -06:00)")
        parsed = parsed.replace(tzinfo=zone(tzid))
    return parsed.astimezone(UTC)


def _date(r: _Reader, field: str) -> dt.date:
    value = r.text(field, required=True)
    assert value is not None
    try:
        return dt.date.fromisoformat(value[:10]) if len(value) == 10 else _bad_date(r, field, value)
    except ValueError:
        raise r.fail(field, f"{value!r} is not a date (YYYY-MM-DD)") from None


def _bad_date(r: _Reader, field: str, value: str) -> dt.date:
    raise r.fail(field, f"{value!r} is not a date (YYYY-MM-DD) as all_day needs")


def _tz_field(r: _Reader) -> str | None:
    tzid = r.text("timezone")
    if tzid is not None and not is_valid_tz(tzid):
        raise r.fail("timezone", f"{tzid!r} is not an IANA timezone name")
    return tzid


def _span(r: _Reader, all_day: bool, tzid: str | None
          ) -> tuple[dt.datetime, dt.datetime, dt.date | None, dt.date | None]:
    """Parse start/end. All-day spans keep dates; instants are filled in by the store
    (they depend on the user's timezone)."""
    if all_day:
        sd, ed = _date(r, "start"), _date(r, "end")
        if ed <= sd:
            raise r.fail("end", f"{ed} is not after start {sd} (all-day end is exclusive)")
        placeholder = dt.datetime(sd.year, sd.month, sd.day, tzinfo=UTC)
        return placeholder, dt.datetime(ed.year, ed.month, ed.day, tzinfo=UTC), sd, ed
    start, end = _instant(r, "start", tzid), _instant(r, "end", tzid)
    if end <= start:
        raise r.fail("end", f"{r.raw['end']!r} is not after start {r.raw['start']!r}")
    if end - start > dt.timedelta(days=366):
        raise r.fail("end", "the item lasts more than a year")
    return start, end, None, None


def parse_job(raw: Any, record: str = "job") -> ItemRecord:
    r = _Reader(raw, record)
    r.only(JOB_FIELDS)
    jid = r.ident()
    if r.boolean("deleted", False):
        return _deleted("job", jid)
    assignees = raw.get("assignees")
    if (not isinstance(assignees, list) or not assignees
            or not all(isinstance(a, str) and a for a in assignees)):
        raise r.fail("assignees", "expected a non-empty list of user ids")
    status = r.text("status", default="scheduled")
    if status not in JOB_STATUSES:
        raise r.fail("status", f"{status!r} is not one of {', '.join(JOB_STATUSES)}")
    tzid = _tz_field(r)
    all_day = r.boolean("all_day", False)
    start, end, sd, ed = _span(r, all_day, tzid)
    return ItemRecord(
        kind="job", id=jid, title=r.text("title", default="") or "",
        user_ids=tuple(dict.fromkeys(assignees)), start_at=start, end_at=end,
        all_day=all_day, start_date=sd, end_date=ed, tzid=tzid,
        job_type=r.text("job_type"), account=r.text("account"),
        location=r.text("location"), notes=r.text("notes"), status=status or "scheduled",
    )


def _owned(r: _Reader, kind: str, title_field: str) -> ItemRecord:
    r.only(TIME_OFF_FIELDS if kind == "time_off" else BLOCK_FIELDS)
    iid = r.ident()
    if r.boolean("deleted", False):
        return _deleted(kind, iid)
    user = r.ident("user")
    tzid = _tz_field(r)
    all_day = r.boolean("all_day", kind == "time_off" and _looks_like_date(r.raw.get("start")))
    start, end, sd, ed = _span(r, all_day, tzid)
    text = r.text(title_field, default="") or ""
    return ItemRecord(
        kind=kind, id=iid, title=text if kind == "block" else "", user_ids=(user,),
        start_at=start, end_at=end, all_day=all_day, start_date=sd, end_date=ed, tzid=tzid,
        reason=text if kind == "time_off" else None, location=r.text("location"),
        notes=r.text("notes"),
    )


def _looks_like_date(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 10


def parse_time_off(raw: Any, record: str = "time_off") -> ItemRecord:
    return _owned(_Reader(raw, record), "time_off", "reason")


def parse_block(raw: Any, record: str = "block") -> ItemRecord:
    return _owned(_Reader(raw, record), "block", "title")


def _deleted(kind: str, iid: str) -> ItemRecord:
    epoch = dt.datetime(1970, 1, 1, tzinfo=UTC)
    return ItemRecord(kind, iid, "", (), epoch, epoch, False, None, None, None, deleted=True)


PARSERS = {"job": parse_job, "time_off": parse_time_off, "block": parse_block}
