"""``/docs``: the Swagger UI over ``/openapi.json``, with every asset served by calsync
itself (it works with no internet). The Swagger UI files come from the ``fastapi-offline``
package, which ships a current Swagger UI (5.x: it renders the OpenAPI 3.1 that FastAPI
writes); only those files are used, the app is a plain FastAPI one."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from calsync.errors import NotFound

router = APIRouter(include_in_schema=False)
ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
_SERVED = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
           "favicon.png": "image/png"}


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} API",
        swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
        swagger_favicon_url=f"{root}/docs/assets/favicon.png",
        # No badge fetched from the online validator.
        swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": True})


@router.get("/docs/assets/{name}")
def swagger_asset(name: str) -> FileResponse:
    if name not in _SERVED:
        raise NotFound(f"no documentation asset {name!r}")
    return FileResponse(ASSETS / name, media_type=_SERVED[name],
                        headers={"Cache-Control": "public, max-age=86400"})
