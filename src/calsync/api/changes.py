"""The change feed API: ``GET /api/changes?after=CURSOR&limit=N`` (admin)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from calsync.api.auth import Principal, PrincipalDep
from calsync.db.models import utcnow
from calsync.outbox.changes import parse_limit, read_changes

router = APIRouter(tags=["webhooks"])


@router.get("/api/changes")
def get_changes(request: Request, after: str | None = None, limit: str | None = None,
                who: Principal = PrincipalDep) -> dict[str, Any]:
    """The events of DESIGN 4.7 in order; pass ``next`` back as ``after`` to go on."""
    who.require("admin")
    page = read_changes(request.app.state.db, after, parse_limit(limit), utcnow())
    return page.as_dict()
