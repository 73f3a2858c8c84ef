"""Subscribed calendars (DESIGN 6.2) end to end: ``subscribe_feed`` and the sync runner
against a real HTTP server on 127.0.0.1 serving real files of the ics corpus, on SQLite and
PostgreSQL. Conditional requests and 304s, the refresh schedule a feed asks for, a changed
file, an invalid file and a dead server (the calendar goes stale, its last good busy blocks
stay), recurrences expanded, X-WR-TIMEZONE floating times resolved."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from calsync.availability.check import check_availability
from calsync.config import Settings
from calsync.db.models import Calendar, Connection, ExternalBusy, ExternalEvent
from calsync.db.session import Database
from calsync.errors import ConnectFailed, Unreachable
from calsync.privacy import Operator
from calsync.schedule.store import import_document
from calsync.sync.runner import ConnectionResult, build_connector, sync_connection
from calsync.sync.subscriptions import subscribe_feed
from tests.ics_feed_server import FeedServer

UTC = dt.timezone.utc
SECRET_PATH = "secret-key-4f9a1c"


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **kw: float) -> dt.datetime:
        self.now += dt.timedelta(**kw)
        return self.now


@pytest.fixture
def feed() -> Iterator[FeedServer]:
    server = FeedServer()
    server.start()
    yield server
    server.stop()


def add_user(db: Database, now: dt.datetime) -> None:
    report = import_document(db, {"users": [{"id": "u1", "name": "Ana", "email": "ana@x.org",
                                             "timezone": "America/Chicago"}]}, now=now)
    assert report.ok, report.errors


def subscribe(settings: Settings, db: Database, feed: FeedServer, clock: Clock) -> int:
    add_user(db, clock.now)
    summary = subscribe_feed(settings, db, "u1", feed.url, clock.now)
    with db.read_session() as s:
        conn = s.scalar(select(Connection).where(Connection.public_id == summary["id"]))
        assert conn is not None
        return conn.id


def sync(settings: Settings, db: Database, conn_id: int, clock: Clock) -> ConnectionResult:
    with db.session() as s:
        conn = s.get(Connection, conn_id)
        assert conn is not None
        connector = build_connector(settings, conn, {"clock": clock, "sleep": lambda _s: None})
    try:
        return sync_connection(settings, db, conn_id, clock.now, connector,
                               sleep=lambda _s: None)
    finally:
        connector.close()


def busy(db: Database) -> list[tuple[dt.datetime, dt.datetime]]:
    with db.read_session() as s:
        return [(r[0], r[1]) for r in s.execute(
            select(ExternalBusy.start_at, ExternalBusy.end_at).order_by(ExternalBusy.start_at))]


def calendar(db: Database) -> Calendar:
    with db.read_session() as s:
        cal = s.scalar(select(Calendar))
        assert cal is not None
        s.expunge(cal)  # a snapshot to read after the session
        return cal


def test_subscription_is_a_read_only_conflict_calendar_with_x_wr_timezone_resolved(
        settings: Settings, db: Database, feed: FeedServer) -> None:
    feed.serve_file("ical.net__ProdID2.ics")  # CSV export: floating times, X-WR-TIMEZONE
    clock = Clock(dt.datetime(2006, 11, 5, 12, tzinfo=UTC))
    conn_id = subscribe(settings, db, feed, clock)
    cal = calendar(db)
    assert (cal.role, cal.read_only, cal.name) == ("conflict", True, "UNC Basketball")
    with db.read_session() as s:
        conn = s.get(Connection, conn_id)
        assert conn is not None and conn.provider == "ics" and conn.url is None
        # the feed's address is a secret: sealed, never shown
        assert SECRET_PATH not in conn.account and "127.0.0.1" in conn.account
        assert conn.credentials is not None and SECRET_PATH.encode() not in conn.credentials

    result = sync(settings, db, conn_id, clock)
    assert result.status == "ok", result.error
    assert result.calendars[0].counts.get("imported") == 40
    # DTSTART:20061111T120000 floating, X-WR-TIMEZONE US/Eastern -> 17:00 UTC (EST); read in
    # the user's zone (Chicago) it would be 18:00 UTC
    assert (dt.datetime(2006, 11, 11, 17, tzinfo=UTC),
            dt.datetime(2006, 11, 11, 18, tzinfo=UTC)) in busy(db)
    with db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(ExternalEvent)) == 40


def test_conditional_requests_304_and_the_refresh_interval_the_feed_asks_for(
        settings: Settings, db: Database, feed: FeedServer) -> None:
    feed.serve_file("node-ical__tripit-location-escaping.ics")  # X-PUBLISHED-TTL:PT15M
    clock = Clock(dt.datetime(2011, 10, 1, 12, tzinfo=UTC))
    conn_id = subscribe(settings, db, feed, clock)
    assert sync(settings, db, conn_id, clock).status == "ok"
    blocks = busy(db)
    assert blocks
    fetched = len(feed.requests)

    clock.advance(minutes=6)  # more than 5 minutes, less than the feed's 15: not fetched
    result = sync(settings, db, conn_id, clock)
    assert result.status == "ok" and result.calendars[0].requests == 0
    assert len(feed.requests) == fetched

    clock.advance(minutes=10)  # 16 minutes after the fetch: a conditional request, 304
    result = sync(settings, db, conn_id, clock)
    assert result.status == "ok", result.error
    assert len(feed.requests) == fetched + 1
    assert feed.requests[-1]["If-None-Match"] == feed.etag
    assert feed.requests[-1]["If-Modified-Since"]
    assert result.calendars[0].requests == 1 and not result.calendars[0].full
    assert {k: n for k, n in result.totals().items() if n} == {}
    assert busy(db) == blocks
    assert calendar(db).last_success_at == clock.now


def test_without_a_hint_the_feed_is_fetched_at_most_every_five_minutes(
        settings: Settings, db: Database, feed: FeedServer) -> None:
    feed.serve_file("ical4j__2207678.ics")  # Outlook 2007 export, no refresh hint
    clock = Clock(dt.datetime.now(UTC).replace(microsecond=0))
    conn_id = subscribe(settings, db, feed, clock)
    sync(settings, db, conn_id, clock)
    fetched = len(feed.requests)
    clock.advance(minutes=4)
    sync(settings, db, conn_id, clock)
    assert len(feed.requests) == fetched
    clock.advance(minutes=1, seconds=1)
    sync(settings, db, conn_id, clock)
    assert len(feed.requests) == fetched + 1


def test_recurrences_are_expanded_and_a_changed_file_replaces_the_busy_blocks(
        settings: Settings, db: Database, feed: FeedServer) -> None:
    feed.serve_file("ical4j__2207678.ics")  # weekly on Fridays since 2008, 09:30 Singapore
    clock = Clock(dt.datetime.now(UTC).replace(microsecond=0))
    conn_id = subscribe(settings, db, feed, clock)
    result = sync(settings, db, conn_id, clock)
    assert result.status == "ok", result.error
    blocks = busy(db)
    assert len(blocks) >= 50  # a year and a month of Fridays
    assert all(s.weekday() == 4 and (s.hour, s.minute) == (1, 30)
               and e - s == dt.timedelta(minutes=10) for s, e in blocks)

    feed.serve_file("ical.net__Bug2916581.ics")  # two weekly Tokyo events instead
    clock.advance(minutes=6)
    result = sync(settings, db, conn_id, clock)
    assert result.status == "ok", result.error
    assert not result.calendars[0].full  # the difference to the last fetch
    counts = result.calendars[0].counts
    assert counts.get("dropped") == 1 and counts.get("imported") == 2
    blocks = busy(db)
    assert blocks and {(s.weekday(), s.hour) for s, _ in blocks} == {(4, 2), (5, 2)}


@pytest.mark.parametrize("bad", ["ical4j__13-MoonPhase.ics", "html"])
def test_an_invalid_file_marks_the_calendar_stale_and_keeps_the_last_good_blocks(
        settings: Settings, db: Database, feed: FeedServer, bad: str) -> None:
    feed.serve_file("ical4j__2207678.ics")
    clock = Clock(dt.datetime.now(UTC).replace(microsecond=0))
    conn_id = subscribe(settings, db, feed, clock)
    assert sync(settings, db, conn_id, clock).status == "ok"
    good = busy(db)

    if bad == "html":
        feed.serve("<!doctype html><title>Sign in</title>", content_type="text/html")
    else:
        feed.serve_file(bad)  # truncated mid-property: no complete VCALENDAR
    clock.advance(minutes=6)
    result = sync(settings, db, conn_id, clock)
    assert result.status == "error"
    cal = calendar(db)
    assert cal.status == "error" and cal.last_error
    assert ("not an iCalendar feed" if bad == "html" else "cut off") in cal.last_error
    assert SECRET_PATH not in cal.last_error and SECRET_PATH not in (result.error or "")
    assert busy(db) == good  # nothing deleted on a failed fetch
    day = good[0][0]
    with db.read_session() as s:
        [entry] = check_availability(s, ["u1"], day, day + dt.timedelta(minutes=5),
                                     Operator(), clock.now, dt.timedelta(minutes=30))
    assert entry["stale"] is True and not entry["available"]

    clock.advance(minutes=1)  # still failing: tried again at the next sync, not in 5 min
    fetched = len(feed.requests)
    sync(settings, db, conn_id, clock)
    assert len(feed.requests) > fetched
    feed.serve_file("ical4j__2207678.ics")
    clock.advance(minutes=1)
    assert sync(settings, db, conn_id, clock).status == "ok"
    assert calendar(db).status == "ok" and busy(db) == good


def test_a_feed_that_suddenly_lists_nothing_is_guarded_not_mirrored(
        settings: Settings, db: Database, feed: FeedServer) -> None:
    feed.serve_file("node-ical__tripit-location-escaping.ics")
    clock = Clock(dt.datetime(2011, 10, 1, 12, tzinfo=UTC))
    conn_id = subscribe(settings, db, feed, clock)
    assert sync(settings, db, conn_id, clock).status == "ok"
    good = busy(db)
    feed.serve("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//TripIt//EN\r\nEND:VCALENDAR\r\n")
    clock.advance(minutes=16)
    result = sync(settings, db, conn_id, clock)
    assert result.status == "error" and "lists none" in (result.error or "")
    assert calendar(db).status == "guarded"
    assert busy(db) == good


def test_a_dead_server_marks_the_calendar_stale_and_keeps_the_last_good_blocks(
        settings: Settings, db: Database, feed: FeedServer) -> None:
    feed.serve_file("ical.net__Bug2916581.ics")
    clock = Clock(dt.datetime.now(UTC).replace(microsecond=0))
    conn_id = subscribe(settings, db, feed, clock)
    assert sync(settings, db, conn_id, clock).status == "ok"
    good = busy(db)
    feed.stop()
    clock.advance(minutes=6)
    result = sync(settings, db, conn_id, clock)
    assert result.status == "error"
    cal = calendar(db)
    assert cal.status == "error" and "unreachable" in (cal.last_error or "")
    assert busy(db) == good
    feed.start()  # back on the same port
    clock.advance(minutes=1)
    result = sync(settings, db, conn_id, clock)
    assert result.status == "ok", result.error
    assert calendar(db).status == "ok" and busy(db) == good


def test_subscribing_refuses_what_is_not_a_feed_with_what_to_check(
        settings: Settings, db: Database, feed: FeedServer) -> None:
    add_user(db, dt.datetime.now(UTC))
    now = dt.datetime.now(UTC)
    feed.serve("<html>login</html>", content_type="text/html")
    with pytest.raises(ConnectFailed, match="not an iCalendar feed"):
        subscribe_feed(settings, db, "u1", feed.url, now)
    with pytest.raises(ConnectFailed, match="HTTP 404"):
        subscribe_feed(settings, db, "u1", feed.url.replace("basic", "other"), now)
    port = feed.port
    feed.stop()
    with pytest.raises(Unreachable) as caught:
        subscribe_feed(settings, db, "u1", f"webcal://127.0.0.1:{port}/{SECRET_PATH}.ics",
                       now)
    assert SECRET_PATH not in str(caught.value)
    with db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Connection)) == 0
