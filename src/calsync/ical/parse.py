"""Normalise iCalendar objects into :class:`RemoteEvent` values. Pure: no I/O.

``parse_calendar`` reads any iCalendar text (lenient: broken encodings, stray lines, bare
VEVENTs, several VCALENDARs) and returns one :class:`RemoteEvent` per UID, with
occurrences expanded inside the window, plus a problem per unusable event (which
property, what was wrong) and notes on guesses it made (TZIDs, floating times).
``parse_resource`` applies it to one CalDAV resource: an event, a :class:`Quarantined`
entry, or nothing (VTODO/VJOURNAL-only objects are not events).

Problems and notes end up in logs and in ``calendars.last_error``-like places, so they name
the component (``VEVENT UID='…'``) and the property that failed, and never carry the
event's text: values of SUMMARY, DESCRIPTION, LOCATION, ORGANIZER, ATTENDEE and the like
are cut out of every message, and so is any quoted fragment that is not a date, time or
rule token (see :func:`safe_message`).
"""

from __future__ import annotations

import datetime as dt
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, cast
from zoneinfo import ZoneInfo

import icalendar
import recurring_ical_events

from calsync.ical.timezones import resolve_tzid
from calsync.sync.connector import (
    BusyStatus,
    EventStatus,
    Occurrence,
    Quarantined,
    RemoteEvent,
    Window,
)

UTC = dt.timezone.utc
KEY_PROPERTY = "X-CALSYNC-KEY"
# Properties whose damage makes the busy time unknowable: the event is quarantined.
_VITAL = ("DTSTART", "DTEND", "DURATION", "RRULE", "RDATE", "EXDATE", "RECURRENCE-ID")
_DATE_PROPS = ("DTSTART", "DTEND", "RECURRENCE-ID", "EXDATE", "RDATE")
_BUSY_STATUS: dict[str, BusyStatus] = {
    "FREE": "free", "TENTATIVE": "tentative", "OOF": "oof", "BUSY": "busy",
    "WORKINGELSEWHERE": "workingElsewhere",
}
_PARTSTAT = {"ACCEPTED": "accepted", "DECLINED": "declined", "TENTATIVE": "tentative"}


@dataclass(frozen=True)
class ParseOptions:
    """How to read objects: the zone for floating times, the account's own addresses
    (to find the owner's PARTSTAT) and the bound on expanded occurrences."""

    default_tz: dt.tzinfo = UTC
    owner_emails: frozenset[str] = frozenset()
    max_occurrences: int = 1000


@dataclass
class CalendarParse:
    events: list[RemoteEvent] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one per unusable event
    notes: list[str] = field(default_factory=list)  # guesses made while reading


class _Unusable(Exception):
    """An event whose busy time cannot be known."""


# Properties whose values are the event's private details (section 7 of the design).
_PRIVATE_PROPS = ("SUMMARY", "DESCRIPTION", "LOCATION", "COMMENT", "CONTACT", "ORGANIZER",
                  "ATTENDEE", "RESOURCES", "CATEGORIES", "X-ALT-DESC", "URL", "ATTACH",
                  "X-APPLE-STRUCTURED-LOCATION", "GEO")
_PRIVATE_LINE = re.compile(r"^(?:" + "|".join(re.escape(p) for p in _PRIVATE_PROPS)
                           + r")(?=[;:])(.*)$", re.IGNORECASE | re.MULTILINE)
