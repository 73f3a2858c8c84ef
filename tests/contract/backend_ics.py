"""A subscribed ``.ics`` feed as a contract backend: a real HTTP server on 127.0.0.1 serving
one feed that the backend rewrites as the feed's owner would (a booking site regenerating
its export). The ``ics`` connector is pull-only: it serves one read-only calendar per
connection and writes nothing, so it runs the suite's pull cases (``PULL_CASES`` in
``tests/test_ics_contract.py``), not the ones that write copies or break sync tokens.

The connector fetches a feed at most every 5 minutes; the backend's clock (given to the
connector through ``ConnectContext.options["clock"]``) moves 10 minutes on with each change,
as if the user looked again a while later.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import icalendar

from calsync.config import Settings
from calsync.sync.connector import ConnectContext
from calsync_ics.fetch import feed_digest
from tests.contract.backend import ExternalSpec
from tests.contract.backend_caldav import _add_when, _with_zones
from tests.ics_feed_server import FeedServer


class IcsBackend:
    provider = "ics"
    counts_requests = True
    pull_only = True

    def __init__(self, tmp_path: Path) -> None:
        self.server = FeedServer(f"/export/{uuid.uuid4().hex}/calendar.ics")
        self.server.start()
        self.events: dict[str, list[icalendar.Event]] = {}
        self.zones: set[str] = set()
        self.offset = dt.timedelta(0)
        self._publish()

    def clock(self) -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc) + self.offset

    def context(self) -> ConnectContext:
        return ConnectContext(provider="ics", url=None, account="feed",
                              credentials={"url": self.server.url}, settings=Settings(),
                              options={"clock": self.clock, "timezone": "America/Chicago"})

    def _publish(self) -> None:
        cal = icalendar.Calendar()
        cal.add("PRODID", "-//a booking site//EN")
        cal.add("VERSION", "2.0")
        cal.add("X-WR-CALNAME", "Bookings")
        for group in self.events.values():
            for event in group:
                cal.add_component(event)
        _with_zones(cal, self.zones)
        self.server.serve(cal.to_ical())
        self.offset += dt.timedelta(minutes=10)

    def make_calendar(self, name: str) -> str:
        if self.events:
            raise RuntimeError("a feed is one calendar")
        return feed_digest(self.server.url)

    def put_external(self, calendar_id: str, spec: ExternalSpec) -> str:
        uid = f"{uuid.uuid4().hex}@bookings.example.com"
        master = icalendar.Event()
        master.add("UID", uid)
        master.add("DTSTAMP", dt.datetime.now(dt.timezone.utc))
        master.add("SUMMARY", spec.summary)
        _add_when(master, "DTSTART", spec.start, self.zones)
        _add_when(master, "DTEND", spec.end, self.zones)
        if spec.rrule:
            master.add("RRULE", icalendar.vRecur.from_ical(spec.rrule))
        for exdate in spec.exdates:
            _add_when(master, "EXDATE", exdate, self.zones)
        if spec.transparent:
            master.add("TRANSP", "TRANSPARENT")
        if spec.private:
            master.add("CLASS", "PRIVATE")
        if spec.description:
            master.add("DESCRIPTION", spec.description)
        if spec.location:
            master.add("LOCATION", spec.location)
        group = [master]
        for recurrence_id, start, end, summary in spec.overrides:
            override = icalendar.Event()
            override.add("UID", uid)
            override.add("DTSTAMP", dt.datetime.now(dt.timezone.utc))
            _add_when(override, "RECURRENCE-ID", recurrence_id, self.zones)
            _add_when(override, "DTSTART", start, self.zones)
            _add_when(override, "DTEND", end, self.zones)
            override.add("SUMMARY", summary or spec.summary)
            group.append(override)
        self.events[uid] = group
        self._publish()
        return uid

    def edit_remote(self, calendar_id: str, remote_id: str, **changes: Any) -> None:
        master = self.events[remote_id][0]
        for field, prop in (("summary", "SUMMARY"), ("description", "DESCRIPTION"),
                            ("location", "LOCATION"), ("start", "DTSTART"), ("end", "DTEND")):
            if field not in changes:
                continue
            master.pop(prop, None)
            if prop in ("DTSTART", "DTEND"):
                _add_when(master, prop, changes[field], self.zones)
            else:
                master.add(prop, changes[field])
        self._publish()

    def delete_remote(self, calendar_id: str, remote_id: str) -> None:
        del self.events[remote_id]
        self._publish()

    def invalidate_sync_token(self, calendar_id: str) -> None:
        raise NotImplementedError("a feed has no sync token to break (pull-only backend)")

    def close(self) -> None:
        self.server.stop()
