"""Webhook metrics: delivery attempts by outcome (a counter of this process, on
:data:`calsync.metrics.REGISTRY`), and gauges read from the database at scrape time
(:data:`calsync.metrics.DATABASE_GAUGES`), so any process serving ``/metrics`` reports
every worker's outbox: deliveries by status, the age of the oldest undelivered event and
endpoints by state. Counters of this process also count endpoints disabled (by reason)
and rows deleted by retention."""

from __future__ import annotations

import datetime as dt

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from calsync import metrics as process_metrics
from calsync.db.models import OutboxEvent, WebhookDelivery, WebhookEndpoint
from calsync.metrics import REGISTRY

ATTEMPTS = Counter("calsync_webhook_attempts", "Webhook delivery attempts by outcome "
                   "(delivered, retry, timeout, failed: given up, gone: endpoint disabled).",
                   ["outcome"], registry=REGISTRY)
ENDPOINTS_DISABLED = Counter("calsync_webhook_endpoints_disabled", "Webhook endpoints "
                             "disabled by reason (gone: answered 410; failing: every "
                             "attempt failed for webhooks.disable_after_days).", ["reason"],
                             registry=REGISTRY)
PRUNED = Counter("calsync_outbox_pruned_rows", "Rows deleted by outbox retention "
                 "(webhooks.retention_days) by table.", ["table"], registry=REGISTRY)
DELIVERY_STATUSES = ("pending", "delivered", "failed", "cancelled")


def oldest_undelivered_age(session: Session, now: dt.datetime) -> float:
    """Seconds since the oldest event with a pending delivery (or not numbered yet)."""
    pending = session.scalar(select(func.min(OutboxEvent.created_at))
                             .join(WebhookDelivery, WebhookDelivery.event_id == OutboxEvent.id)
                             .where(WebhookDelivery.status == "pending"))
    unsequenced = session.scalar(select(func.min(OutboxEvent.created_at))
                                 .where(OutboxEvent.seq.is_(None)))
    times = [t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)
             for t in (pending, unsequenced) if t is not None]
    return max(0.0, (now - min(times)).total_seconds()) if times else 0.0


def outbox_gauges(session: Session, now: dt.datetime) -> list[GaugeMetricFamily]:
    by_status = {status: int(n) for status, n in session.execute(
        select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status))}
    deliveries = GaugeMetricFamily("calsync_webhook_deliveries",
                                   "Webhook deliveries by status.", labels=["status"])
    for status in DELIVERY_STATUSES:
        deliveries.add_metric([status], by_status.get(status, 0))
    age = GaugeMetricFamily("calsync_outbox_oldest_undelivered_seconds",
                            "Age of the oldest event not delivered yet (0: none).")
    age.add_metric([], oldest_undelivered_age(session, now))
    disabled = int(session.scalar(select(func.count()).select_from(WebhookEndpoint)
                                  .where(WebhookEndpoint.disabled_at.is_not(None))) or 0)
    total = int(session.scalar(select(func.count()).select_from(WebhookEndpoint)) or 0)
    endpoints = GaugeMetricFamily("calsync_webhook_endpoints",
                                  "Webhook endpoints by state (enabled, disabled).",
                                  labels=["state"])
    endpoints.add_metric(["enabled"], total - disabled)
    endpoints.add_metric(["disabled"], disabled)
    return [deliveries, age, endpoints]


_SOURCES: list[object] = getattr(process_metrics, "DATABASE_GAUGES", [])
if outbox_gauges not in _SOURCES:
    _SOURCES.append(outbox_gauges)
