"""Graph event JSON <-> calsync shapes (RemoteEvent, OutgoingEvent). No I/O.

- ``showAs`` free/tentative/busy/oof/workingElsewhere/unknown -> busy status (unknown is
  busy: fail closed); ``sensitivity`` private/confidential -> private; ``isCancelled``;
  ``responseStatus.response``; ``type`` seriesMaster/occurrence/exception -> recurring.
- Reads ask for ``Prefer: outlook.timezone="UTC"``, so timed ``start``/``end`` are UTC wall
  times; all-day events keep midnight dates, placed in ``originalStartTimeZone`` (a Windows
  or IANA name, mapped with CLDR's complete table) which becomes the IANA ``tzid``.
- Writes name the item's zone as Graph accepts it (:func:`graph_zone_name`: the IANA name
  where documented, else CLDR's Windows name), with the local wall time in that zone.
- calsync's tag: the single-value extended property ``CALSYNC_PROPERTY_ID`` (and the
  ``transactionId`` ``calsync:<key>``, which Graph returns in every read, delta included).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import re
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from calsync.sync.connector import Occurrence, OutgoingEvent, RemoteEvent, Window
from calsync_outlook.timezones import graph_zone_name, windows_to_iana

UTC = dt.timezone.utc
CALSYNC_GUID = "5c2f7c1e-8a43-4b8e-9d0a-1c6a0f3b7e21"
CALSYNC_PROPERTY_ID = f"String {{{CALSYNC_GUID}}} Name calsyncKey"
TRANSACTION_PREFIX = "calsync:"
SELECT_PREFER = 'outlook.timezone="UTC"'

_SHOW_AS = {"free": "free", "tentative": "tentative", "busy": "busy", "oof": "oof",
            "workingElsewhere": "workingElsewhere", "unknown": "busy"}
_RESPONSES = {"accepted": "accepted", "declined": "declined",
              "tentativelyAccepted": "tentative", "organizer": "accepted"}


def transaction_id(key: str) -> str:
    """Deterministic per key: Graph dedups creates carrying the same transactionId."""
    return TRANSACTION_PREFIX + key


def key_of_transaction(value: Any) -> str | None:
    if isinstance(value, str) and value.startswith(TRANSACTION_PREFIX):
        return value[len(TRANSACTION_PREFIX):] or None
    return None


def key_filter(key: str) -> str:
    value = key.replace("'", "''")
    return (f"singleValueExtendedProperties/Any(ep: ep/id eq '{CALSYNC_PROPERTY_ID}' "
            f"and ep/value eq '{value}')")


EXPAND_KEY = f"singleValueExtendedProperties($filter=id eq '{CALSYNC_PROPERTY_ID}')"


def parse_graph_datetime(value: str) -> dt.datetime:
    """Graph's ``2026-11-24T15:00:00.0000000`` (7 fractional digits) as naive."""
    value = value.rstrip("Z")
    if "." in value:
        head, frac = value.split(".", 1)
        value = f"{head}.{frac[:6]}"
    return dt.datetime.fromisoformat(value)


def _aware(side: dict[str, Any]) -> dt.datetime:
    naive = parse_graph_datetime(side["dateTime"])
    name = windows_to_iana(side.get("timeZone")) or "UTC"
    try:
        tz = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        tz = ZoneInfo("UTC")
    return naive.replace(tzinfo=tz).astimezone(UTC)


