"""Outbox retention: old events are deleted with their deliveries and attempts.

An event is deleted when it was made more than ``webhooks.retention_days`` ago and none of
its deliveries is pending (each one delivered, failed or cancelled). Events go oldest
first, as a prefix of ``outbox_events.seq``: the first event that must stay (recent, one
of its deliveries pending, or the newest numbered event, which the numbering counts on)
stops the run, so what is kept is every event after one sequence number, and the change
feed can say exactly which cursors have missed deleted events (:class:`Horizon`).

:func:`prune` works in batches of ``batch`` events, each its own short transaction
(attempts, deliveries, events, then the horizon row), so a large backlog never holds the
write lock (SQLite) or row locks (PostgreSQL) for long and a crash keeps what was done; on
SQLite a pause after each batch lets waiting writers in between.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from sqlalchemy import delete, exists, func, select, text
from sqlalchemy.orm import Session

from calsync.db.models import (
    OutboxEvent,
    OutboxHorizon,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from calsync.db.session import Database
from calsync.outbox.metrics import PRUNED

PRUNE_BATCH = 1000
MAX_PAUSE = 0.1  # seconds between batches, at most
_HORIZON_ID = 1
_PRUNE_LOCK = 0x70726E  # "prn": pg_advisory_xact_lock key, one pruning batch at a time
_NO_SYNC = {"synchronize_session": False}


@dataclass(frozen=True)
class Horizon:
    """Every event numbered up to ``pruned_through`` is deleted; the last change-feed event
    among them was ``feed_pruned_through`` (0: nothing deleted)."""

    pruned_through: int = 0
    feed_pruned_through: int = 0


@dataclass
class PruneResult:
    events: int = 0
    deliveries: int = 0
    attempts: int = 0
    batches: int = 0
    horizon: Horizon = Horizon()

    def as_dict(self) -> dict[str, int]:
        return {"events": self.events, "deliveries": self.deliveries,
                "attempts": self.attempts, "batches": self.batches,
                "pruned_through_seq": self.horizon.pruned_through}


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def read_horizon(session: Session) -> Horizon:
    row = session.get(OutboxHorizon, _HORIZON_ID)
    if row is None:
        return Horizon()
    return Horizon(row.pruned_through_seq, row.feed_pruned_through_seq)


def _first_kept_seq(session: Session, cutoff: dt.datetime) -> int | None:
    """The lowest sequence number that must stay; None when nothing is numbered."""
    newest = session.scalar(select(func.max(OutboxEvent.seq)))
    if newest is None:
        return None
    bounds = [int(newest)]
    recent = session.scalar(select(func.min(OutboxEvent.seq))
                            .where(OutboxEvent.created_at >= cutoff))
    if recent is not None:
        bounds.append(int(recent))
    # Per endpoint, through the (endpoint_id, status, seq) index: endpoints are few.
    for endpoint_id in session.scalars(select(WebhookEndpoint.id)):
        pending = session.scalar(select(func.min(WebhookDelivery.seq)).where(
            WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.status == "pending"))
        if pending is not None:
            bounds.append(int(pending))
    return min(bounds)


def _prune_batch(db: Database, below: int, batch: int, now: dt.datetime,
                 result: PruneResult) -> int:
    """Delete up to ``batch`` events numbered below ``below``; returns how many."""
    pending = exists().where(WebhookDelivery.event_id == OutboxEvent.id,
                             WebhookDelivery.status == "pending")
    with db.session() as s:
        if db.dialect == "postgresql":  # SQLite: the session holds the write lock already
            s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PRUNE_LOCK})
        rows = s.execute(select(OutboxEvent.id, OutboxEvent.seq, OutboxEvent.endpoint_id)
                         .where(OutboxEvent.seq < below)
                         .order_by(OutboxEvent.seq).limit(batch)).all()
        if not rows:
            return 0
        ids = [r.id for r in rows]
        if s.scalar(select(OutboxEvent.id).where(OutboxEvent.id.in_(ids), pending)
                    .limit(1)) is not None:
            return 0  # a delivery became pending meanwhile: keep the prefix whole
        deliveries = select(WebhookDelivery.id).where(WebhookDelivery.event_id.in_(ids))
        attempts = _rowcount(s.execute(delete(WebhookAttempt)
                                       .where(WebhookAttempt.delivery_id.in_(deliveries))
                                       .execution_options(**_NO_SYNC)))
        removed = _rowcount(s.execute(delete(WebhookDelivery)
                                      .where(WebhookDelivery.event_id.in_(ids))
                                      .execution_options(**_NO_SYNC)))
        s.execute(delete(OutboxEvent).where(OutboxEvent.id.in_(ids))
                  .execution_options(**_NO_SYNC))
        last = max(int(r.seq) for r in rows)
        feed_last = max((int(r.seq) for r in rows if r.endpoint_id is None), default=0)
        horizon = s.get(OutboxHorizon, _HORIZON_ID)
        if horizon is None:
            horizon = OutboxHorizon(id=_HORIZON_ID, pruned_through_seq=0,
                                    feed_pruned_through_seq=0)
            s.add(horizon)
        horizon.pruned_through_seq = max(horizon.pruned_through_seq, last)
        horizon.feed_pruned_through_seq = max(horizon.feed_pruned_through_seq, feed_last)
        horizon.pruned_at = now
        s.flush()
        result.horizon = Horizon(horizon.pruned_through_seq, horizon.feed_pruned_through_seq)
    result.events += len(rows)
    result.deliveries += removed
    result.attempts += attempts
    result.batches += 1
    return len(rows)


def prune(db: Database, retention_days: int, now: dt.datetime,
          batch: int = PRUNE_BATCH, pause: float | None = None) -> PruneResult:
    """Delete events older than ``retention_days`` whose deliveries are all settled, with
    their deliveries and attempts, ``batch`` events per transaction. Between batches it
    waits ``pause`` seconds. The default on SQLite is as long as the batch took (at most
    :data:`MAX_PAUSE`): its write lock is not handed over in turn, and without the pause
    a writer waiting for it (an emit) could wait for several batches; on PostgreSQL, where
    writers of other rows do not wait for the batches, none."""
    if retention_days < 1 or batch < 1:
        raise ValueError("retention_days and batch must be 1 or more")
    cutoff = now - dt.timedelta(days=retention_days)
    result = PruneResult()
    with db.read_session() as s:
        result.horizon = read_horizon(s)
        below = _first_kept_seq(s, cutoff)
    if below is None:
        return result
    while True:
        started = time.monotonic()
        if _prune_batch(db, below, batch, now, result) < batch:
            break
        if pause is not None:
            time.sleep(pause)
        elif db.dialect == "sqlite":
            time.sleep(min(time.monotonic() - started, MAX_PAUSE))
    for table, n in (("outbox_events", result.events),
                     ("webhook_deliveries", result.deliveries),
                     ("webhook_attempts", result.attempts)):
        if n:
            PRUNED.labels(table).inc(n)
    return result

