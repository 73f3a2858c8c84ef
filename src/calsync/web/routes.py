"""The router of the pages under /app/ (and their static files), included by the app."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

from calsync.web.pages import STATIC
from calsync.web.views import dispatch, signin
from calsync.web.views import settings as settings_page

router = APIRouter(include_in_schema=False)
router.include_router(signin.router)
router.include_router(settings_page.router)
router.include_router(dispatch.router)

_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
_STATIC_FILES = {p.name: p for p in STATIC.iterdir() if p.suffix in _STATIC_TYPES}


@router.get("/app/static/{name}")
def static_file(name: str) -> Response:
    """calsync's own CSS and JS; nothing else is served from here."""
    path = _STATIC_FILES.get(name)
    if path is None:
        return JSONResponse({"error": "not_found", "detail": "no such file"}, status_code=404)
    return FileResponse(path, media_type=_STATIC_TYPES[path.suffix],
                        headers={"Cache-Control": "public, max-age=300",
                                 "X-Content-Type-Options": "nosniff"})