_QUOTED = re.compile(r"'([^'\n]*)'|\"([^\"\n]*)\"")
# calsync's own label at the start of a message: "VEVENT UID='…' RECURRENCE-ID=…: "
_LABEL = re.compile(r"^V[A-Z]+(?: UID='[^'\n]*'| without UID)?(?: RECURRENCE-ID=[^:\s]+)?: ")
# What may stay quoted: a date, time, duration, offset or rule token (no spaces, no lower
# case), or one identifier-like word (a Python type or attribute name in an error).
_TOKEN = re.compile(r"^(?:[0-9A-Z:+\-/.,;=_]{0,64}|[A-Za-z_][A-Za-z0-9_]{0,30})$")
_WITHHELD = "…"
_MAX_MESSAGE = 240
_WORD = re.compile(r"[^\W_]{4,}")
# Words of calsync's and icalendar's own messages, kept even when the event's text has them.
_MESSAGE_WORDS = frozenset(
    "property expected datetime date time format wrong invalid duration given times allows "
    "once cannot expanded expansion read line lines content parsed shown missing object "
    "attribute type period frequency weekday abbreviation parameter steps limit sync window "
    "reach needs before same icalendar calendar component found could from with that this "
    "there were none unit until count interval rule".split())


def private_values(text: str) -> list[str]:
    """The values of the private properties of an iCalendar text (and their pieces:
    parameter values such as CN, escaped and unescaped, and their words), longest first."""
    unfolded = re.sub(r"\r?\n[ \t]", "", text)
    found: set[str] = set()
    for match in _PRIVATE_LINE.finditer(unfolded):
        rest = match.group(1).strip()
        for piece in [rest, rest.split(":", 1)[-1], *re.split(r"[;:,=]", rest)]:
            piece = piece.strip().strip('"')
            for variant in (piece, piece.replace("\\,", ",").replace("\\;", ";")
                            .replace("\\n", "\n").replace("\\N", "\n")
                            .replace("\\\\", "\\")):
                if len(variant) >= 3:
                    found.add(variant)
                    found.update(line for line in variant.splitlines() if len(line) >= 3)
                found.update(w for w in _WORD.findall(variant)
                             if w.lower() not in _MESSAGE_WORDS)
    return sorted(found, key=len, reverse=True)


def safe_message(message: str, private: list[str] | None = None) -> str:
    """``message`` fit to leave the process: private values cut out, quoted fragments that
    are not date/time/rule tokens withheld, one line, bounded length."""
    text = str(message)
    label_match = _LABEL.match(text)
    label = label_match.group(0) if label_match else ""
    text = text[len(label):]
    if "Content line could not be parsed" in text:
        text = "a content line could not be parsed (it is not shown)"
    elif "Found no components" in text:
        text = "no calendar component could be read"
    for value in private or ():
        if value not in text:
            continue
        if _WORD.fullmatch(value):  # a single word: whole words only
            text = re.sub(rf"(?<![^\W_]){re.escape(value)}(?![^\W_])", _WITHHELD, text)
        else:
            text = text.replace(value, _WITHHELD)

    def withhold(match: re.Match[str]) -> str:
        inner = match.group(1) if match.group(1) is not None else match.group(2)
        return match.group(0) if _TOKEN.match(inner) else f"'{_WITHHELD}'"

    text = _QUOTED.sub(withhold, text)
    text = " ".join(text.split())
    if len(text) > _MAX_MESSAGE:
        text = text[:_MAX_MESSAGE - 1] + _WITHHELD
    return label + text


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, _Unusable) else str(exc)


_COMPONENT_LINE = re.compile(r"^(BEGIN|END):([A-Za-z0-9-]+)\s*$", re.IGNORECASE)


def _unfolded_lines(text: str) -> list[str]:
    return [line for line in re.sub(r"\r?\n[ \t]", "", text).splitlines() if line.strip()]


