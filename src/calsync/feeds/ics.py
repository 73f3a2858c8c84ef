"""RFC 5545 text for feeds, without I/O: escaping, folding, date formats, one VEVENT per
schedule item (``render_event``), the calendar header, and VTIMEZONE blocks.

A feed is assembled from cached per-item fragments, so ``render_event`` is the only place
that turns an item into text. ``fragment_key`` says when a cached fragment is still valid:
it covers the item's content hash, its sequence, this renderer's version and the settings
the fragment depends on. Bump ``RENDERER_VERSION`` whenever the output of this module
changes; every cached fragment is then re-rendered on the next feed render.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from functools import lru_cache
from typing import Protocol
from urllib.parse import quote

from calsync.timezones import UTC, zone

RENDERER_VERSION = 1
PRODID = "-//calsync//calsync feeds 1.0//EN"
CRLF = "\r\n"
MAX_LINE_OCTETS = 75

# Time zones whose times are written in UTC ("...Z") and need no VTIMEZONE.
UTC_ZONES = frozenset({"UTC", "Etc/UTC", "Etc/Universal", "Universal", "Etc/Zulu", "Zulu",
                       "UCT", "Etc/UCT", "GMT", "Etc/GMT", "Etc/GMT0", "Etc/GMT+0",
                       "Etc/GMT-0", "GMT0", "GMT+0", "GMT-0", "Etc/Greenwich", "Greenwich"})

KIND_LABELS = {"job": "Job", "time_off": "Time off", "block": "Blocked"}


class FeedItem(Protocol):
    """What ``render_event`` reads: a ScheduleItem row, or any record with these fields."""

    kind: str
    ext_id: str
    title: str
    job_type: str | None
    account: str | None
    location: str | None
    notes: str | None
    reason: str | None
    status: str
    all_day: bool
    start_at: dt.datetime
    end_at: dt.datetime
    start_date: dt.date | None
    end_date: dt.date | None
    tzid: str
    sequence: int
    created_at: dt.datetime
    updated_at: dt.datetime


# --- text ---------------------------------------------------------------------------------

# Control characters other than TAB are not allowed in TEXT values (RFC 5545 3.3.11).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")
# Anything escape_text changes: most values have none of it and are returned at once.
_SPECIAL = re.compile("[\\\\;,\x00-\x08\x0a-\x1f\x7f]")


def escape_text(value: str) -> str:
    """Escape a TEXT value: backslash, semicolon, comma, newlines (CRLF/CR/LF -> ``\\n``).
    Control characters other than TAB are dropped (RFC 5545 forbids them)."""
    if _SPECIAL.search(value) is None:
        return value
    if "\r" in value:
        value = value.replace("\r\n", "\n").replace("\r", "\n")
    if "\\" in value:
        value = value.replace("\\", "\\\\")
    if ";" in value:
        value = value.replace(";", "\\;")
    if "," in value:
        value = value.replace(",", "\\,")
    if "\n" in value:
        value = value.replace("\n", "\\n")
    if _CONTROL.search(value):
        value = _CONTROL.sub("", value)
    return value


def fold_line(line: str) -> str:
    """Fold one content line (no CRLF) at 75 octets, never inside a UTF-8 character.
    Continuation lines start with one space, which counts toward their 75 octets."""
    if len(line) <= MAX_LINE_OCTETS and line.isascii():
        return line
    raw = line.encode("utf-8")
    if len(raw) <= MAX_LINE_OCTETS:
        return line
    parts = []
    pos, limit, size = 0, MAX_LINE_OCTETS, len(raw)
    while size - pos > limit:
        end = pos + limit
        while raw[end] & 0xC0 == 0x80:  # a continuation byte: back up to the char start
            end -= 1
        parts.append(raw[pos:end])
        pos, limit = end, MAX_LINE_OCTETS - 1
    parts.append(raw[pos:])
    return b"\r\n ".join(parts).decode("utf-8")


def content_line(name: str, value: str) -> str:
    """``NAME:value`` (name may carry parameters), folded, with its CRLF."""
    return fold_line(f"{name}:{value}") + CRLF


def unfold(text: str) -> str:
    """Undo folding (for tests and tools)."""
    return text.replace("\r\n ", "").replace("\r\n\t", "")


# --- dates --------------------------------------------------------------------------------

def format_utc(value: dt.datetime) -> str:
    """``YYYYMMDDTHHMMSSZ`` (sub-seconds dropped)."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat()[:19].replace("-", "").replace(":", "") + "Z"


