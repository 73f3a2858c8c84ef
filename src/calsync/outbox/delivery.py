"""Delivering events to webhook endpoints: at least once, signed per Standard Webhooks.

Flow (each step its own transaction):

1. :func:`calsync.outbox.events.sequence` numbers committed events and adds a delivery per
   endpoint;
2. :func:`claim_deliveries` leases due deliveries (``lease_owner``/``lease_until``, as
   syncs are leased). Per endpoint, under a lock for that endpoint (a transaction-scoped
   advisory lock taken with ``pg_try_advisory_xact_lock`` on PostgreSQL, so a busy
   endpoint is skipped rather than waited for; the write lock on SQLite): at most
   ``webhooks.max_concurrency_per_endpoint`` in flight across all workers, and a delivery
   is claimed only when no earlier delivery of the same subject (``order_key``: one item,
   one connection) to that endpoint is still pending, so one subject's events arrive in
   order; different subjects go in parallel. A crashed worker's lease expires after
   ``webhooks.lease_seconds`` (at once when its process is known dead on this host);
3. :func:`send` POSTs the body with ``webhook-id`` (the event's id, the same on every
   retry, for receivers to drop duplicates), ``webhook-timestamp`` and ``webhook-signature``
   made by the ``standardwebhooks`` library, with a short timeout;
4. :func:`record_outcome`: a 2xx delivers (and resets the endpoint's failure clock);
   ``410 Gone`` disables the endpoint (its pending deliveries are cancelled), and so does
   a failure when every attempt to it has failed for ``webhooks.disable_after_days``
   (Standard Webhooks / Svix practice); anything else (other status, timeout, refused
   connection) is retried after the next delay of :class:`RetrySchedule` (exponential,
   with jitter, more than 24 h in all), then given up (``failed``).

:class:`Deliverer` runs this in a thread pool of its own, so a slow receiver holds at most
its endpoint's share of the threads and never a sync, the API or another endpoint.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import exists, or_, select, text, update
from sqlalchemy.orm import aliased
from standardwebhooks.webhooks import Webhook

from calsync.config import Settings
from calsync.db.models import (
    OutboxEvent,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    utcnow,
)
from calsync.db.session import Database
from calsync.outbox.endpoints import disable_endpoint, enable_again_hint, endpoint_secret
from calsync.outbox.events import has_unsequenced, sequence
from calsync.outbox.metrics import ATTEMPTS, ENDPOINTS_DISABLED
from calsync.sync.runner import HOST, default_worker_id, holder_is_dead

log = logging.getLogger("calsync.webhooks")
Clock = Callable[[], dt.datetime]

# Seconds after each failed attempt: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, 10 h
# (Svix's schedule, one more 10 h): ~37.6 h in all, >= 24 h even with the jitter below.
DEFAULT_DELAYS = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0, 36000.0)
USER_AGENT = "calsync-webhooks/1"
# pg_advisory_xact_lock(space, endpoint id): one claimer per endpoint at a time, without
# locking the endpoint's row (which recording outcomes updates).
_CLAIM_LOCK_SPACE = 0x77686B  # "whk"
HEALTH_PRECISION = dt.timedelta(seconds=1)  # last_success_at is rewritten at most this often


@dataclass
class RetrySchedule:
    """The delay after the n-th failed attempt (n from 1), times a jitter in
    ``[1 - jitter, 1 + jitter]``; None when the attempts are used up."""

    delays: tuple[float, ...] = DEFAULT_DELAYS
    jitter: float = 0.1
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, failed_attempts: int) -> float | None:
        if failed_attempts > len(self.delays):
            return None
        base = self.delays[failed_attempts - 1]
        return base * self.rng.uniform(1 - self.jitter, 1 + self.jitter)

    @property
    def total_seconds(self) -> float:
        return sum(self.delays) * (1 - self.jitter)


@dataclass(frozen=True)
class ClaimedDelivery:
    delivery_id: int
    endpoint_id: int
    url: str
    secret: str
    message_id: str
    body: str
    attempt: int  # 1 for the first


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def encode_body(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _lease_usable(owner: str | None, until: dt.datetime | None, now: dt.datetime) -> bool:
    """Free, expired, or held by a process of this host that is gone. A live lease, even
    our own, means the delivery is in flight."""
    return owner is None or until is None or until <= now or holder_is_dead(owner)


def claim_deliveries(settings: Settings, db: Database, owner: str, now: dt.datetime,
                     limit: int) -> list[ClaimedDelivery]:
    """Lease up to ``limit`` due deliveries for ``owner`` (see the module docstring)."""
    cfg = settings.webhooks
    claimed: list[ClaimedDelivery] = []
    lease_until = now + dt.timedelta(seconds=cfg.lease_seconds)
    earlier = aliased(WebhookDelivery)
    with db.session() as s:
        # Endpoints are few; each one's due deliveries are found through its indexes.
        q = (select(WebhookEndpoint).where(WebhookEndpoint.disabled_at.is_(None))
             .order_by(WebhookEndpoint.id))
        for ep in list(s.scalars(q)):
            if len(claimed) >= limit:
                break
            if db.dialect == "postgresql" and not s.scalar(
                    text("SELECT pg_try_advisory_xact_lock(:space, :id)"),
                    {"space": _CLAIM_LOCK_SPACE, "id": ep.id}):
                continue  # another worker is claiming for this endpoint right now
            leased = s.execute(select(WebhookDelivery.lease_owner, WebhookDelivery.lease_until)
                               .where(WebhookDelivery.endpoint_id == ep.id,
                                      WebhookDelivery.lease_until > now,
                                      WebhookDelivery.status == "pending")).all()
            in_flight = sum(1 for o, u in leased if not _lease_usable(o, u, now))
            room = min(cfg.max_concurrency_per_endpoint - in_flight, limit - len(claimed))
            if room <= 0:
                continue
            blocked = exists().where(earlier.endpoint_id == WebhookDelivery.endpoint_id,
                                     earlier.order_key == WebhookDelivery.order_key,
                                     earlier.status == "pending",
                                     earlier.seq < WebhookDelivery.seq)
            candidates = s.execute(
                select(WebhookDelivery, OutboxEvent.public_id, OutboxEvent.payload)
                .join(OutboxEvent, OutboxEvent.id == WebhookDelivery.event_id)
                .where(WebhookDelivery.endpoint_id == ep.id,
                       WebhookDelivery.status == "pending",
                       WebhookDelivery.next_attempt_at <= now,
                       or_(WebhookDelivery.lease_until.is_(None),
                           WebhookDelivery.lease_until <= now,
                           WebhookDelivery.lease_owner.like(f"{HOST}:%")),
                       ~blocked)
                .order_by(WebhookDelivery.seq).limit(room + len(leased))).all()
            secret: str | None = None
            for delivery, message_id, payload in candidates:
                if room <= 0:
                    break
                if not _lease_usable(delivery.lease_owner, delivery.lease_until, now):
                    continue
                delivery.lease_owner, delivery.lease_until = owner, lease_until
                secret = secret or endpoint_secret(settings, ep)
                claimed.append(ClaimedDelivery(delivery.id, ep.id, ep.url, secret, message_id,
                                               encode_body(payload), delivery.attempts + 1))
                room -= 1
    return claimed


def signed_headers(secret: str, message_id: str, body: str, at: dt.datetime
                   ) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt."""
    signature = Webhook(secret).sign(message_id, at, body)
    return {"content-type": "application/json", "user-agent": USER_AGENT,
            "webhook-id": message_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": signature}


def send(client: httpx.Client, claimed: ClaimedDelivery, wall_clock: Clock = utcnow
         ) -> Outcome:
    """POST one delivery. Never raises for the receiver's trouble: the outcome says it.
    The timestamp header is the wall clock (receivers check it against theirs)."""
    headers = signed_headers(claimed.secret, claimed.message_id, claimed.body, wall_clock())
    started = time.monotonic()
    try:
        resp = client.post(claimed.url, content=claimed.body.encode("utf-8"), headers=headers)
        code: int | None = resp.status_code
        error = None if 200 <= resp.status_code < 300 else f"answered {resp.status_code}"
    except httpx.TimeoutException:
        code, error = None, "no answer within the timeout"
    except httpx.TransportError as exc:
        code, error = None, f"could not connect ({type(exc).__name__})"
    return Outcome(code, error, int((time.monotonic() - started) * 1000))


def record_outcome(db: Database, claimed: ClaimedDelivery, outcome: Outcome, owner: str,
                   now: dt.datetime, schedule: RetrySchedule,
                   disable_after: dt.timedelta | None = None) -> str:
    """Store the attempt and what follows; returns the delivery's new status, ``"retry"``
    when it stays pending, or ``"disabled"`` when the endpoint was disabled: it answered
    410, or (``disable_after``) every attempt failed since its first failure that long
    ago."""
    with db.session() as s:
        delivery = s.get(WebhookDelivery, claimed.delivery_id)
        endpoint = s.get(WebhookEndpoint, claimed.endpoint_id)
        if delivery is None or endpoint is None:  # endpoint removed meanwhile
            return "removed"
        s.add(WebhookAttempt(delivery_id=delivery.id, endpoint_id=endpoint.id, at=now,
                             status_code=outcome.status_code, error=outcome.error,
                             duration_ms=outcome.duration_ms, worker=owner))
        delivery.attempts += 1
        delivery.last_status_code, delivery.last_error = outcome.status_code, outcome.error
        delivery.lease_owner, delivery.lease_until = None, None
        if outcome.delivered:
            delivery.status, delivery.delivered_at = "delivered", now
            last = endpoint.last_success_at
            if endpoint.failures_in_a_row or last is None or now - last >= HEALTH_PRECISION:
                # a busy endpoint's row is not rewritten by every success
                endpoint.last_success_at, endpoint.failures_in_a_row = now, 0
                endpoint.failing_since = None
            ATTEMPTS.labels("delivered").inc()
            return "delivered"
        endpoint.last_failure_at = now
        endpoint.failures_in_a_row += 1
        if endpoint.failing_since is None:
            endpoint.failing_since = now
        if outcome.status_code == 410:
            delivery.status = "failed"
            disable_endpoint(s, endpoint, now, f"the receiver answered 410 Gone at "
                             f"{now.isoformat()}; {enable_again_hint(endpoint.public_id)}")
            log.warning("webhook endpoint %s answered 410 Gone: disabled", endpoint.public_id)
            ATTEMPTS.labels("gone").inc()
            ENDPOINTS_DISABLED.labels("gone").inc()
            return "disabled"
        failing_for = now - endpoint.failing_since
        if disable_after is not None and failing_for >= disable_after:
            delivery.status = "failed"
            days = failing_for.total_seconds() / 86400
            cancelled = disable_endpoint(
                s, endpoint, now,
                f"every attempt failed since {endpoint.failing_since.isoformat()} "
                f"({days:.1f} days, webhooks.disable_after_days is "
                f"{disable_after.total_seconds() / 86400:g}; last: "
                f"{outcome.error or 'no answer'}); {enable_again_hint(endpoint.public_id)}")
            log.warning("webhook endpoint %s failed every attempt for %.1f days: disabled, "
                        "%s pending deliveries cancelled", endpoint.public_id, days, cancelled)
            ATTEMPTS.labels("failed").inc()
            ENDPOINTS_DISABLED.labels("failing").inc()
            return "disabled"
        wait = schedule.delay(delivery.attempts)
        if wait is None:
            delivery.status = "failed"
            log.warning("webhook endpoint %s: event %s given up after %s attempts (%s)",
                        endpoint.public_id, claimed.message_id, delivery.attempts,
                        outcome.error)
            ATTEMPTS.labels("failed").inc()
            return "failed"
        delivery.next_attempt_at = now + dt.timedelta(seconds=wait)
        ATTEMPTS.labels("timeout" if outcome.status_code is None and outcome.error and
                        "timeout" in outcome.error else "retry").inc()
        return "retry"


def release_leases(db: Database, owner: str) -> None:
    """Give back leases of deliveries not attempted (a worker stopping)."""
    with db.session() as s:
        s.execute(update(WebhookDelivery)
                  .where(WebhookDelivery.lease_owner == owner,
                         WebhookDelivery.status == "pending")
                  .values(lease_owner=None, lease_until=None))


class Deliverer:
    """One worker's delivery loop: :meth:`pump` numbers new events, claims what the free
    threads can take and hands each delivery to the pool; it never waits for a receiver.
    ``clock`` gives ``now`` for scheduling (tests move it); headers use the wall clock."""

    def __init__(self, settings: Settings, db: Database, *, owner: str | None = None,
                 client: httpx.Client | None = None, schedule: RetrySchedule | None = None,
                 clock: Clock = utcnow, threads: int | None = None) -> None:
        self.settings, self.db = settings, db
        self.owner = owner or f"{default_worker_id()}:wh:{uuid.uuid4().hex[:6]}"
        self.threads = threads or settings.webhooks.delivery_threads
        self.client = client or httpx.Client(
            timeout=httpx.Timeout(settings.webhooks.timeout_seconds),
            limits=httpx.Limits(max_connections=self.threads,
                                max_keepalive_connections=self.threads),
            follow_redirects=False)
        self._own_client = client is None
        self.schedule = schedule or RetrySchedule()
        self.disable_after = dt.timedelta(days=settings.webhooks.disable_after_days)
        self.clock = clock
        self.pool = ThreadPoolExecutor(max_workers=self.threads,
                                       thread_name_prefix="calsync-webhook")
        self._in_flight: set[Future[str]] = set()
        self._lock = threading.Lock()
        self.outcomes: dict[str, int] = {}

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def _deliver(self, claimed: ClaimedDelivery) -> str:
        outcome = send(self.client, claimed)
        status = record_outcome(self.db, claimed, outcome, self.owner, self.clock(),
                                self.schedule, self.disable_after)
        with self._lock:
            self.outcomes[status] = self.outcomes.get(status, 0) + 1
        return status

    def _done(self, future: Future[str]) -> None:
        with self._lock:
            self._in_flight.discard(future)
        exc = future.exception()
        if exc is not None:  # a database error: the lease expires and it is retried
            log.error("webhook delivery failed to record: %s", type(exc).__name__)

    def pump(self) -> int:
        """Sequence, claim and start deliveries; returns how many were started."""
        now = self.clock()
        with self.db.read_session() as s:
            unsequenced = has_unsequenced(s)
        if unsequenced:
            with self.db.session() as s:
                sequence(s, now)
        room = self.threads - self.in_flight
        if room <= 0:
            return 0
        claimed = claim_deliveries(self.settings, self.db, self.owner, now, room)
        for c in claimed:
            future = self.pool.submit(self._deliver, c)
            with self._lock:
                self._in_flight.add(future)
            future.add_done_callback(self._done)
        return len(claimed)

    def _settled(self, wait_retries: bool) -> bool:
        now = self.clock()
        with self.db.read_session() as s:
            q = (select(WebhookDelivery.id)
                 .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
                 .where(WebhookDelivery.status == "pending",
                        WebhookEndpoint.disabled_at.is_(None)))
            if not wait_retries:
                q = q.where(WebhookDelivery.next_attempt_at <= now,
                            or_(WebhookDelivery.lease_until.is_(None),
                                WebhookDelivery.lease_until <= now))
            return s.scalar(q.limit(1)) is None and not has_unsequenced(s)

    def run_until_idle(self, timeout: float = 30.0, poll: float = 0.02,
                       wait_retries: bool = False) -> None:
        """Pump until nothing is due nor in flight (tests, the CLI, benchmarks); with
        ``wait_retries`` also until no delivery waits for a later retry. Raises
        TimeoutError when that does not happen within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            started = self.pump()
            if not started and self.in_flight == 0 and self._settled(wait_retries):
                return
            time.sleep(poll)
        raise TimeoutError("webhook deliveries still due after the timeout")

    def close(self, wait: bool = True) -> None:
        self.pool.shutdown(wait=wait, cancel_futures=True)
        if self._own_client:
            self.client.close()
        release_leases(self.db, self.owner)
