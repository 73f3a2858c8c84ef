"""Serving, scheduled refresh and schedule writes at the same time: no errors, and the
last change is what the feed ends up showing."""

from __future__ import annotations

import datetime as dt
import threading

from sqlalchemy import select

from calsync.db.models import FeedCache, User
from calsync.feeds import ics
from calsync.feeds.service import current_feed, refresh_dirty_feeds
from calsync.schedule.records import parse_block
from calsync.schedule.store import import_document, upsert_item
from tests.test_feed_parsers import DOC

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def test_readers_refresher_and_writers_together(db, settings) -> None:
    assert import_document(db, DOC, now=NOW - dt.timedelta(days=1)).ok
    with db.session() as s:
        for user in s.scalars(select(User)):
            user.feed_enabled = True
    errors: list[BaseException] = []
    stop = threading.Event()

    def guarded(fn):  # type: ignore[no-untyped-def]
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)
                stop.set()
        return run

    def writer() -> None:
        # A write transaction taken up front, as every SQLite writer needs when others
        # write at the same time (a deferred read-then-write loses its snapshot).
        for i in range(15):
            with db.session() as s:
                upsert_item(s, parse_block({
                    "id": "b-moving", "user": "u1", "title": f"Moving block {i}",
                    "start": "2026-11-30T10:00:00-06:00", "end": "2026-11-30T11:00:00-06:00"}),
                    now=NOW)
        stop.set()

    def reader() -> None:
        while not stop.is_set():
            assert current_feed(settings, db, "u1", NOW).body.startswith(b"BEGIN:VCALENDAR")

    def refresher() -> None:
        while not stop.is_set():
            report = refresh_dirty_feeds(settings, db, NOW)
            assert report.failed == []

    threads = [threading.Thread(target=guarded(f)) for f in (writer, reader, reader, refresher)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    refresh_dirty_feeds(settings, db, NOW)
    body = ics.unfold(current_feed(settings, db, "u1", NOW).body.decode())
    assert "SUMMARY:Moving block 14" in body and "Moving block 13" not in body
    with db.session() as s:
        assert not s.get(FeedCache, "u1").dirty
