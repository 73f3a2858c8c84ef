"""APScheduler (3.x) wiring: what runs when.

Jobs (all ``coalesce=True``, ``max_instances=1``, with a misfire grace time):

- ``feeds.refresh``  every ``feeds.refresh_seconds``: re-render dirty feeds;
- ``feeds.rebuild``  daily at ``feeds.rebuild_cron_hour`` UTC: re-render every feed;
- ``sync.tick``      every 30 s: ``calsync.sync.runner.run_due_syncs`` when that module
  is part of this build.

Each job function takes ``now`` from the clock at call time; a failure is logged and the
next run goes on (a broken import other than the missing sync runner itself is raised, so
APScheduler logs it loudly). One user's failing feed does not stop the others (see
``calsync.feeds.service.render_users``).
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
from collections.abc import Callable
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from calsync.config import Settings
from calsync.db.session import Database
from calsync.feeds.service import rebuild_all_feeds, refresh_dirty_feeds

log = logging.getLogger("calsync.worker")

SYNC_TICK_SECONDS = 30
SYNC_RUNNER_MODULE = "calsync.sync.runner"
Clock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def refresh_feeds_job(settings: Settings, db: Database, clock: Clock = _utcnow) -> Any:
    try:
        return refresh_dirty_feeds(settings, db, clock())
    except Exception:  # noqa: BLE001 - a scheduler job must not die
        log.exception("feed refresh failed")
        return None


def rebuild_feeds_job(settings: Settings, db: Database, clock: Clock = _utcnow) -> Any:
    try:
        return rebuild_all_feeds(settings, db, clock())
    except Exception:  # noqa: BLE001
        log.exception("nightly feed rebuild failed")
        return None


def sync_tick_job(settings: Settings, db: Database, clock: Clock = _utcnow) -> Any:
    """Run due syncs; skipped quietly when the sync runner is not in this build."""
    try:
        runner = importlib.import_module(SYNC_RUNNER_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != SYNC_RUNNER_MODULE:
            raise
        log.debug("sync runner not present; sync tick skipped")
        return None
    try:
        return runner.run_due_syncs(settings, db, clock())
    except Exception:  # noqa: BLE001
        log.exception("sync tick failed")
        return None


def build_scheduler(settings: Settings, db: Database, blocking: bool,
                    clock: Clock = _utcnow) -> BaseScheduler:
    """A BlockingScheduler (``calsync worker``) or BackgroundScheduler (``calsync serve``)
    with the jobs above added, not started."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # "Running job ..." every few seconds is noise unless debugging (-v).
        executor_log = logging.getLogger("apscheduler.executors.default")
        if executor_log.level == logging.NOTSET:
            executor_log.setLevel(logging.WARNING)
    cls = BlockingScheduler if blocking else BackgroundScheduler
    scheduler = cls(timezone=dt.timezone.utc,
                    job_defaults={"coalesce": True, "max_instances": 1})
    refresh = settings.feeds.refresh_seconds
    scheduler.add_job(refresh_feeds_job, IntervalTrigger(seconds=refresh, timezone=dt.timezone.utc),
                      args=(settings, db, clock), id="feeds.refresh", name="re-render dirty feeds",
                      coalesce=True, max_instances=1, misfire_grace_time=max(refresh, 5),
                      next_run_time=_utcnow())
    scheduler.add_job(rebuild_feeds_job,
                      CronTrigger(hour=settings.feeds.rebuild_cron_hour, minute=0,
                                  timezone=dt.timezone.utc),
                      args=(settings, db, clock), id="feeds.rebuild", name="rebuild all feeds",
                      coalesce=True, max_instances=1, misfire_grace_time=3600)
    scheduler.add_job(sync_tick_job,
                      IntervalTrigger(seconds=SYNC_TICK_SECONDS, timezone=dt.timezone.utc),
                      args=(settings, db, clock), id="sync.tick", name="run due syncs",
                      coalesce=True, max_instances=1, misfire_grace_time=SYNC_TICK_SECONDS)
    return scheduler
