"""Web sign-in routes for OAuth providers (authorization code + PKCE S256); the logic lives
in :mod:`calsync.selfservice.oauth`.

- ``GET /oauth/{provider}/start?user_id=…`` (admin, or the user themself): returns
  ``{"url": …}``, or redirects there with ``redirect=true``. The self-service variant with
  a page to come back to is ``POST /api/users/{id}/connections/oauth``
  (``calsync.api.connections``).
- ``GET /oauth/{provider}/callback?code=&state=`` (or ``POST`` with a form body, for
  ``response_mode=form_post``, which Outlook uses): the provider sends the browser back here.
  Unknown, expired, reused or other-provider states -> 400 JSON error; a state is usable
  once. The code is redeemed with the verifier, the account verified, and the Connection
  with its Calendars stored encrypted. A sign-in started with a ``return_to`` then
  redirects the browser there (303) with ``connection=con_…`` in the query, or with
  ``error=CODE`` when the sign-in failed after its state was accepted; one started
  without answers JSON.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from calsync.api.auth import Principal, PrincipalDep
from calsync.errors import CalsyncError
from calsync.selfservice.oauth import (
    STATE_TTL,
    InvalidState,
    complete_sign_in,
    redirect_uri,
    start_oauth,
    take_state,
    with_query,
)

router = APIRouter(tags=["oauth"])
__all__ = ["STATE_TTL", "InvalidState", "redirect_uri", "router", "connector_http"]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def connector_http(request: Request, provider: str) -> Any:
    """The transport injected for ``provider`` (tests set ``app.state.connector_http``)."""
    return (getattr(request.app.state, "connector_http", None) or {}).get(provider)


@router.get("/oauth/{provider}/start")
def oauth_start(provider: str, user_id: str, request: Request, redirect: bool = False,
                who: Principal = PrincipalDep) -> Any:
    started = start_oauth(request.app.state.settings, request.app.state.db, user_id, who,
                          provider=provider, return_to=None, now=_now(),
                          http=connector_http(request, provider))
    if redirect:
        return RedirectResponse(started["authorize_url"], status_code=302)
    return {"url": started["authorize_url"], "expires_at": started["expires_at"]}


@router.get("/oauth/{provider}/callback")
def oauth_callback(provider: str, request: Request, state: str = "", code: str = "",
                   error: str = "", error_description: str = "") -> Any:
    """The provider's answer in the query string (``response_mode=query``)."""
    return _finish(provider, request, state, code, error, error_description)


@router.post("/oauth/{provider}/callback")
async def oauth_callback_form(provider: str, request: Request) -> Any:
    """The provider's answer as a form POST (``response_mode=form_post``)."""
    form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace"),
                                          keep_blank_values=True).items()}
    return await run_in_threadpool(_finish, provider, request, form.get("state", ""),
                                   form.get("code", ""), form.get("error", ""),
                                   form.get("error_description", ""))


def _finish(provider: str, request: Request, state: str, code: str, error: str,
            error_description: str) -> Any:
    settings = request.app.state.settings
    db = request.app.state.db
    now = _now()
    pending = take_state(settings, db, provider, state, now)
    try:
        result = complete_sign_in(settings, db, pending, code=code, error=error,
                                  error_description=error_description, now=now,
                                  http=connector_http(request, provider))
    except CalsyncError as exc:
        if pending.return_to is None:
            raise
        return RedirectResponse(with_query(pending.return_to, error=exc.code,
                                           provider=provider), status_code=303)
    if pending.return_to is not None:
        return RedirectResponse(with_query(pending.return_to, connection=str(result["id"]),
                                           provider=provider), status_code=303)
    return result
