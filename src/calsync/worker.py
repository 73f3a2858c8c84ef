"""What runs when: APScheduler (3.x) jobs plus the sync loop.

Jobs (all ``coalesce=True``, ``max_instances=1``, with a misfire grace time):

- ``feeds.refresh``  every ``feeds.refresh_seconds``: re-render dirty feeds;
- ``feeds.rebuild``  daily at ``feeds.rebuild_cron_hour`` UTC: re-render every feed;
- ``push.renew``     every 15 min: ``calsync.push.renew_push_subscriptions`` (create, renew
  and drop provider push channels before they expire).
- ``webhooks.deliver`` every ``webhooks.poll_seconds``: ``calsync.outbox.delivery.Deliverer
  .pump`` numbers new outbox events and hands due deliveries to the deliverer's own thread
  pool; it never waits for a receiver, so a slow one delays no sync.
- ``webhooks.prune`` daily at 03:30 UTC: ``calsync.outbox.retention.prune`` deletes
  events older than ``webhooks.retention_days`` whose deliveries are settled (in small
  batches, each its own transaction).

Syncs run in :class:`SyncLoop`, a thread started and stopped with the scheduler: it runs
``calsync.sync.runner.run_due_syncs`` (up to ``sync.concurrency`` connections at once,
claiming more as threads free up), then sleeps until the next tick (30 s) or until it is
woken (:mod:`calsync.wakeups`: a push notification made a connection due; on PostgreSQL a
:class:`~calsync.wakeups.PostgresListener` hears other processes' NOTIFY).

Each job function takes ``now`` from the clock at call time; a failure is logged and the
next run goes on. One user's failing feed does not stop the others (see
``calsync.feeds.service.render_users``), nor one failing connection the other syncs.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any

from apscheduler.events import EVENT_SCHEDULER_SHUTDOWN, EVENT_SCHEDULER_START
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from calsync.config import Settings
from calsync.db.session import Database
from calsync.feeds.service import rebuild_all_feeds, refresh_dirty_feeds
from calsync.push import renew_push_subscriptions
from calsync.sync.runner import run_due_syncs
from calsync.wakeups import LOCAL, PostgresListener, Wakeup

log = logging.getLogger("calsync.worker")

SYNC_TICK_SECONDS = 30
PUSH_RENEW_SECONDS = 15 * 60
PRUNE_HOUR = 3  # webhooks.prune runs daily at 03:30 UTC
Clock = Callable[[], dt.datetime]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _guarded(what: str, job: Callable[[Settings, Database, dt.datetime], Any],
             settings: Settings, db: Database, clock: Clock) -> Any:
    """Run one job with ``now`` from the clock; a failure is logged, never kills the
    scheduler, and the next run goes on."""
    try:
        return job(settings, db, clock())
    except Exception:  # noqa: BLE001 - a scheduler job must not die
        log.exception("%s failed", what)
        return None


def refresh_feeds_job(settings: Settings, db: Database, clock: Clock = _utcnow) -> Any:
    """Re-render the feeds whose items changed."""
    return _guarded("feed refresh", refresh_dirty_feeds, settings, db, clock)


def rebuild_feeds_job(settings: Settings, db: Database, clock: Clock = _utcnow) -> Any:
    """Re-render every feed (the window moves a day)."""
    return _guarded("nightly feed rebuild", rebuild_all_feeds, settings, db, clock)


def sync_tick_job(settings: Settings, db: Database, clock: Clock = _utcnow,
                  stop: threading.Event | None = None) -> Any:
    """Run the syncs that are due (claiming with the clock's time as it goes)."""
    def run(s: Settings, d: Database, now: dt.datetime) -> Any:
        if stop is None:
            return run_due_syncs(s, d, now)
        return run_due_syncs(s, d, now, clock=clock, stop=stop)

    return _guarded("sync tick", run, settings, db, clock)


class SyncLoop:
    """The sync worker of one process: a thread that runs due syncs, then waits for the
    next tick or a wake-up. On PostgreSQL it also listens for other processes' NOTIFY."""

    def __init__(self, settings: Settings, db: Database, clock: Clock = _utcnow,
                 wakeup: Wakeup = LOCAL, tick_seconds: float = SYNC_TICK_SECONDS) -> None:
        self.settings, self.db, self.clock = settings, db, clock
        self.wakeup, self.tick_seconds = wakeup, tick_seconds
        self.rounds = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listener = PostgresListener(db.url, wakeup) if db.dialect == "postgresql" \
            else None

    def start(self) -> None:
        if self._thread is not None:
            return
        if self.listener is not None:
            self.listener.start()
        self._thread = threading.Thread(target=self._run, name="calsync-sync-loop",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming; wait up to ``timeout`` for the syncs in flight."""
        self._stop.set()
        self.wakeup.set()
        if self.listener is not None:
            self.listener.stop()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.wakeup.clear()  # wake-ups from now on are seen by the next wait
            sync_tick_job(self.settings, self.db, self.clock, self._stop)
            self.rounds += 1
            if self._stop.is_set():
                break
            self.wakeup.wait(self.tick_seconds)


def push_renew_job(settings: Settings, db: Database, clock: Clock = _utcnow) -> Any:
    """Keep push channels alive (Graph subscriptions, Google watch channels)."""
    return _guarded("push subscription renewal", renew_push_subscriptions, settings, db, clock)


def build_scheduler(settings: Settings, db: Database, blocking: bool,
                    clock: Clock = _utcnow, sync_loop: SyncLoop | None = None
                    ) -> BaseScheduler:
    """A BlockingScheduler (``calsync worker``) or BackgroundScheduler (``calsync serve``)
    with the jobs above added, not started. The sync loop (``sync_loop``, or one built
    here) starts when the scheduler starts and stops when it shuts down."""
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
    scheduler.add_job(push_renew_job,
                      IntervalTrigger(seconds=PUSH_RENEW_SECONDS, timezone=dt.timezone.utc),
                      args=(settings, db, clock), id="push.renew", name="renew push channels",
                      coalesce=True, max_instances=1, misfire_grace_time=PUSH_RENEW_SECONDS,
                      next_run_time=_utcnow())
    add_webhook_delivery(scheduler, settings, db, clock)
    scheduler.add_job(prune_outbox_job, CronTrigger(hour=PRUNE_HOUR, minute=30,
                                                    timezone=dt.timezone.utc),
                      args=(settings, db, clock), id="webhooks.prune",
                      name="delete old outbox events", coalesce=True, max_instances=1,
                      misfire_grace_time=3600)
    loop = sync_loop or SyncLoop(settings, db, clock)
    scheduler.add_listener(lambda _event: loop.start(), EVENT_SCHEDULER_START)
    scheduler.add_listener(lambda _event: loop.stop(), EVENT_SCHEDULER_SHUTDOWN)
    return scheduler


def prune_outbox_job(settings: Settings, db: Database, clock: Clock = _utcnow) -> Any:
    """Delete outbox events past ``webhooks.retention_days`` (their deliveries settled)."""
    from calsync.outbox.retention import prune

    def run(s: Settings, d: Database, now: dt.datetime) -> Any:
        result = prune(d, s.webhooks.retention_days, now)
        if result.events:
            log.info("outbox retention removed %s events, %s deliveries, %s attempts",
                     result.events, result.deliveries, result.attempts)
        return result

    return _guarded("outbox retention", run, settings, db, clock)


def webhook_pump_job(deliverer: Any) -> Any:
    """Start the webhook deliveries that are due (they run in the deliverer's pool)."""
    try:
        return deliverer.pump()
    except Exception:  # noqa: BLE001 - a scheduler job must not die
        log.exception("webhook delivery pump failed")
        return None


def add_webhook_delivery(scheduler: BaseScheduler, settings: Settings, db: Database,
                         clock: Clock = _utcnow) -> Any:
    """The ``webhooks.deliver`` job and its deliverer (closed with the scheduler)."""
    from calsync.outbox.delivery import Deliverer

    deliverer = Deliverer(settings, db, clock=clock)
    poll = settings.webhooks.poll_seconds
    scheduler.add_job(webhook_pump_job, IntervalTrigger(seconds=poll, timezone=dt.timezone.utc),
                      args=(deliverer,), id="webhooks.deliver", name="deliver webhooks",
                      coalesce=True, max_instances=1, misfire_grace_time=max(int(poll), 5),
                      next_run_time=_utcnow())
    # Deliveries in flight finish (within the timeout) and are recorded, not sent again.
    scheduler.add_listener(lambda _event: deliverer.close(wait=True),
                           EVENT_SCHEDULER_SHUTDOWN)
    return deliverer
