"""``POST /api/login-links`` (admin): a one-use sign-in link to the pages under /app/.

``{"user_id"}`` signs a technician in to their Calendar settings; ``{"role":
"dispatcher", "name"}`` a dispatcher to the board. Answers ``{"url", "expires_at"}``; the
link works once within 15 minutes (calsync.web.sessions). The platform sends its
signed-in person there (a link, a redirect or an iframe)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Request
from fastapi.openapi.models import Example

from calsync.api.auth import Principal, PrincipalDep
from calsync.audit import audit
from calsync.db.models import utcnow
from calsync.web.sessions import create_login_link, login_link_url, parse_login_link_request

router = APIRouter()

_EXAMPLES: dict[str, Example] = {
    "technician": {"summary": "a technician", "value": {"user_id": "u1"}},
    "dispatcher": {"summary": "a dispatcher",
                   "value": {"role": "dispatcher", "name": "Dana Dispatch"}},
}


@router.post("/api/login-links", tags=["web"], status_code=201, responses={
    201: {"description": "the link, shown once", "content": {"application/json": {
        "example": {"url": "http://127.0.0.1:8080/app/sign-in/…",
                    "expires_at": "2026-12-01T09:15:00+00:00"}}}},
    404: {"description": "no such user"}, 422: {"description": "bad body"}})
def post_login_link(request: Request, body: Any = Body(..., openapi_examples=_EXAMPLES),
                    who: Principal = PrincipalDep) -> dict[str, Any]:
    """A one-use sign-in link for a technician (``user_id``) or a dispatcher (``role``,
    ``name``), valid 15 minutes."""
    who.require("admin")
    req = parse_login_link_request(body)
    now = utcnow()
    with request.app.state.db.session() as s:
        link = create_login_link(s, req, who.actor, now)
        audit(s, who.actor, "login_link.create", "user" if req.user_id else "dispatcher",
              req.user_id or req.name, at=now)
    return {"url": login_link_url(request.app.state.settings, link.token),
            "expires_at": link.expires_at.isoformat()}