def format_local(value: dt.datetime) -> str:
    """Wall-clock time without zone: ``YYYYMMDDTHHMMSS``."""
    return value.isoformat()[:19].replace("-", "").replace(":", "")


def format_date(value: dt.date) -> str:
    return f"{value.year:04d}{value.month:02d}{value.day:02d}"


def datetime_property(name: str, instant: dt.datetime, tzid: str) -> str:
    """``DTSTART;TZID=...:local`` for ``instant`` in ``tzid``. When the wall-clock time would
    not name the same instant (the second pass of an ambiguous hour on a DST fall-back),
    the value is written in UTC instead, so every reader gets the exact instant."""
    if tzid in UTC_ZONES:
        return content_line(name, format_utc(instant))
    local = instant.astimezone(zone(tzid))
    if local.fold:  # zoneinfo marks the second pass of a repeated hour with fold=1
        return content_line(name, format_utc(instant))
    return content_line(f"{name};TZID={tzid}", format_local(local))


# --- events -------------------------------------------------------------------------------

def event_uid(kind: str, ext_id: str) -> str:
    """Stable across renders and across assignees' feeds (a job has one UID)."""
    return f"{kind}-{ext_id}@calsync"


def event_summary(item: FeedItem) -> str:
    if item.kind == "job":
        if item.job_type and item.account:
            return f"{item.job_type}: {item.account}"
        return item.title or item.job_type or item.account or "Job"
    if item.kind == "time_off":
        return f"Time off: {item.reason}" if item.reason else "Time off"
    return item.title or "Blocked"


def job_url(job_url_template: str, ext_id: str) -> str | None:
    if not job_url_template:
        return None
    return job_url_template.replace("{job_id}", quote(ext_id, safe=""))


def event_description(item: FeedItem, job_url_template: str = "",
                      url: str | None = None) -> str:
    """Notes, then the job's link (``url`` when the caller has it already)."""
    parts = [item.notes] if item.notes else []
    if url is None and item.kind == "job":
        url = job_url(job_url_template, item.ext_id)
    if url:
        parts.append(url)
    return "\n\n".join(parts)


@lru_cache(maxsize=1024)
def _categories_of(kind: str, job_type: str | None) -> str:
    cats = [KIND_LABELS.get(kind, kind)]
    if kind == "job" and job_type:
        cats.append(job_type)
    return content_line("CATEGORIES", ",".join(escape_text(c) for c in cats))


def _categories(item: FeedItem) -> str:
    """The CATEGORIES line of ``item`` (kind label, job type)."""
    return _categories_of(item.kind, item.job_type if item.kind == "job" else None)


def render_event(item: FeedItem, job_url_template: str = "") -> str:
    """One VEVENT (CRLF line ends, folded) for ``item``. Pure: same item, same text."""
    stamp = format_utc(item.updated_at)
    out = ["BEGIN:VEVENT\r\n",
           content_line("UID", escape_text(event_uid(item.kind, item.ext_id))),
           f"DTSTAMP:{stamp}\r\nCREATED:{format_utc(item.created_at)}\r\n"
           f"LAST-MODIFIED:{stamp}\r\nSEQUENCE:{int(item.sequence)}\r\n"]
    if item.all_day and item.start_date is not None and item.end_date is not None:
        out.append(f"DTSTART;VALUE=DATE:{format_date(item.start_date)}\r\n"
                   f"DTEND;VALUE=DATE:{format_date(item.end_date)}\r\n")
    else:
        out.append(datetime_property("DTSTART", item.start_at, item.tzid))
        out.append(datetime_property("DTEND", item.end_at, item.tzid))
    out.append(content_line("SUMMARY", escape_text(event_summary(item))))
    if item.location:
        out.append(content_line("LOCATION", escape_text(item.location)))
    url = job_url(job_url_template, item.ext_id) if item.kind == "job" else None
    description = event_description(item, job_url_template, url)
    if description:
        out.append(content_line("DESCRIPTION", escape_text(description)))
    if url:
        out.append(content_line("URL", url))
    out.append(_categories(item))
    out.append("STATUS:CANCELLED\r\nTRANSP:OPAQUE\r\nEND:VEVENT\r\n"
               if item.status == "cancelled" else
               "STATUS:CONFIRMED\r\nTRANSP:OPAQUE\r\nEND:VEVENT\r\n")
    return "".join(out)


def settings_digest(job_url_template: str) -> str:
    """Short hash of the settings a fragment depends on."""
    return hashlib.sha256(job_url_template.encode()).hexdigest()[:8]


