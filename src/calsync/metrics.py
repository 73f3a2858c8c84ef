"""Metrics in the Prometheus text format, through prometheus-client.

- :data:`REGISTRY` holds this process's counters and histograms (subsystems register
  theirs on it, e.g. ``calsync.outbox.metrics``);
- :data:`DATABASE_GAUGES` lists functions ``(session, now) -> [MetricFamily]`` read from
  the database at scrape time, so any process serving ``/metrics`` reports the whole
  installation (users, items, dirty feeds, connections, the outbox);
- :func:`render` gives both for ``GET /metrics``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from calsync.db.models import Connection, FeedCache, ScheduleItem, User
from calsync.db.session import Database

REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = CONTENT_TYPE_LATEST
GaugeSource = Callable[[Session, dt.datetime], Iterable[Any]]

# Sync (calsync.sync.runner).
SYNC_RUNS = Counter("calsync_sync_runs", "Connection syncs by provider and outcome.",
                    ["provider", "status"], registry=REGISTRY)
SYNC_DURATION = Histogram("calsync_sync_duration_seconds", "Time one connection's sync took.",
                          ["provider", "status"], registry=REGISTRY)
LEASE_TAKEOVERS = Counter("calsync_lease_takeovers",
                          "Connection leases taken over (expired, or holder gone).",
                          ["reason"], registry=REGISTRY)

# Provider HTTP (the connectors' retry layer, calsync.sync.retry).
PROVIDER_REQUESTS = Counter("calsync_provider_requests", "HTTP requests to calendar "
                            "providers by provider and answer status ('error' when none came).",
                            ["provider", "status"], registry=REGISTRY)
PROVIDER_THROTTLED = Counter("calsync_provider_throttled", "Provider answers that throttled "
                             "(429, or 503 with Retry-After), by provider.", ["provider"],
                             registry=REGISTRY)
PROVIDER_RETRY_AFTER = Histogram("calsync_provider_retry_after_seconds", "Waits providers "
                                 "asked for in Retry-After, by provider.", ["provider"],
                                 buckets=(1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                                          900.0, 3600.0), registry=REGISTRY)
PUSH_NOTIFICATIONS = Counter("calsync_push_notifications", "Provider push notifications by "
                             "provider and outcome (accepted, rejected).",
                             ["provider", "outcome"], registry=REGISTRY)

# Feeds (calsync.api.feeds) and bookings (calsync.api.availability).
FEED_REQUESTS = Counter("calsync_feed_requests", "Feed requests by outcome (200, 304, 404) "
                        "and client family (from User-Agent).", ["outcome", "client"],
                        registry=REGISTRY)
BOOKINGS = Counter("calsync_bookings", "Bookings through the API by outcome (created, forced, "
                   "conflict, stale).", ["outcome"], registry=REGISTRY)

_CLIENT_FAMILIES = (("google", "google"), ("outlook", "outlook"), ("microsoft", "outlook"),
                    ("exchange", "outlook"), ("dataaccessd", "apple"),
                    ("calendaragent", "apple"), ("ical", "apple"), ("macos", "apple"),
                    ("iphone", "apple"), ("thunderbird", "thunderbird"),
                    ("lightning", "thunderbird"), ("davx5", "davx5"), ("icsx5", "davx5"),
                    ("curl", "cli"), ("wget", "cli"), ("python", "script"),
                    ("go-http", "script"), ("wrk", "bench"), ("mozilla", "browser"))


def client_family(user_agent: str | None) -> str:
    """A bounded label for a feed client, from its User-Agent."""
    ua = (user_agent or "").lower()
    for needle, family in _CLIENT_FAMILIES:
        if needle in ua:
            return family
    return "other" if ua else "none"


def _core_gauges(s: Session, now: dt.datetime) -> list[GaugeMetricFamily]:
    users = GaugeMetricFamily("calsync_users", "Users known to calsync.")
    users.add_metric([], s.scalar(select(func.count()).select_from(User)
                                  .where(User.deleted_at.is_(None))) or 0)
    items = GaugeMetricFamily("calsync_schedule_items", "Live schedule items by kind.",
                              labels=["kind"])
    for kind, n in s.execute(select(ScheduleItem.kind, func.count())
                             .where(ScheduleItem.deleted_at.is_(None))
                             .group_by(ScheduleItem.kind)):
        items.add_metric([kind], n)
    # Only feeds that will be rendered: a user without a feed (never issued, or revoked)
    # keeps its dirty flag until a feed is issued, and that is no backlog.
    dirty = GaugeMetricFamily("calsync_feeds_dirty", "Issued feeds waiting to be re-rendered.")
    dirty.add_metric([], s.scalar(select(func.count()).select_from(FeedCache)
                                  .join(User, User.id == FeedCache.user_id)
                                  .where(FeedCache.dirty, User.feed_enabled,
                                         User.deleted_at.is_(None))) or 0)
    conns = GaugeMetricFamily("calsync_connections", "Connections by provider and status.",
                              labels=["provider", "status"])
    for provider, status, n in s.execute(select(Connection.provider, Connection.status,
                                                func.count())
                                         .group_by(Connection.provider, Connection.status)):
        conns.add_metric([provider, status], n)
    return [users, items, dirty, conns]


def _sync_queue_gauges(s: Session, now: dt.datetime) -> list[GaugeMetricFamily]:
    """Connections due or overdue (not those needing re-auth) and the oldest wait."""
    overdue = (Connection.status != "needs_reauth",
               or_(Connection.next_sync_at.is_(None), Connection.next_sync_at <= now))
    depth = s.scalar(select(func.count()).select_from(Connection).where(*overdue)) or 0
    oldest = s.scalar(select(func.min(func.coalesce(Connection.next_sync_at,
                                                    Connection.created_at)))
                      .where(*overdue))
    age = 0.0
    if oldest is not None:
        if oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=dt.timezone.utc)
        age = max(0.0, (now - oldest).total_seconds())
    queue = GaugeMetricFamily("calsync_sync_queue_depth", "Connections whose sync is due or "
                              "overdue (not counting those that need re-auth).")
    queue.add_metric([], depth)
    wait = GaugeMetricFamily("calsync_sync_oldest_overdue_seconds", "How long the most "
                             "overdue connection has waited past its due time (0 if none).")
    wait.add_metric([], age)
    return [queue, wait]


DATABASE_GAUGES: list[GaugeSource] = [_core_gauges, _sync_queue_gauges]


class _Snapshot(Collector):
    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> Iterator[Any]:
        return iter(self.families)


def render(db: Database, now: dt.datetime) -> bytes:
    """The database gauges, then this process's registry."""
    families: list[Any] = []
    with db.read_session() as s:
        for source in DATABASE_GAUGES:
            families.extend(source(s, now))
    snapshot = CollectorRegistry(auto_describe=False)
    snapshot.register(_Snapshot(families))
    return generate_latest(snapshot) + generate_latest(REGISTRY)
