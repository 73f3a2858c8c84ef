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
from sqlalchemy import func, select
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
    dirty = GaugeMetricFamily("calsync_feeds_dirty", "Feeds waiting to be re-rendered.")
    dirty.add_metric([], s.scalar(select(func.count()).select_from(FeedCache)
                                  .where(FeedCache.dirty)) or 0)
    conns = GaugeMetricFamily("calsync_connections", "Connections by provider and status.",
                              labels=["provider", "status"])
    for provider, status, n in s.execute(select(Connection.provider, Connection.status,
                                                func.count())
                                         .group_by(Connection.provider, Connection.status)):
        conns.add_metric([provider, status], n)
    return [users, items, dirty, conns]


DATABASE_GAUGES: list[GaugeSource] = [_core_gauges]


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