def fragment_key(content_hash: str, sequence: int, settings_hash: str) -> str:
    """Cache key of an item's fragment (fits ``schedule_items.fragment_key``, 80 chars)."""
    return f"{content_hash[:32]}:{sequence}:r{RENDERER_VERSION}:{settings_hash}"


def needs_vtimezone(tzid: str) -> bool:
    return tzid not in UTC_ZONES


# --- calendar -----------------------------------------------------------------------------

def duration_minutes(minutes: int) -> str:
    return f"PT{int(minutes)}M"


def calendar_header(calendar_name: str, timezone: str, refresh_minutes: int) -> str:
    ttl = duration_minutes(refresh_minutes)
    return "".join([
        "BEGIN:VCALENDAR\r\n",
        "VERSION:2.0\r\n",
        content_line("PRODID", PRODID),
        "CALSCALE:GREGORIAN\r\n",
        "METHOD:PUBLISH\r\n",
        content_line("X-WR-CALNAME", escape_text(calendar_name)),
        content_line("X-WR-TIMEZONE", escape_text(timezone)),
        content_line("REFRESH-INTERVAL;VALUE=DURATION", ttl),
        content_line("X-PUBLISHED-TTL", ttl),
    ])


CALENDAR_FOOTER = "END:VCALENDAR\r\n"


def _offset(value: dt.timedelta) -> str:
    total = int(value.total_seconds())
    sign = "+" if total >= 0 else "-"
    h, rest = divmod(abs(total), 3600)
    m, sec = divmod(rest, 60)
    return f"{sign}{h:02d}{m:02d}" + (f"{sec:02d}" if sec else "")


def zone_transitions(tzid: str, first: dt.datetime, last: dt.datetime) -> list[dt.datetime]:
    """UTC instants in [first, last) at which ``tzid``'s offset or name changes."""
    tz = zone(tzid)

    def state(t: dt.datetime) -> tuple[object, object]:
        local = t.astimezone(tz)
        return local.utcoffset(), local.tzname()

    out = []
    step = dt.timedelta(days=1)
    t, current = first, state(first)
    while t < last:
        nxt = t + step
        if state(nxt) != current:
            lo, hi = t, nxt  # state(lo) == current != state(hi): bisect to the second
            while hi - lo > dt.timedelta(seconds=1):
                mid = lo + (hi - lo) / 2
                mid = mid.replace(microsecond=0)
                if state(mid) == current:
                    lo = mid
                else:
                    hi = mid
            out.append(hi)
            current = state(hi)
        t = nxt
    return out


@lru_cache(maxsize=512)
def vtimezone(tzid: str, first_year: int, last_year: int) -> str:
    """A VTIMEZONE for ``tzid`` valid from Jan 1 of ``first_year`` to Jan 1 of ``last_year``:
    one STANDARD/DAYLIGHT observance per transition, each DTSTART the local onset in the
    offset in force before it (RFC 5545 3.6.5). Cached: the text changes only with the
    year range, so ETags stay put."""
    tz = zone(tzid)
    first = dt.datetime(first_year, 1, 1, tzinfo=tz).astimezone(UTC)
    last = dt.datetime(last_year, 1, 1, tzinfo=tz).astimezone(UTC)
    lines = ["BEGIN:VTIMEZONE\r\n", content_line("TZID", tzid)]

    def observance(onset_utc: dt.datetime, before: dt.timedelta) -> None:
        local = onset_utc.astimezone(tz)
        kind = "DAYLIGHT" if local.dst() else "STANDARD"
        after = local.utcoffset()
        assert after is not None
        lines.extend([f"BEGIN:{kind}\r\n",
                      content_line("DTSTART", format_local(onset_utc + before)),
                      content_line("TZNAME", escape_text(local.tzname() or tzid)),
                      f"TZOFFSETFROM:{_offset(before)}\r\n",
                      f"TZOFFSETTO:{_offset(after)}\r\n",
                      f"END:{kind}\r\n"])

    start_offset = first.astimezone(tz).utcoffset()
    assert start_offset is not None
    observance(first, start_offset)
    for t in zone_transitions(tzid, first, last):
        before = (t - dt.timedelta(seconds=1)).astimezone(tz).utcoffset()
        assert before is not None
        observance(t, before)
    lines.append("END:VTIMEZONE\r\n")
    return "".join(lines)


def assemble(header: str, vtimezones: list[str], fragments: list[bytes]) -> bytes:
    """The whole feed as UTF-8: header, VTIMEZONEs, the (UTF-8) event fragments, footer."""
    head = "".join([header, *vtimezones]).encode("utf-8")
    return b"".join([head, *fragments, CALENDAR_FOOTER.encode("ascii")])
