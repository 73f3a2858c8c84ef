"""Organisation-wide connections over the API (admin; a dispatcher may read their health):
``GET /api/tenants`` lists each Microsoft 365 tenant / Google Workspace domain with its
domains and its users' connection health, ``DELETE /api/tenants/{id}`` disconnects every
user of it (``calsync tenants remove``). Connecting one stays a CLI step
(``calsync connect outlook-tenant|google-domain``): it takes the admin's secret or key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from calsync.api.auth import Principal, PrincipalDep
from calsync.db.models import utcnow
from calsync.sync.tenants import find_tenant, remove_tenant, tenant_overviews

router = APIRouter(tags=["organisations"])


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


@router.get("/api/tenants")
def list_tenants(request: Request, who: Principal = PrincipalDep) -> dict[str, Any]:
    """``{"tenants": [{"id", "provider", "name", "domains", "users", "health": {status:
    count}, "left_out": [user ids whose connection was disconnected: not connected again],
    "connections": [{"id", "user_id", "account", "status", "last_sync_at",
    "last_error"}]}]}``; never a credential."""
    who.require("admin", "dispatcher")
    with request.app.state.db.read_session() as s:
        out = [{**overview, "created_at": _iso(t.created_at),
                "connections": [{"id": c.public_id, "user_id": c.user_id,
                                 "account": c.account, "status": c.status,
                                 "last_sync_at": _iso(c.last_sync_at),
                                 "last_error": c.last_error} for c in conns]}
               for t, overview, conns in tenant_overviews(s)]
    return {"tenants": out}


@router.delete("/api/tenants/{tenant_id}", status_code=204)
def delete_tenant(tenant_id: str, request: Request, who: Principal = PrincipalDep) -> Response:
    """Disconnect every user of the organisation and forget its credentials (admin)."""
    who.require("admin")
    settings, db = request.app.state.settings, request.app.state.db
    with db.read_session() as s:
        pk = find_tenant(s, tenant_id).id
    remove_tenant(settings, db, pk, utcnow(), actor=who.actor)
    return Response(status_code=204)
