"""calsync's subscribed-calendar connector (entry point ``ics``): a read-only ``.ics`` feed
(a school timetable, a shift roster, a booking site's export) used as a conflict calendar.

Modules: ``factory`` (entry-point target), ``connector`` (pull on a refresh schedule with
conditional requests), ``fetch`` (HTTP, size cap, error mapping), ``feed`` (feed text ->
events, ``X-WR-TIMEZONE`` resolved; parsing is the core's :mod:`calsync.ical`).
"""

from __future__ import annotations

from calsync_ics.factory import IcsFactory

__all__ = ["IcsFactory"]
