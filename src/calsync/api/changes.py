"""The change feed API: ``GET /api/changes?after=CURSOR&limit=N`` (admin)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from calsync.api.auth import Principal, PrincipalDep
from calsync.db.models import utcnow
from calsync.outbox.changes import CursorExpired, parse_limit, read_changes

router = APIRouter(tags=["webhooks"])

_EXPIRED = {
    "description": "Cursor expired: changes after this cursor were deleted by retention "
                   "(``webhooks.retention_days``), so reading on would skip them. Bring "
                   "what you keep up to date from the API (a full resync), then read on "
                   "with ``after`` set to ``oldest`` (the same as leaving ``after`` out).",
    "content": {"application/json": {
        "schema": {"type": "object", "required": ["error", "detail", "oldest"],
                   "properties": {
                       "error": {"type": "string", "enum": ["cursor_expired"]},
                       "detail": {"type": "string"},
                       "oldest": {"type": "string",
                                  "description": "The cursor to start again from: the "
                                                 "oldest change kept comes next."}}},
        "example": {"error": "cursor_expired",
                    "detail": "this cursor is older than the change feed keeps ...",
                    "oldest": "chg_djE6MTIzNA"}}},
}


@router.get("/api/changes", responses={410: _EXPIRED})
def get_changes(request: Request, after: str | None = None, limit: str | None = None,
                who: Principal = PrincipalDep) -> Any:
    """The events of DESIGN 4.7 in order; pass ``next`` back as ``after`` to go on.
    Without ``after``, the feed starts at the oldest change kept; a cursor from before
    what retention deleted is answered ``410`` ``cursor_expired`` with ``oldest``."""
    who.require("admin")
    try:
        page = read_changes(request.app.state.db, after, parse_limit(limit), utcnow())
    except CursorExpired as exc:
        return JSONResponse(exc.as_dict(), status_code=exc.http_status)
    body: dict[str, Any] = page.as_dict()
    return body
