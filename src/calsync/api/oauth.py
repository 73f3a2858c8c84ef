"""Web sign-in for OAuth providers (authorization code + PKCE S256).

- ``GET /oauth/{provider}/start?user_id=…`` (admin, or the user themself): makes a random
  ``state`` and PKCE verifier, stores an :class:`OAuthState` row (SHA-256 of the state, the
  verifier encrypted, expiry 10 minutes) and returns ``{"url": …}`` — or redirects there
  with ``redirect=true``.
- ``GET /oauth/{provider}/callback?code=&state=`` (or ``POST`` with a form body, for
  ``response_mode=form_post``, which Outlook uses): the provider sends the browser back here.
  Unknown, expired, reused or other-provider states -> 400 JSON error; a state is usable
  once. The code is redeemed with the verifier through the factory's ``exchange_code``
  hook, the account verified, and the Connection with its Calendars stored encrypted.

The redirect URI is ``[<provider>] redirect_uri`` or ``{base_url}/oauth/{provider}/callback``.
Factories are found by provider name; the core imports no connector.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import delete, select
from starlette.concurrency import run_in_threadpool

from calsync.api.auth import Principal, PrincipalDep
from calsync.config import Settings
from calsync.db.models import Connection, OAuthState, User
from calsync.errors import NotFound, UserError
from calsync.oauth_commands import OAUTH_PROVIDERS, save_oauth_connection
from calsync.secrets import CredentialBox, pkce_pair
from calsync.sync.connector import ConnectContext, load_connector_factory

router = APIRouter(tags=["oauth"])
STATE_TTL = dt.timedelta(minutes=10)


class InvalidState(UserError):
    code = "invalid_state"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def redirect_uri(settings: Settings, provider: str) -> str:
    configured = getattr(getattr(settings, provider, None), "redirect_uri", "")
    return configured or f"{settings.server.base_url.rstrip('/')}/oauth/{provider}/callback"


def _factory(provider: str, hook: str) -> Any:
    if provider not in OAUTH_PROVIDERS:
        raise NotFound(f"no web sign-in for provider {provider!r}")
    factory = load_connector_factory(provider)
    if not hasattr(factory, hook):
        raise NotFound(f"the {provider} connector has no web sign-in")
    return factory


def _context(request: Request, provider: str) -> ConnectContext:
    http = (getattr(request.app.state, "connector_http", None) or {}).get(provider)
    return ConnectContext(provider=provider, url=None, account="", credentials={},
                          settings=request.app.state.settings, http=http)


@router.get("/oauth/{provider}/start")
def oauth_start(provider: str, user_id: str, request: Request, redirect: bool = False,
                who: Principal = PrincipalDep) -> Any:
    who.require_user_access(user_id, write=True)
    settings: Settings = request.app.state.settings
    db = request.app.state.db
    factory = _factory(provider, "authorization_url")
    now = _now()
    state = secrets.token_urlsafe(32)
    verifier, challenge = pkce_pair()
    uri = redirect_uri(settings, provider)
    with db.session() as s:
        user = s.get(User, user_id)
        if user is None or user.deleted_at is not None:
            raise NotFound(f"user {user_id!r} not found")
        s.execute(delete(OAuthState).where(OAuthState.expires_at < now))
        s.add(OAuthState(state_hash=hashlib.sha256(state.encode()).hexdigest(),
                         provider=provider, user_id=user_id,
                         verifier=CredentialBox.from_settings(settings).seal({"v": verifier}),
                         redirect_uri=uri, created_at=now, expires_at=now + STATE_TTL))
    url = factory.authorization_url(_context(request, provider), state, challenge, uri)
    if redirect:
        return RedirectResponse(url, status_code=302)
    return {"url": url, "expires_at": (now + STATE_TTL).isoformat()}


@router.get("/oauth/{provider}/callback")
def oauth_callback(provider: str, request: Request, state: str = "", code: str = "",
                   error: str = "", error_description: str = "") -> dict[str, Any]:
    """The provider's answer in the query string (``response_mode=query``)."""
    return _finish(provider, request, state, code, error, error_description)


@router.post("/oauth/{provider}/callback")
async def oauth_callback_form(provider: str, request: Request) -> dict[str, Any]:
    """The provider's answer as a form POST (``response_mode=form_post``)."""
    form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace"),
                                          keep_blank_values=True).items()}
    return await run_in_threadpool(_finish, provider, request, form.get("state", ""),
                                   form.get("code", ""), form.get("error", ""),
                                   form.get("error_description", ""))


def _finish(provider: str, request: Request, state: str, code: str, error: str,
            error_description: str) -> dict[str, Any]:
    settings: Settings = request.app.state.settings
    db = request.app.state.db
    factory = _factory(provider, "exchange_code")
    now = _now()
    if not state:
        raise InvalidState("the sign-in response has no state; start again")
    state_hash = hashlib.sha256(state.encode()).hexdigest()
    found = None
    with db.session() as s:
        row = s.get(OAuthState, state_hash)
        if row is not None:
            found = (row.provider, row.expires_at, row.user_id, row.redirect_uri, row.verifier)
            # One use only, whatever happens next (committed here); of two racing
            # callbacks only the one whose DELETE matched goes on.
            gone = s.execute(delete(OAuthState).where(OAuthState.state_hash == state_hash))
            if gone.rowcount != 1:
                found = None
    if found is None:
        raise InvalidState("unknown or already used sign-in state; start again")
    started_for, expires_at, user_id, uri, sealed = found
    if started_for != provider:
        raise InvalidState(f"this sign-in was started for {started_for!r}, not {provider!r}")
    if expires_at <= now:
        raise InvalidState("the sign-in took longer than 10 minutes; start again")
    verifier = str(CredentialBox.from_settings(settings).open(sealed)["v"])
    if error:
        raise UserError(f"{provider} sign-in was not completed: {error}: "
                        f"{error_description[:200]}")
    if not code:
        raise UserError("the sign-in response has no code")
    ctx = factory.exchange_code(_context(request, provider), code, verifier, uri)
    ctx, calendars = factory.verify(ctx)
    conn_id, created = save_oauth_connection(settings, db, user_id, ctx, calendars, now,
                                             actor=f"web:{provider}")
    with db.read_session() as s:
        public_id = s.scalar(select(Connection.public_id).where(Connection.id == conn_id))
    return {"id": public_id, "connection_id": conn_id, "user_id": user_id, "provider": provider,
            "account": ctx.account, "created": created,
            "calendars": [{"id": c.id, "name": c.name, "read_only": c.read_only}
                          for c in calendars if c.supports_events]}