def locate_failure(text: str) -> str | None:
    """For a text icalendar refuses as a whole: ``"<COMPONENT> UID='…': property <NAME>"``
    of the first content line that fails on its own, or None when no single line does."""
    lines = _unfolded_lines(text)
    stack: list[str] = []
    uids: dict[int, str] = {}  # index of a BEGIN line -> the UID of that component
    opened: list[int] = []
    for i, line in enumerate(lines):
        comp = _COMPONENT_LINE.match(line)
        if comp:
            if comp.group(1).upper() == "BEGIN":
                opened.append(i)
            elif opened:
                opened.pop()
        elif opened and line.upper().startswith("UID:"):
            uids.setdefault(opened[-1], line[4:].strip())
    opened = []
    for i, line in enumerate(lines):
        comp = _COMPONENT_LINE.match(line)
        if comp:
            if comp.group(1).upper() == "BEGIN":
                stack.append(comp.group(2).upper())
                opened.append(i)
            elif stack:
                stack.pop()
                opened.pop()
            continue
        name = re.split(r"[;:]", line, maxsplit=1)[0].strip().upper() or "?"
        wrapper = stack[-1] if stack else "VCALENDAR"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                icalendar.Component.from_ical(f"BEGIN:{wrapper}\r\n{line}\r\n"
                                              f"END:{wrapper}\r\n")
        except Exception:  # noqa: BLE001 - this is the line that breaks the file
            label = wrapper
            for depth in range(len(opened) - 1, -1, -1):  # own UID, else the enclosing one
                uid = uids.get(opened[depth])
                if uid:
                    label = (f"{wrapper} UID={uid!r}" if depth == len(opened) - 1 else
                             f"{wrapper} in {stack[depth]} UID={uid!r}")
                    break
            return f"{label}: property {name}"
    return None


def unreadable_reason(exc: BaseException, text: str | bytes | None = None) -> str:
    """Why an object could not be read at all, naming the component and property where a
    single line is to blame, without the object's private text."""
    raw = decode(text) if text is not None else ""
    where = locate_failure(raw) if raw else None
    message = safe_message(_error_text(exc), private_values(raw) if raw else None)
    return f"{where}: {message}" if where else f"not an iCalendar object: {message}"


def decode(raw: str | bytes) -> str:
    """Text of an object: UTF-8 when it is, else Windows-1252 (what old producers wrote)."""
    if isinstance(raw, str):
        text = raw
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("cp1252", errors="replace")
    return text.lstrip("\ufeff")


