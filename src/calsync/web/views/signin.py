"""Signing in by link (``GET /app/sign-in/{token}``), ``/app/`` and signing out."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from calsync.db.models import utcnow
from calsync.web.pages import (
    Visit,
    app_db,
    current_visit,
    handle_form,
    home_path,
    is_https,
    message_page,
    see_other,
    signed_out_page,
)
from calsync.web.sessions import (
    COOKIE_NAME,
    SESSION_TTL,
    LoginLinkInvalid,
    end_session,
    redeem_login_link,
)

router = APIRouter(include_in_schema=False)


def _sign_in(request: Request, token: str) -> Response:
    try:
        signed = redeem_login_link(app_db(request), token, utcnow())
    except LoginLinkInvalid:
        return message_page(request, "Sign-in link not valid",
                            "This sign-in link was already used or has expired (links work "
                            "once, for 15 minutes). Open calsync again from your scheduling "
                            "app to get a new one.", 400)
    response = see_other(home_path(signed.principal))
    response.set_cookie(COOKIE_NAME, signed.session_id, max_age=int(SESSION_TTL.total_seconds()),
                        path="/app", httponly=True, samesite="lax", secure=is_https(request))
    return response


@router.get("/app/sign-in/{token}")
async def sign_in(token: str, request: Request) -> Response:
    return await run_in_threadpool(_sign_in, request, token)


def _home(request: Request) -> Response:
    visit = current_visit(request)
    if visit is None:
        return signed_out_page(request)
    return see_other(home_path(visit.principal))


@router.get("/app")
@router.get("/app/")
async def home(request: Request) -> Response:
    return await run_in_threadpool(_home, request)


def _sign_out(request: Request, visit: Visit, _form: FormData) -> Response:
    end_session(app_db(request), visit.session_id)
    response = message_page(request, "Signed out", "You are signed out of calsync.", 200)
    response.delete_cookie(COOKIE_NAME, path="/app", httponly=True, samesite="lax",
                           secure=is_https(request))
    return response


@router.post("/app/sign-out")
async def sign_out(request: Request) -> Response:
    return await handle_form(request, _sign_out)
