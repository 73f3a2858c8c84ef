"""Webhook endpoints: register (the ``whsec_…`` secret is returned once and stored sealed
with :class:`~calsync.secrets.CredentialBox`), list with delivery health, remove, disable
(410 Gone, or failing for ``webhooks.disable_after_days``) and enable again, send a test
event, and list recent deliveries with their status codes."""

from __future__ import annotations

import base64
import datetime as dt
import secrets as _random
from typing import Any
from urllib.parse import urlparse

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from calsync.config import Settings
from calsync.db.models import OutboxEvent, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from calsync.errors import NotFound, ValidationError
from calsync.outbox.events import EVENT_TYPES, WEBHOOK_TEST, current_seq, emit
from calsync.secrets import CredentialBox

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24  # Standard Webhooks: 24 to 64 random bytes, base64 after "whsec_"
MAX_DESCRIPTION = 500


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(_random.token_bytes(SECRET_BYTES)).decode("ascii")


def endpoint_secret(settings: Settings, endpoint: WebhookEndpoint) -> str:
    """The endpoint's signing secret (decrypted)."""
    return str(CredentialBox.from_settings(settings).open(endpoint.secret)["secret"])


def parse_endpoint(raw: Any, record: str = "webhook endpoint"
                   ) -> tuple[str, list[str], str]:
    """``{"url", "events", "description"}`` checked: an http(s) URL with a host, a list of
    known event types or ``["*"]`` (default), an optional description."""
    if not isinstance(raw, dict):
        raise ValidationError(record, "*", "expected a JSON object")
    unknown = sorted(set(raw) - {"url", "events", "description"})
    if unknown:
        raise ValidationError(record, unknown[0], "unknown field")
    url = raw.get("url")
    if not isinstance(url, str) or not url:
        raise ValidationError(record, "url", "required: the receiver's http(s) URL")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValidationError(record, "url", f"expected an http(s):// URL, got {url[:200]!r}")
    events = raw.get("events", ["*"])
    if not isinstance(events, list) or not events or \
            not all(isinstance(e, str) for e in events):
        raise ValidationError(record, "events", 'expected a list of event types or ["*"]')
    bad = [e for e in events if e != "*" and e not in EVENT_TYPES]
    if bad:
        raise ValidationError(record, "events", f"unknown event type {bad[0][:80]!r}; known: "
                              f"{', '.join(EVENT_TYPES)} or *")
    description = raw.get("description", "")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise ValidationError(record, "description",
                              f"expected a text of at most {MAX_DESCRIPTION} characters")
    return url, sorted(set(events)), description


def create_endpoint(session: Session, settings: Settings, url: str, events: list[str],
                    description: str, now: dt.datetime) -> tuple[WebhookEndpoint, str]:
    """A new endpoint receiving the events numbered from now on; returns it and its secret
    (the only time the secret is shown)."""
    secret = new_secret()
    endpoint = WebhookEndpoint(url=url, events=events, description=description,
                               secret=CredentialBox.from_settings(settings).seal(
                                   {"secret": secret}),
                               created_at=now, start_seq=current_seq(session) + 1)
    session.add(endpoint)
    session.flush()
    return endpoint, secret


def get_endpoint(session: Session, public_id: str) -> WebhookEndpoint:
    endpoint = session.scalar(select(WebhookEndpoint)
                              .where(WebhookEndpoint.public_id == public_id))
    if endpoint is None:
        raise NotFound(f"webhook endpoint {public_id!r} not found "
                       f"(see GET /api/webhook-endpoints or `calsync webhooks list`)")
    return endpoint


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def endpoint_as_dict(session: Session, endpoint: WebhookEndpoint) -> dict[str, Any]:
    """The endpoint with its health; never its secret."""
    pending = session.scalar(select(func.count()).select_from(WebhookDelivery).where(
        WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.status == "pending")) or 0
    return {"id": endpoint.public_id, "url": endpoint.url, "events": list(endpoint.events),
            "description": endpoint.description, "created_at": _iso(endpoint.created_at),
            "health": {"last_success_at": _iso(endpoint.last_success_at),
                       "last_failure_at": _iso(endpoint.last_failure_at),
                       "failures_in_a_row": endpoint.failures_in_a_row,
                       "failing_since": _iso(endpoint.failing_since),
                       "disabled": endpoint.disabled_at is not None,
                       "disabled_at": _iso(endpoint.disabled_at),
                       "disabled_reason": endpoint.disabled_reason,
                       "pending": pending}}


