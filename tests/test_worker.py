"""The scheduler: job wiring, a dirty feed re-rendered by one tick, one user's failure
isolated, the sync loop started and stopped with the scheduler."""

from __future__ import annotations

import datetime as dt
import logging
import threading

import pytest
from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from sqlalchemy import select

import calsync.worker as worker
from calsync.db.models import FeedCache, ItemAssignee, ScheduleItem, User
from calsync.feeds import ics
from calsync.schedule.records import parse_block
from calsync.schedule.store import import_document, upsert_item
from tests.test_feed_parsers import DOC

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _clock() -> dt.datetime:
    return NOW


def _load(db) -> None:  # type: ignore[no-untyped-def]
    assert import_document(db, DOC, now=NOW - dt.timedelta(days=1)).ok
    with db.session() as s:
        for user in s.scalars(select(User)):
            user.feed_enabled = True


def _cache(db, user_id: str) -> FeedCache:  # type: ignore[no-untyped-def]
    with db.session() as s:
        row = s.get(FeedCache, user_id)
        assert row is not None
        s.expunge(row)
        return row


@pytest.mark.parametrize("blocking, cls", [(True, BlockingScheduler),
                                           (False, BackgroundScheduler)])
def test_jobs_coalesce_never_overlap_and_have_grace(settings, db, blocking, cls) -> None:
    scheduler = worker.build_scheduler(settings, db, blocking=blocking)
    assert isinstance(scheduler, cls)
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert set(jobs) == {"feeds.refresh", "feeds.rebuild", "push.renew",
                         "webhooks.deliver", "webhooks.prune"}
    for job in jobs.values():
        assert job.coalesce is True and job.max_instances == 1
        assert job.misfire_grace_time and job.misfire_grace_time > 0
    assert jobs["feeds.refresh"].trigger.interval == dt.timedelta(
        seconds=settings.feeds.refresh_seconds)
    rebuild = {f.name: str(f) for f in jobs["feeds.rebuild"].trigger.fields}
    assert rebuild["hour"] == str(settings.feeds.rebuild_cron_hour) and rebuild["minute"] == "0"


def test_one_real_tick_re_renders_a_dirty_feed(settings, db) -> None:
    _load(db)
    worker.refresh_feeds_job(settings, db, _clock)
    before = _cache(db, "u1")
    assert not before.dirty and b"Extra block" not in (before.body or b"")
    with db.session() as s:
        upsert_item(s, parse_block({"id": "b-new", "user": "u1", "title": "Extra block",
                                    "start": "2026-11-30T10:00:00-06:00",
                                    "end": "2026-11-30T11:00:00-06:00"}), now=NOW)
    assert _cache(db, "u1").dirty

    scheduler = worker.build_scheduler(settings, db, blocking=False, clock=_clock)
    done = threading.Event()
    outcome: list[object] = []

    def listener(event) -> None:  # type: ignore[no-untyped-def]
        if event.job_id == "feeds.refresh":
            outcome.append(getattr(event, "retval", None) or getattr(event, "exception", None))
            done.set()

    scheduler.add_listener(listener, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    scheduler.start()
    try:
        assert done.wait(30), "the refresh job did not run"
    finally:
        scheduler.shutdown(wait=True)
    assert outcome and getattr(outcome[0], "rendered", None) == ["u1"]
    after = _cache(db, "u1")
    assert not after.dirty and after.etag != before.etag
    assert "SUMMARY:Extra block" in ics.unfold(after.body.decode())


def test_an_exception_in_one_users_feed_does_not_stop_the_others(settings, db, caplog) -> None:
    _load(db)
    # u-bad's data is broken in a way validation would never let in: an unknown zone.
    with db.session() as s:
        s.add(User(id="u-bad", name="Broken", timezone="UTC", feed_enabled=True))
        s.flush()
        item = ScheduleItem(kind="block", ext_id="b-bad", title="x", tzid="Mars/Olympus",
                            start_at=NOW, end_at=NOW + dt.timedelta(hours=1),
                            content_hash="0" * 64, created_at=NOW, updated_at=NOW)
        item.assignees.append(ItemAssignee(user_id="u-bad"))
        s.add(item)
        s.add(FeedCache(user_id="u-bad", dirty=True))
    caplog.set_level(logging.ERROR, logger="calsync.feeds")
    report = worker.refresh_feeds_job(settings, db, _clock)
    assert report is not None
    assert report.failed == ["u-bad"]
    assert sorted(report.rendered) == ["u1", "u2", "u3"]
    assert any("u-bad" in r.getMessage() for r in caplog.records)
    for uid in ("u1", "u2", "u3"):
        row = _cache(db, uid)
        assert not row.dirty and row.body and row.body.startswith(b"BEGIN:VCALENDAR")
    assert _cache(db, "u-bad").dirty  # left for the next tick
    rebuild = worker.rebuild_feeds_job(settings, db, _clock)
    assert rebuild.failed == ["u-bad"] and len(rebuild.rendered) == 3


def test_disabled_feeds_are_not_rendered_until_issued(settings, db) -> None:
    assert import_document(db, DOC, now=NOW).ok
    assert worker.refresh_feeds_job(settings, db, _clock).rendered == []
    assert _cache(db, "u1").dirty
    with db.session() as s:
        s.get(User, "u1").feed_enabled = True
    assert worker.refresh_feeds_job(settings, db, _clock).rendered == ["u1"]


def test_sync_tick_calls_the_runner_with_now(settings, db, monkeypatch) -> None:
    calls: list[tuple[object, object, dt.datetime]] = []
    monkeypatch.setattr(worker, "run_due_syncs",
                        lambda s, d, now: calls.append((s, d, now)) or {"ran": 1})
    assert worker.sync_tick_job(settings, db, _clock) == {"ran": 1}
    assert calls == [(settings, db, NOW)]


def test_push_renewal_job_is_scheduled_and_calls_renewal_with_now(settings, db,
                                                                   monkeypatch) -> None:
    calls: list[dt.datetime] = []
    monkeypatch.setattr(worker, "renew_push_subscriptions",
                        lambda s, d, now: calls.append(now) or {"created": 0})
    assert worker.push_renew_job(settings, db, _clock) == {"created": 0}
    assert calls == [NOW]
    scheduler = worker.build_scheduler(settings, db, blocking=False, clock=_clock)
    assert {j.id for j in scheduler.get_jobs()} >= {"push.renew"}


def test_a_failing_sync_tick_is_logged_and_the_next_tick_goes_on(settings, db, monkeypatch,
                                                                 caplog) -> None:
    def boom(*_a: object) -> None:
        raise RuntimeError("provider exploded")

    monkeypatch.setattr(worker, "run_due_syncs", boom)
    assert worker.sync_tick_job(settings, db, _clock) is None
    assert "sync tick failed" in caplog.text
