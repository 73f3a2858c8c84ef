"""Webhook endpoint API (admin): register, list with health, remove, enable, test,
deliveries."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Request, Response

import calsync.outbox.metrics  # noqa: F401 - registers the outbox gauges for /metrics
from calsync.api.auth import Principal, PrincipalDep
from calsync.audit import audit
from calsync.db.models import utcnow
from calsync.outbox.endpoints import (
    create_endpoint,
    delete_endpoint,
    enable_endpoint,
    endpoint_as_dict,
    get_endpoint,
    list_endpoints,
    parse_endpoint,
    recent_deliveries,
    send_test_event,
)

router = APIRouter(tags=["webhooks"])


@router.post("/api/webhook-endpoints", status_code=201)
def post_endpoint(request: Request, body: Any = Body(...),
                  who: Principal = PrincipalDep) -> dict[str, Any]:
    """Register a receiver; the answer carries its ``whsec_…`` secret, shown only now."""
    who.require("admin")
    url, events, description = parse_endpoint(body)
    with request.app.state.db.session() as s:
        endpoint, secret = create_endpoint(s, request.app.state.settings, url, events,
                                           description, utcnow())
        audit(s, who.actor, "webhook_endpoint.create", "webhook_endpoint", endpoint.public_id,
              {"url": url, "events": events})
        return {**endpoint_as_dict(s, endpoint), "secret": secret}


@router.get("/api/webhook-endpoints")
def get_endpoints(request: Request, who: Principal = PrincipalDep) -> dict[str, Any]:
    who.require("admin")
    with request.app.state.db.read_session() as s:
        return {"endpoints": list_endpoints(s)}


@router.get("/api/webhook-endpoints/{endpoint_id}")
def get_one_endpoint(endpoint_id: str, request: Request,
                     who: Principal = PrincipalDep) -> dict[str, Any]:
    who.require("admin")
    with request.app.state.db.read_session() as s:
        return endpoint_as_dict(s, get_endpoint(s, endpoint_id))


@router.delete("/api/webhook-endpoints/{endpoint_id}", status_code=204)
def remove_endpoint(endpoint_id: str, request: Request,
                    who: Principal = PrincipalDep) -> Response:
    who.require("admin")
    with request.app.state.db.session() as s:
        delete_endpoint(s, endpoint_id)
        audit(s, who.actor, "webhook_endpoint.delete", "webhook_endpoint", endpoint_id)
    return Response(status_code=204)


@router.post("/api/webhook-endpoints/{endpoint_id}/enable")
def post_enable(endpoint_id: str, request: Request,
                who: Principal = PrincipalDep) -> dict[str, Any]:
    """Deliver to a disabled endpoint again (after its receiver was fixed): the events
    numbered from now on; what was cancelled while it was disabled is not sent. The answer
    is the endpoint with its health; enabling an enabled endpoint changes nothing."""
    who.require("admin")
    with request.app.state.db.session() as s:
        endpoint = get_endpoint(s, endpoint_id)
        if enable_endpoint(s, endpoint):
            audit(s, who.actor, "webhook_endpoint.enable", "webhook_endpoint", endpoint_id)
        s.flush()
        return endpoint_as_dict(s, endpoint)


@router.post("/api/webhook-endpoints/{endpoint_id}/test", status_code=202)
def test_endpoint(endpoint_id: str, request: Request,
                  who: Principal = PrincipalDep) -> dict[str, Any]:
    """Queue a ``webhook.test`` event for this endpoint (enables a disabled one)."""
    who.require("admin")
    with request.app.state.db.session() as s:
        event = send_test_event(s, endpoint_id, utcnow())
        return {"event_id": event.public_id, "queued": True}


@router.get("/api/webhook-endpoints/{endpoint_id}/deliveries")
def get_deliveries(endpoint_id: str, request: Request, limit: int = 50,
                   who: Principal = PrincipalDep) -> dict[str, Any]:
    who.require("admin")
    limit = max(1, min(limit, 500))
    with request.app.state.db.read_session() as s:
        return {"deliveries": recent_deliveries(s, endpoint_id, limit)}
