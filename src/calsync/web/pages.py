"""Page machinery shared by the views: who is signed in, rendering a template with the
security headers every page carries, and form posts checked for their CSRF token.

Forms are parsed on the event loop and handled in the thread pool (the database work is
synchronous). A POST without a valid session gets the signed-out page; one whose
``csrf_token`` does not match its session gets 403, and nothing is changed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from calsync.config import Settings
from calsync.db.models import utcnow
from calsync.db.session import Database
from calsync.web import formatting
from calsync.web.sessions import (
    COOKIE_NAME,
    CSRF_FIELD,
    WebPrincipal,
    csrf_ok,
    csrf_token,
    session_principal,
)

TEMPLATES = Path(__file__).with_name("templates")
STATIC = Path(__file__).with_name("static")

# Scripts and styles from calsync only; pages may be framed by the platform (iframe).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' data:; object-src 'none'; base-uri 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

_env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                   undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
_env.globals.update(when=formatting.when, span=formatting.span, day_label=formatting.day_label,
                    csrf_field=CSRF_FIELD)
_env.filters["as_dt"] = formatting.parse_iso


@dataclass(frozen=True)
class Visit:
    """A signed-in request: who, their session id (never rendered) and the form token."""

    principal: WebPrincipal
    session_id: str
    csrf: str


def app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def app_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def current_visit(request: Request, now: dt.datetime | None = None) -> Visit | None:
    session_id = request.cookies.get(COOKIE_NAME)
    who = session_principal(app_db(request), session_id, now or utcnow())
    if who is None or session_id is None:
        return None
    return Visit(who, session_id, csrf_token(app_settings(request), session_id))


def render(request: Request, template: str, context: dict[str, Any],
           status_code: int = 200, visit: Visit | None = None) -> HTMLResponse:
    body = _env.get_template(template).render(visit=visit, **context)
    return HTMLResponse(body, status_code=status_code, headers=PAGE_HEADERS)


def message_page(request: Request, title: str, message: str, status_code: int,
                 visit: Visit | None = None) -> HTMLResponse:
    return render(request, "message.html", {"title": title, "message": message},
                  status_code, visit)


def signed_out_page(request: Request) -> HTMLResponse:
    return message_page(request, "Signed out",
                        "You are not signed in, or your sign-in has expired. Open calsync "
                        "again from your scheduling app to get a new sign-in link.", 401)


def wrong_role_page(request: Request, visit: Visit, page: str) -> HTMLResponse:
    return message_page(request, "Not for this account",
                        f"The {page} is not available to you. Your page is "
                        f"{home_path(visit.principal)}.", 403, visit)


def home_path(who: WebPrincipal) -> str:
    return "/app/settings" if who.role == "user" else "/app/dispatch"


def see_other(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303, headers=PAGE_HEADERS)


FormHandler = Callable[[Request, Visit, FormData], Response]


async def handle_form(request: Request, handler: FormHandler) -> Response:
    """Parse the form, check the session and its CSRF token, then run ``handler`` in the
    thread pool."""
    form = await request.form()
    visit = await run_in_threadpool(current_visit, request)
    if visit is None:
        return signed_out_page(request)
    if not csrf_ok(app_settings(request), visit.session_id, form.get(CSRF_FIELD)):
        return message_page(request, "Form expired",
                            "This form was sent without its security token or from an old "
                            "page. Reload the page and try again.", 403, visit)
    return await run_in_threadpool(handler, request, visit, form)


def is_https(request: Request) -> bool:
    return (request.url.scheme == "https"
            or app_settings(request).server.base_url.lower().startswith("https://"))