def _instant(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        v = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return v if v.tzinfo else v.replace(tzinfo=UTC)


def _text(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    content = str(body.get("content") or "")
    if body.get("contentType", "").lower() == "html":
        content = html.unescape(re.sub(r"<[^>]+>", " ", content))
        content = re.sub(r"[ \t]+", " ", content).strip()
    return content or None


def calsync_key_of(data: dict[str, Any]) -> str | None:
    for prop in data.get("singleValueExtendedProperties") or []:
        if str(prop.get("id", "")).lower() == CALSYNC_PROPERTY_ID.lower():
            return str(prop.get("value"))
    return None


def to_remote(data: dict[str, Any], window: Window | None) -> RemoteEvent:
    """One Graph event/occurrence (occurrences kept only inside ``window``)."""
    all_day = bool(data.get("isAllDay"))
    tzid = windows_to_iana(data.get("originalStartTimeZone")) or "UTC"
    if all_day:
        start: dt.datetime | dt.date = parse_graph_datetime(data["start"]["dateTime"]).date()
        end: dt.datetime | dt.date = parse_graph_datetime(data["end"]["dateTime"]).date()
        try:
            zone = ZoneInfo(tzid)
        except (ZoneInfoNotFoundError, ValueError):
            zone = ZoneInfo("UTC")
        span = (dt.datetime.combine(start, dt.time(), zone).astimezone(UTC),
                dt.datetime.combine(end, dt.time(), zone).astimezone(UTC))
    else:
        start, end = _aware(data["start"]), _aware(data["end"])
        span = (start, end)
    kind = data.get("type") or "singleInstance"
    occurrences = []
    if kind != "seriesMaster" and (window is None or (span[0] < window.end
                                                      and span[1] > window.start)):
        occurrences.append(Occurrence(span[0], span[1]))
    key = calsync_key_of(data)
    if key is None:
        key = key_of_transaction(data.get("transactionId"))
    organizer = ((data.get("organizer") or {}).get("emailAddress") or {}).get("address")
    attendees = [str(a["emailAddress"]["address"]) for a in data.get("attendees") or []
                 if (a.get("emailAddress") or {}).get("address")]
    response = _RESPONSES.get(((data.get("responseStatus") or {}).get("response")) or "")
    return RemoteEvent(
        remote_id=str(data["id"]), etag=data.get("@odata.etag"), uid=data.get("iCalUId"),
        calsync_key=key, summary=data.get("subject"), description=_text(data.get("body")),
        location=((data.get("location") or {}).get("displayName")) or None,
        start=start, end=end, all_day=all_day, tzid=tzid,
        busy=_SHOW_AS.get(str(data.get("showAs") or "busy"), "busy"),  # type: ignore[arg-type]
        status="cancelled" if data.get("isCancelled") else "confirmed",
        response=response,
        private=str(data.get("sensitivity") or "normal") in ("private", "confidential"),
        organizer=organizer, attendees=attendees,
        recurring=kind in ("seriesMaster", "occurrence", "exception"),
        occurrences=occurrences, last_modified=_instant(data.get("lastModifiedDateTime")),
        raw=json.dumps(data, sort_keys=True, default=str)[:20000])


def _side(value: dt.datetime | dt.date, tzid: str, all_day: bool) -> dict[str, str]:
    zone_name = graph_zone_name(tzid)
    if all_day:
        day = value if not isinstance(value, dt.datetime) else value.date()
        return {"dateTime": f"{day.isoformat()}T00:00:00", "timeZone": zone_name or "UTC"}
    assert isinstance(value, dt.datetime)
    if zone_name and zone_name != "UTC":
        local = value.astimezone(ZoneInfo(tzid))
        return {"dateTime": local.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": zone_name}
    return {"dateTime": value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
            "timeZone": "UTC"}


def to_graph(event: OutgoingEvent, create: bool) -> dict[str, Any]:
    """The Graph body for a create (with transactionId) or an update (PATCH)."""
    body: dict[str, Any] = {
        "subject": event.summary,
        "body": {"contentType": "text", "content": event.description or ""},
        "start": _side(event.start, event.tzid, event.all_day),
        "end": _side(event.end, event.tzid, event.all_day),
        "isAllDay": event.all_day,
        "location": {"displayName": event.location or ""},
        "showAs": event.busy if event.busy in _SHOW_AS else "busy",
        "isReminderOn": False,
        "singleValueExtendedProperties": [{"id": CALSYNC_PROPERTY_ID, "value": event.key}],
    }
    if event.categories:
        body["categories"] = list(event.categories)
    if create:
        body["transactionId"] = transaction_id(event.key)
    return body


def same_content(data: dict[str, Any], event: OutgoingEvent) -> bool:
    """Whether a Graph event (as returned) carries what ``event`` would write."""
    remote = to_remote(data, None)
    if remote.summary != event.summary or remote.all_day != event.all_day:
        return False
    def norm(text: str | None) -> str:  # Graph may hand a text body back as HTML
        return " ".join((text or "").split())

    if norm(remote.description) != norm(event.description) or \
            norm(remote.location) != norm(event.location) or remote.busy != event.busy:
        return False
    if event.all_day:
        def day(v: dt.datetime | dt.date) -> dt.date:
            return v.date() if isinstance(v, dt.datetime) else v
        return remote.start == day(event.start) and remote.end == day(event.end)
    assert isinstance(event.start, dt.datetime) and isinstance(event.end, dt.datetime)
    return remote.start == event.start.astimezone(UTC) and \
        remote.end == event.end.astimezone(UTC)
