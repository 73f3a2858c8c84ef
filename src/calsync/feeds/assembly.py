"""What a feed body is made of, shared by every path that renders one: the window, the
calendar header and VTIMEZONEs, the ETag, Last-Modified, and the source digest.

The source digest names everything a body is assembled from: the schema version, the
header text, the zones and their year range, and per item its primary key,
fragment key and ``updated_at``. An item's fragment is a function of those (the key covers
its content hash, sequence, renderer version and settings), so an equal digest means an
equal body: the rebuild can leave such a feed as it is without reading its fragments. A
digest that differs only costs a full assembly, never a wrong body.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from typing import Any

from dateutil.relativedelta import relativedelta

from calsync.config import Settings
from calsync.feeds import ics
from calsync.timezones import UTC

FEED_SCHEMA_VERSION = 1


def feed_window(settings: Settings, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """``history_months`` back to ``future_months`` ahead, whole UTC days (stable in a day)."""
    day = now.astimezone(UTC).date()
    start = day - relativedelta(months=settings.feeds.history_months)
    end = day + relativedelta(months=settings.feeds.future_months) + dt.timedelta(days=1)
    return (dt.datetime(start.year, start.month, start.day, tzinfo=UTC),
            dt.datetime(end.year, end.month, end.day, tzinfo=UTC))


def calendar_name(settings: Settings, user: Any) -> str:
    """The feed's X-WR-CALNAME for ``user`` (anything with ``name`` and ``id``)."""
    template = settings.feeds.calendar_name_template
    try:
        return template.format(name=user.name, id=user.id, user_id=user.id)
    except (KeyError, IndexError, ValueError):
        return template


def make_etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:40] + '"'


def header_for(settings: Settings, user: Any) -> str:
    """The calendar header of ``user``'s feed (``name``, ``id``, ``timezone``)."""
    return ics.calendar_header(calendar_name(settings, user), user.timezone,
                               settings.feeds.refresh_interval_minutes)


def zones_of(spans: Iterable[tuple[str, bool]]) -> list[str]:
    """The zones whose VTIMEZONE a feed carries, from its items' (``tzid``, ``all_day``)."""
    return sorted({tzid for tzid, all_day in spans
                   if not all_day and tzid not in ics.UTC_ZONES})


def zone_years(window: tuple[dt.datetime, dt.datetime]) -> tuple[int, int]:
    return window[0].year - 1, window[1].year + 2


def vtimezones(tzids: list[str], window: tuple[dt.datetime, dt.datetime]) -> list[str]:
    first, last = zone_years(window)
    return [ics.vtimezone(t, first, last) for t in tzids]


def source_digest(header: str, tzids: list[str], window: tuple[dt.datetime, dt.datetime],
                  items: list[str]) -> str:
    """Digest of a body's sources; ``items`` are ``"pk|fragment key|updated_at"``, each
    with the key its fragment has when the body is assembled. Their order does not count
    (they are sorted first): the feed's order follows from the items' starts, which their
    fragment keys cover, so the database may hand them over in any order."""
    first, last = zone_years(window)
    head = f"{FEED_SCHEMA_VERSION}\x1e{header}\x1e{first}-{last}\x1e{','.join(tzids)}\x1e"
    return hashlib.sha256((head + "\n".join(sorted(items))).encode("utf-8")).hexdigest()


def next_last_modified(previous: dt.datetime | None, same_body: bool, newest: dt.datetime,
                       now: dt.datetime) -> dt.datetime:
    """Last-Modified of a (re)assembled feed: kept while the body is the same, else the
    newest change among the user and their items in whole seconds."""
    if same_body and previous is not None:
        return previous
    # Deletions and reassignments can make the newest remaining change older than what
    # was served before, and HTTP dates have whole seconds: Last-Modified must still move
    # forward whenever the body changes, or If-Modified-Since would answer 304.
    last_modified = newest.replace(microsecond=0)
    if previous is not None and last_modified <= previous:
        last_modified = max(now.replace(microsecond=0), previous + dt.timedelta(seconds=1))
    return last_modified