def _components(text: str) -> list[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            parsed = icalendar.Calendar.from_ical(text, multiple=True)
        except Exception:  # noqa: BLE001 - retry as a bare component below
            parsed = []
        if not parsed:
            # A bare VEVENT without a VCALENDAR wrapper, or a file icalendar refuses.
            parsed = [icalendar.Component.from_ical(text)]  # type: ignore[list-item]
    return list(parsed)


def _email(value: Any) -> str:
    text = str(value).strip()
    if text.lower().startswith("mailto:"):
        text = text[7:]
    return text.strip().lower()


def _text(component: Any, name: str) -> str | None:
    value = component.get(name)
    if value is None:
        return None
    if isinstance(value, list):
        value = value[0]
    return str(value)


def _check_vital(event: Any, label: str) -> None:
    """Raise _Unusable naming the property when a vital property is broken."""
    for prop, message in getattr(event, "errors", []) or []:
        if prop in _VITAL:
            raise _Unusable(f"{label}: property {prop}: {message}")
    if "DTSTART" not in event:
        raise _Unusable(f"{label}: property DTSTART is missing")
    for name in ("DTSTART", "DTEND", "DURATION", "RECURRENCE-ID"):
        if isinstance(event.get(name), list):
            raise _Unusable(f"{label}: property {name}: given {len(event[name])} times; "
                            "RFC 5545 allows it once")
    for name in ("DTSTART", "DTEND", "RECURRENCE-ID"):
        if name in event:
            try:
                event[name].dt  # noqa: B018 - raises on broken values
            except Exception as exc:  # noqa: BLE001
                raise _Unusable(f"{label}: property {name}: {exc}") from exc
    if "DURATION" in event:
        try:
            event["DURATION"].dt  # noqa: B018
        except Exception as exc:  # noqa: BLE001
            raise _Unusable(f"{label}: property DURATION: {exc}") from exc
    start = event["DTSTART"].dt
    if "DTEND" in event:
        end = event["DTEND"].dt
        if isinstance(start, dt.datetime) != isinstance(end, dt.datetime):
            raise _Unusable(f"{label}: property DTEND: {end!s} is not of the same type "
                            f"(date or date-time) as DTSTART {start!s}")
        if _as_utc(end, UTC) < _as_utc(start, UTC):
            raise _Unusable(f"{label}: property DTEND: {end!s} is before DTSTART {start!s}")


_STEP_SECONDS = {"SECONDLY": 1, "MINUTELY": 60, "HOURLY": 3600}
MAX_RULE_STEPS = 50_000  # well under a second of expansion work


def _check_rule_cost(event: Any, label: str, window: Window, tz: dt.tzinfo) -> None:
    """Refuse sub-daily rules that would need huge iteration to reach the window (a rule
    stepping every minute since 1990 takes minutes of CPU to expand)."""
    rules = event.get("RRULE")
    if rules is None:
        return
    start = _as_utc(event["DTSTART"].dt, tz)
    for rule in rules if isinstance(rules, list) else [rules]:
        freq = (rule.get("FREQ") or [""])[0]
        if freq not in _STEP_SECONDS:
            continue
        interval = int((rule.get("INTERVAL") or [1])[0] or 1)
        steps = (window.end - start).total_seconds() / (_STEP_SECONDS[freq] * max(1, interval))
        count = (rule.get("COUNT") or [None])[0]
        if count:
            steps = min(steps, float(count))
        if steps > MAX_RULE_STEPS:
            raise _Unusable(f"{label}: property RRULE: FREQ={freq} from {start:%Y-%m-%d} needs "
                            f"{steps:,.0f} steps to reach the sync window (limit "
                            f"{MAX_RULE_STEPS:,}); not expanded")


def _as_utc(value: dt.date | dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=tz)
        return value.astimezone(UTC)
    return dt.datetime.combine(value, dt.time(), tzinfo=tz).astimezone(UTC)


def _fix_tzids(event: Any, label: str, notes: list[str], seen: set[str]) -> None:
    """Give naive values that carry a TZID icalendar could not resolve a real zone."""
    for name in _DATE_PROPS:
        if name not in event:
            continue
        values = event[name] if isinstance(event[name], list) else [event[name]]
        for prop in values:
            tzid = prop.params.get("TZID")
            if not tzid:
                continue
            items = getattr(prop, "dts", None) or [prop]
            for item in items:
                value = getattr(item, "dt", None)
                if not isinstance(value, dt.datetime) or value.tzinfo is not None:
                    continue
                zone, note = resolve_tzid(str(tzid))
                if str(tzid) not in seen:
                    seen.add(str(tzid))
                    notes.append(f"{label}: {note}" + ("" if zone else
                                 ": times read as floating in the user's zone"))
                if zone is not None:
                    item.dt = value.replace(tzinfo=zone)


def _fix_until(event: Any, label: str, notes: list[str]) -> None:
    """A floating UNTIL on a zoned DTSTART (RFC 5545 wants UTC) is local time there."""
    rules = event.get("RRULE")
    start = event["DTSTART"].dt
    if rules is None or not isinstance(start, dt.datetime) or start.tzinfo is None:
        return
    for rule in rules if isinstance(rules, list) else [rules]:
        untils = rule.get("UNTIL") or []
        fixed = []
        for until in untils:
            if isinstance(until, dt.datetime) and until.tzinfo is None:
                until = until.replace(tzinfo=start.tzinfo).astimezone(UTC)
                notes.append(f"{label}: floating RRULE UNTIL read in the zone of DTSTART")
            elif type(until) is dt.date:
                until = dt.datetime.combine(until, dt.time(23, 59, 59),
                                            tzinfo=start.tzinfo).astimezone(UTC)
            fixed.append(until)
        if fixed:
            rule["UNTIL"] = fixed


def _busy(component: Any) -> BusyStatus:
    cdo = _text(component, "X-MICROSOFT-CDO-BUSYSTATUS")
    if cdo and cdo.strip().upper() in _BUSY_STATUS:
        return _BUSY_STATUS[cdo.strip().upper()]
    transp = _text(component, "TRANSP")
    if transp and transp.strip().upper() == "TRANSPARENT":
        return "free"
    return "busy"


def _status(component: Any) -> EventStatus:
    status = (_text(component, "STATUS") or "").strip().upper()
    if status == "CANCELLED":
        return "cancelled"
    if status == "TENTATIVE":
        return "tentative"
    return "confirmed"


def _attendees(component: Any) -> list[Any]:
    value = component.get("ATTENDEE")
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _response(component: Any, owners: frozenset[str]) -> str | None:
    for attendee in _attendees(component):
        if _email(attendee) in owners:
            partstat = str(attendee.params.get("PARTSTAT", "")).strip().strip('"').upper()
            return _PARTSTAT.get(partstat)
    return None


def _end_of(event: Any, start: dt.date | dt.datetime) -> dt.date | dt.datetime:
    if "DTEND" in event:
        end: dt.date | dt.datetime = event["DTEND"].dt
        return end
    if "DURATION" in event:
        return cast("dt.date | dt.datetime", start + event["DURATION"].dt)
    # RFC 5545 3.6.1: a date lasts one day, a date-time takes no time.
    if isinstance(start, dt.datetime):
        return start
    return start + dt.timedelta(days=1)


def _localise(value: dt.date | dt.datetime, tz: dt.tzinfo) -> dt.date | dt.datetime:
    if isinstance(value, dt.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=tz)
    return value


def _expand(group: list[Any], timezones: list[Any], window: Window,
            options: ParseOptions, master: Any | None) -> list[Occurrence]:
    cal = icalendar.Calendar()
    for tz in timezones:
        cal.add_component(tz)
    for event in group:
        cal.add_component(event)
    pad = dt.timedelta(days=1)  # floating times: the window is exact only after localising
    found: list[Occurrence] = []
    master_cancelled = master is not None and _status(master) == "cancelled"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # between() walks the rule once; after() re-pages and is far slower on old series
        occurrences = recurring_ical_events.of(cal).between(window.start - pad,
                                                             window.end + pad)
    for occurrence in occurrences:
        start = occurrence["DTSTART"].dt
        end = occurrence["DTEND"].dt if "DTEND" in occurrence else _end_of(occurrence, start)
        s_utc, e_utc = _as_utc(start, options.default_tz), _as_utc(end, options.default_tz)
        if _status(occurrence) == "cancelled" and not master_cancelled:
            continue
        if e_utc <= window.start or s_utc >= window.end:
            if not (s_utc == e_utc and window.start <= s_utc < window.end):
                continue
        found.append(Occurrence(s_utc, e_utc))
    found.sort(key=lambda o: (o.start, o.end))
    return found[:options.max_occurrences]


def _group_by_uid(events: list[Any]) -> list[tuple[str | None, list[Any]]]:
    groups: dict[str, list[Any]] = {}
    order: list[tuple[str | None, list[Any]]] = []
    for event in events:
        uid = _text(event, "UID")
        is_override = "RECURRENCE-ID" in event
        if uid is None:
            order.append((None, [event]))
            continue
        existing = groups.get(uid)
        has_master = existing is not None and any("RECURRENCE-ID" not in e for e in existing)
        if existing is None or (has_master and not is_override):
            # A second master with the same UID (duplicated feed entries) stands alone.
            groups[uid] = [event]
            order.append((uid, groups[uid]))
        else:
            existing.append(event)
    return order


def _build(uid: str | None, group: list[Any], timezones: list[Any], window: Window,
           options: ParseOptions, remote_id: str, etag: str | None,
           label: str = "VEVENT") -> RemoteEvent:
    masters = [e for e in group if "RECURRENCE-ID" not in e]
    master = masters[0] if masters else None
    main = master if master is not None else group[0]
    raw_start = main["DTSTART"].dt
    start = _localise(raw_start, options.default_tz)
    end = _localise(_end_of(main, raw_start), options.default_tz)
    all_day = not isinstance(start, dt.datetime)
    tzid = main["DTSTART"].params.get("TZID")
    if isinstance(raw_start, dt.datetime) and raw_start.tzinfo is None:
        tzid = None  # floating (or a TZID nobody defined): read in the user's zone
    elif tzid is None and isinstance(raw_start, dt.datetime):
        tzid = getattr(raw_start.tzinfo, "key", None) or (
            "UTC" if raw_start.utcoffset() == dt.timedelta(0) else None)
    organizer = main.get("ORGANIZER")
    last_modified = None
    if "LAST-MODIFIED" in main:
        try:
            value = main["LAST-MODIFIED"].dt
            if isinstance(value, dt.datetime):
                last_modified = _as_utc(value, UTC)
        except Exception:  # noqa: BLE001 - a broken timestamp is only a diagnostic
            last_modified = None
    recurring = bool(master is not None and ("RRULE" in master or "RDATE" in master)) \
        or len(group) > 1
    klass = (_text(main, "CLASS") or "").strip().upper()
    return RemoteEvent(
        remote_id=remote_id,
        etag=etag,
        uid=uid,
        calsync_key=(_text(main, KEY_PROPERTY) or None),
        summary=_text(main, "SUMMARY"),
        description=_text(main, "DESCRIPTION"),
        location=_text(main, "LOCATION"),
        start=start,
        end=end,
        all_day=all_day,
        tzid=str(tzid) if tzid else None,
        busy=_busy(main),
        status=_status(main),
        response=_response(main, options.owner_emails),
        private=klass in ("PRIVATE", "CONFIDENTIAL"),
        organizer=_email(organizer) if organizer is not None else None,
        attendees=[_email(a) for a in _attendees(main)],
        recurring=recurring,
        occurrences=_expand_named(group, timezones, window, options, master, label),
        last_modified=last_modified,
    )


def _expand_named(group: list[Any], timezones: list[Any], window: Window,
                  options: ParseOptions, master: Any | None, label: str) -> list[Occurrence]:
    try:
        return _expand(group, timezones, window, options, master)
    except Exception as exc:  # noqa: BLE001 - a rule the expander cannot walk
        raise _Unusable(f"{label}: property {_recurrence_props(group)}: cannot be expanded: "
                        f"{_error_text(exc)}") from exc


def _step(label: str, prop: str, fn: Any) -> None:
    """Run one repair step; a failure inside it is a problem with ``prop``."""
    try:
        fn()
    except _Unusable:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _Unusable(f"{label}: property {prop}: {_error_text(exc)}") from exc


def _recurrence_props(group: list[Any]) -> str:
    """The recurrence properties of an event group (where expansion failures come from)."""
    names = [p for p in ("RRULE", "RDATE", "EXDATE", "RECURRENCE-ID")
             if any(p in e for e in group)]
    return "/".join(names) or "DTSTART"


def _recurrence_id_text(event: Any) -> str:
    try:
        return str(event.get("RECURRENCE-ID").to_ical().decode())
    except Exception:  # noqa: BLE001 - a broken RECURRENCE-ID is reported by _check_vital
        return "(unreadable)"


def _fix_zero_length_day(event: Any, label: str, notes: list[str]) -> None:
    """RFC 5545 3.6.1: an all-day event lasts at least its day. A DTEND equal to a date
    DTSTART (written by some producers) is read as the day after."""
    if "DTEND" not in event:
        return
    start, end = event["DTSTART"].dt, event["DTEND"].dt
    if isinstance(start, dt.datetime) or isinstance(end, dt.datetime) or end != start:
        return
    event.pop("DTEND")
    event.add("DTEND", start + dt.timedelta(days=1))
    notes.append(f"{label}: all-day DTEND equal to DTSTART read as one day")


def parse_calendar(raw: str | bytes, window: Window, options: ParseOptions,
                   remote_id: str = "") -> CalendarParse:
    """Every event in ``raw``, one :class:`RemoteEvent` per UID (master plus overrides).

    Never raises for bad input: an unreadable file or event becomes a problem string
    naming the event and property. ``remote_id`` is copied onto each event.
    """
    result = CalendarParse()
    text = decode(raw)
    private = private_values(text)
    try:
        components = _components(text)
    except Exception as exc:  # noqa: BLE001 - a file icalendar cannot read at all
        result.problems.append(unreadable_reason(exc, text))
        return result
    events: list[Any] = []
    timezones: list[Any] = []
    for top in components:
        for comp in top.walk():
            if comp.name == "VEVENT":
                events.append(comp)
            elif comp.name == "VTIMEZONE":
                timezones.append(comp)
        for prop, message in getattr(top, "errors", []) or []:
            result.notes.append(f"{top.name}: ignored broken line or property "
                                f"{prop or '(unnamed line)'}: {safe_message(message, private)}")
    seen_tz: set[str] = set()
    for uid, group in _group_by_uid(events):
        label = f"VEVENT UID={uid!r}" if uid else "VEVENT without UID"
        try:
            for event in group:
                sub = label
                if "RECURRENCE-ID" in event:
                    sub = f"{label} RECURRENCE-ID={_recurrence_id_text(event)}"
                _check_vital(event, sub)
                for prop, message in getattr(event, "errors", []) or []:
                    result.notes.append(f"{sub}: ignored broken property "
                                        f"{prop or '(unnamed line)'}: "
                                        f"{safe_message(message, private)}")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    _step(sub, "DTSTART", lambda e=event, s=sub: _fix_tzids(e, s, result.notes,
                                                                            seen_tz))
                    _step(sub, "RRULE", lambda e=event, s=sub: _fix_until(e, s, result.notes))
                _step(sub, "DTEND", lambda e=event, s=sub: _fix_zero_length_day(e, s,
                                                                              result.notes))
                _check_rule_cost(event, sub, window, options.default_tz)
            result.events.append(_build(uid, group, timezones, window, options,
                                        remote_id, None, label))
        except _Unusable as exc:
            result.problems.append(safe_message(str(exc), private))
        except Exception as exc:  # noqa: BLE001 - a broken value in a rare spot
            result.problems.append(safe_message(f"{label}: property {_recurrence_props(group)}: "
                                                f"cannot be read: {_error_text(exc)}", private))
    floating = [e for e in result.events if isinstance(e.start, dt.datetime)
                and e.tzid is None]
    if floating:
        result.notes.append(f"{len(floating)} event(s) with floating times read in "
                            f"{getattr(options.default_tz, 'key', options.default_tz)}")
    return result


@dataclass
class ResourceParse:
    event: RemoteEvent | None = None
    quarantined: Quarantined | None = None
    notes: list[str] = field(default_factory=list)


def parse_resource(raw: str | bytes, remote_id: str, etag: str | None, window: Window,
                   options: ParseOptions) -> ResourceParse:
    """One CalDAV resource (one UID by RFC 4791): its event, or why it is quarantined.

    A resource with no VEVENT (a VTODO, a VJOURNAL) gives neither: it is not an event.
    Should a resource hold several UIDs, the first is the event and the others' busy
    spans are merged into its occurrences.
    """
    text = decode(raw)
    parsed = parse_calendar(text, window, options, remote_id)
    out = ResourceParse(notes=[f"{remote_id}: {n}" for n in parsed.notes])
    if parsed.problems:
        out.quarantined = Quarantined(remote_id, "; ".join(parsed.problems), text)
        return out
    if not parsed.events:
        return out
    event = parsed.events[0]
    for other in parsed.events[1:]:
        event.occurrences.extend(other.occurrences)
    event.occurrences.sort(key=lambda o: (o.start, o.end))
    event.etag = etag
    event.raw = text
    # what expand() needs as the window slides; calsync's own copies are never expanded
    event.source = text if event.calsync_key is None else None
    out.event = event
    return out


def zone_or_utc(name: str | None) -> dt.tzinfo:
    """The IANA zone ``name``, or UTC when it is empty or unknown."""
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except Exception:  # noqa: BLE001
        return UTC

