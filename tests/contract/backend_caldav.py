"""Radicale and Xandikos as contract backends (connector: calsync_caldav, provider caldav).

Each backend uses the session's shared server (tests/caldav_servers.py) and makes fresh
calendars with MKCALENDAR. The user's edits are raw HTTP on the server. The connector
talks to the server through an httpx client whose transport can break the next
``sync-collection`` token of a calendar (``invalidate_sync_token``): the server then
answers 403/412 ``valid-sync-token`` exactly as it does for a token it has forgotten.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import icalendar

from calsync.config import Settings
from calsync.sync.connector import ConnectContext
from calsync_caldav.connector import PROCESS_LEDGER
from calsync_caldav.davxml import norm_href
from tests.caldav_servers import DavServer, shared_server
from tests.contract.backend import DateOrTime, ExternalSpec

_TOKEN = re.compile(rb"<d:sync-token>([^<]+)</d:sync-token>")


class TokenBreakingTransport(httpx.BaseTransport):
    """Passes requests through; for a calendar marked broken, the next sync-collection
    REPORT carrying a token gets a token the server never issued."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.broken: set[str] = set()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = norm_href(str(request.url))
        if request.method == "REPORT" and path in self.broken:
            body = request.read()
            match = _TOKEN.search(body)
            if b"sync-collection" in body and match:
                self.broken.discard(path)
                bogus = match.group(1)[:-4] + b"dead"
                body = body[:match.start(1)] + bogus + body[match.end(1):]
                headers = {k: v for k, v in request.headers.items()
                           if k.lower() != "content-length"}
                request = httpx.Request(request.method, request.url, headers=headers,
                                        content=body)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def _add_when(component: Any, name: str, value: DateOrTime, zones: set[str]) -> None:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} in a contract spec")
        key = getattr(value.tzinfo, "key", None)
        if key and key != "UTC":
            zones.add(key)
        elif value.utcoffset() == dt.timedelta(0):
            value = value.astimezone(dt.timezone.utc)
    component.add(name, value)


def _with_zones(cal: icalendar.Calendar, zones: set[str]) -> None:
    present = {str(tz.get("TZID")) for tz in cal.walk("VTIMEZONE")}
    for key in sorted(zones - present):
        cal.subcomponents.insert(0, icalendar.Timezone.from_tzid(key))


class CaldavServerBackend:
    """A contract backend on one of the shared real servers."""

    provider = "caldav"
    counts_requests = True
    kind = ""

    def __init__(self, tmp_path: Path, request: Any = None) -> None:
        config = request.config if request is not None else None
        if config is None:
            raise RuntimeError("the CalDAV backends need pytest's request")
        self.server: DavServer = shared_server(self.kind, config)
        self.transport = TokenBreakingTransport()
        self.client = httpx.Client(transport=self.transport, timeout=30)

    def context(self) -> ConnectContext:
        return ConnectContext(provider="caldav", url=self.server.base_url,
                              account=self.server.username,
                              credentials={"username": self.server.username,
                                           "password": "contract-password"},
                              settings=Settings(), http=self.client)

    def make_calendar(self, name: str) -> str:
        return self.server.make_calendar(name)

    def put_external(self, calendar_id: str, spec: ExternalSpec) -> str:
        uid = f"{uuid.uuid4().hex}@external.example.com"
        zones: set[str] = set()
        cal = icalendar.Calendar()
        cal.add("PRODID", "-//a calendar app//EN")
        cal.add("VERSION", "2.0")
        master = icalendar.Event()
        master.add("UID", uid)
        master.add("DTSTAMP", dt.datetime.now(dt.timezone.utc))
        master.add("SUMMARY", spec.summary)
        _add_when(master, "DTSTART", spec.start, zones)
        _add_when(master, "DTEND", spec.end, zones)
        if spec.rrule:
            master.add("RRULE", icalendar.vRecur.from_ical(spec.rrule))
        for exdate in spec.exdates:
            _add_when(master, "EXDATE", exdate, zones)
        if spec.transparent:
            master.add("TRANSP", "TRANSPARENT")
        if spec.private:
            master.add("CLASS", "PRIVATE")
        if spec.description:
            master.add("DESCRIPTION", spec.description)
        if spec.location:
            master.add("LOCATION", spec.location)
        cal.add_component(master)
        for recurrence_id, start, end, summary in spec.overrides:
            override = icalendar.Event()
            override.add("UID", uid)
            override.add("DTSTAMP", dt.datetime.now(dt.timezone.utc))
            _add_when(override, "RECURRENCE-ID", recurrence_id, zones)
            _add_when(override, "DTSTART", start, zones)
            _add_when(override, "DTEND", end, zones)
            override.add("SUMMARY", summary or spec.summary)
            if spec.transparent:
                override.add("TRANSP", "TRANSPARENT")
            cal.add_component(override)
        _with_zones(cal, zones)
        url = f"{calendar_id}{uuid.uuid4().hex}.ics"
        resp = self.server.put(url, cal.to_ical().decode(), {"If-None-Match": "*"})
        assert resp.status_code in (201, 204), (resp.status_code, resp.text)
        return norm_href(url)

    def edit_remote(self, calendar_id: str, remote_id: str, **changes: object) -> None:
        unknown = set(changes) - {"summary", "start", "end", "description", "location"}
        if unknown:
            raise ValueError(f"edit_remote: unsupported fields {sorted(unknown)}")
        url = urljoin(calendar_id, remote_id)
        got = self.server.get(url)
        assert got.status_code == 200, (got.status_code, url)
        cal = icalendar.Calendar.from_ical(got.text)
        master = next(e for e in cal.walk("VEVENT") if "RECURRENCE-ID" not in e)
        zones: set[str] = set()
        for field, prop in (("summary", "SUMMARY"), ("description", "DESCRIPTION"),
                            ("location", "LOCATION"), ("start", "DTSTART"), ("end", "DTEND")):
            if field not in changes:
                continue
            master.pop(prop, None)
            if prop in ("DTSTART", "DTEND"):
                _add_when(master, prop, changes[field], zones)  # type: ignore[arg-type]
            else:
                master.add(prop, changes[field])
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        for prop in ("LAST-MODIFIED", "DTSTAMP"):
            master.pop(prop, None)
            master.add(prop, now)
        sequence = int(master.get("SEQUENCE", 0)) + 1
        master.pop("SEQUENCE", None)
        master.add("SEQUENCE", sequence)
        _with_zones(cal, zones)
        headers = {"If-Match": got.headers["etag"]} if "etag" in got.headers else {}
        resp = self.server.put(url, cal.to_ical().decode(), headers)
        assert resp.status_code in (200, 201, 204), (resp.status_code, resp.text)

    def delete_remote(self, calendar_id: str, remote_id: str) -> None:
        resp = self.server.delete(urljoin(calendar_id, remote_id))
        assert resp.status_code in (200, 204, 404), resp.status_code

    def invalidate_sync_token(self, calendar_id: str) -> None:
        self.transport.broken.add(norm_href(calendar_id))

    def new_process(self) -> None:
        PROCESS_LEDGER.forget()

    def close(self) -> None:
        self.client.close()


class RadicaleBackend(CaldavServerBackend):
    kind = "radicale"
    supports_read_only = True

    def make_read_only_calendar(self, name: str) -> str:
        return self.server.make_read_only_calendar(name)


class XandikosBackend(CaldavServerBackend):
    kind = "xandikos"


__all__ = ["RadicaleBackend", "XandikosBackend", "TokenBreakingTransport"]