def list_endpoints(session: Session) -> list[dict[str, Any]]:
    rows = session.scalars(select(WebhookEndpoint).order_by(WebhookEndpoint.id))
    return [endpoint_as_dict(session, ep) for ep in rows]


def delete_endpoint(session: Session, public_id: str) -> None:
    """Remove the endpoint with its pending deliveries and their history."""
    session.delete(get_endpoint(session, public_id))
    session.flush()


def disable_endpoint(session: Session, endpoint: WebhookEndpoint, now: dt.datetime,
                     reason: str) -> int:
    """Stop delivering to ``endpoint``: its pending deliveries are cancelled and it gets no
    new events until enabled again; returns how many deliveries were cancelled."""
    endpoint.disabled_at, endpoint.disabled_reason = now, reason
    cancelled = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.status == "pending")
        .values(status="cancelled", lease_owner=None, lease_until=None)
        .execution_options(synchronize_session=False))
    return int(getattr(cancelled, "rowcount", 0) or 0)


def enable_again_hint(public_id: str) -> str:
    return (f"fix the receiver, then run `calsync webhooks enable {public_id}` (or POST "
            f"/api/webhook-endpoints/{public_id}/enable, or send a test event)")


def enable_endpoint(session: Session, endpoint: WebhookEndpoint) -> bool:
    """Deliver to a disabled endpoint again, from the next event numbered on (what was
    cancelled meanwhile is not sent); its failure clock starts afresh. False when it was
    enabled already."""
    if endpoint.disabled_at is None:
        return False
    endpoint.disabled_at, endpoint.disabled_reason = None, None
    endpoint.failures_in_a_row, endpoint.failing_since = 0, None
    endpoint.start_seq = current_seq(session) + 1
    return True


def send_test_event(session: Session, public_id: str, now: dt.datetime) -> OutboxEvent:
    """A ``webhook.test`` event for this endpoint alone (not in the change feed). A
    disabled endpoint is enabled again: the test is how a receiver shows it is back."""
    endpoint = get_endpoint(session, public_id)
    enable_endpoint(session, endpoint)
    return emit(session, WEBHOOK_TEST, {"endpoint": endpoint.public_id,
                                        "message": "calsync test event"}, now,
                order_key=f"test:{endpoint.public_id}", endpoint_id=endpoint.id)


def recent_deliveries(session: Session, public_id: str, limit: int = 50
                      ) -> list[dict[str, Any]]:
    """The endpoint's latest deliveries, newest first, each with its attempts' status
    codes (None: no answer, e.g. a timeout)."""
    endpoint = get_endpoint(session, public_id)
    rows = session.execute(
        select(WebhookDelivery, OutboxEvent.public_id, OutboxEvent.type)
        .join(OutboxEvent, OutboxEvent.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.endpoint_id == endpoint.id)
        .order_by(WebhookDelivery.id.desc()).limit(limit)).all()
    ids = [d.id for d, _, _ in rows]
    attempts: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    if ids:
        for a in session.scalars(select(WebhookAttempt).where(
                WebhookAttempt.delivery_id.in_(ids)).order_by(WebhookAttempt.id)):
            attempts[a.delivery_id].append({"at": _iso(a.at), "status_code": a.status_code,
                                            "error": a.error, "duration_ms": a.duration_ms})
    return [{"id": d.id, "event_id": msg_id, "type": type_, "status": d.status,
             "attempts": d.attempts, "status_code": d.last_status_code,
             "error": d.last_error, "created_at": _iso(d.created_at),
             "next_attempt_at": _iso(d.next_attempt_at) if d.status == "pending" else None,
             "delivered_at": _iso(d.delivered_at), "attempt_log": attempts[d.id]}
            for d, msg_id, type_ in rows]
