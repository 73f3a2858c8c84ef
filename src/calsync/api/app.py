"""The FastAPI application: routers, JSON errors, no stack traces for bad input, request
bodies capped (api/limits.py)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from calsync.api.limits import ERROR_CODE as PAYLOAD_TOO_LARGE
from calsync.api.limits import BodySizeLimit
from calsync.config import Settings
from calsync.db.session import Database
from calsync.errors import CalsyncError, ValidationError

log = logging.getLogger("calsync.api")


def create_app(settings: Settings, db: Database) -> FastAPI:
    app = FastAPI(title="calsync", version="0.1.0",
                  description="Calendar sync and scheduling integration worker.",
                  docs_url=None, redoc_url=None)  # /docs: calsync.api.docs, assets local
    app.state.settings = settings
    app.state.db = db
    # Outside the routers: every route's body is capped while it arrives.
    app.add_middleware(BodySizeLimit, max_body_bytes=settings.server.max_body_bytes,
                       max_webhook_body_bytes=settings.server.max_webhook_body_bytes)
    from calsync.api.feeds import FeedFastPath  # outermost: feeds held in memory skip the rest

    app.add_middleware(FeedFastPath, settings=settings, db=db)

    @app.exception_handler(CalsyncError)
    async def _calsync_error(_req: Request, exc: CalsyncError) -> JSONResponse:
        detail: object = exc.message
        if isinstance(exc, ValidationError):
            detail = exc.as_dict()
        conflicts = getattr(exc, "conflicts", None)
        body = {"error": exc.code, "detail": detail}
        if conflicts is not None:
            body["conflicts"] = conflicts
        return JSONResponse(body, status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def _request_error(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"field": ".".join(str(p) for p in e.get("loc", ())), "error": e.get("msg")}
                  for e in exc.errors()]
        return JSONResponse({"error": "invalid", "detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed",
                413: PAYLOAD_TOO_LARGE}.get(exc.status_code, "http_error")
        return JSONResponse({"error": code, "detail": exc.detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error: %s", type(exc).__name__, exc_info=exc)
        return JSONResponse({"error": "internal", "detail": "internal error"}, status_code=500)

    from calsync.api import platform  # each router module owns its endpoints

    app.include_router(platform.router)
    for name in ("calsync.api.feeds", "calsync.api.availability", "calsync.api.oauth",
                 "calsync.api.webhooks", "calsync.api.webhook_endpoints",
                 "calsync.api.changes", "calsync.api.tenants"):
        _include_optional(app, name)
    for name in ("calsync.api.login_links", "calsync.web.routes"):  # sign-in, pages (4.6)
        _include_optional(app, name)
    for name in ("calsync.api.connections", "calsync.api.docs"):  # self-service (4.5)
        _include_optional(app, name)
    return app


def _include_optional(app: FastAPI, module: str) -> None:
    """Routers of subsystems that may not be present in this build."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return
    app.include_router(mod.router)
