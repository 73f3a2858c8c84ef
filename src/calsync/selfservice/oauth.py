"""Outlook and Google sign-in from a page (authorization code + PKCE S256).

- :func:`start_oauth` checks who may connect, makes a random ``state`` and a PKCE verifier,
  stores an :class:`~calsync.db.models.OAuthState` row (SHA-256 of the state, the verifier
  encrypted, the checked ``return_to``, expiry 10 minutes) and returns the provider's
  ``authorize_url``.
- :func:`take_state` consumes the state of the provider's callback (one use; unknown,
  expired or other-provider states raise ``InvalidState``) and returns a
  :class:`PendingSignIn`; :func:`complete_sign_in` redeems the code, verifies the account
  and stores the connection with its calendars.
- :func:`check_return_to`: only pages of calsync itself (``[server] base_url``'s origin) or
  of an origin in ``[server] allowed_return_origins`` are accepted, so a sign-in cannot be
  turned into an open redirect.

The redirect URI given to the provider is ``[<provider>] redirect_uri`` or
``{base_url}/oauth/{provider}/callback``. Factories are found by provider name; the core
imports no connector.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from sqlalchemy import CursorResult, delete, select

from calsync.config import Settings
from calsync.db.models import Connection, OAuthState
from calsync.db.session import Database
from calsync.errors import NotFound, UserError, ValidationError
from calsync.oauth_commands import OAUTH_PROVIDERS, save_oauth_connection
from calsync.secrets import CredentialBox, pkce_pair
from calsync.selfservice.access import Viewer, live_user, require_change
from calsync.sync.connector import ConnectContext, load_connector_factory

STATE_TTL = dt.timedelta(minutes=10)


class InvalidState(UserError):
    code = "invalid_state"


class SignInFailed(UserError):
    """The provider reported that the sign-in did not happen (declined, no code)."""

    code = "sign_in_failed"


def redirect_uri(settings: Settings, provider: str) -> str:
    configured = getattr(getattr(settings, provider, None), "redirect_uri", "")
    return configured or f"{settings.server.base_url.rstrip('/')}/oauth/{provider}/callback"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def check_return_to(settings: Settings, return_to: Any, record: str = "oauth") -> str:
    """The absolute URL to send the browser to after the sign-in. A path (``/app/settings``)
    is taken on ``base_url``; an absolute URL must be on base_url's origin or one of
    ``[server] allowed_return_origins``. ValidationError (field ``return_to``) otherwise."""
    if not isinstance(return_to, str) or not return_to.strip():
        raise ValidationError(record, "return_to", "is required: the page to come back to")
    text = return_to.strip()
    if len(text) > 2000 or any(ch in text for ch in "\r\n\x00\\"):
        raise ValidationError(record, "return_to", "is not a usable URL")
    if text.startswith("/") and not text.startswith("//"):
        text = urljoin(settings.server.base_url.rstrip("/") + "/", text)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.username \
            or parts.password:
        raise ValidationError(record, "return_to", "must be a path like /app/settings or an "
                                                   "http(s) URL")
    allowed = {_origin(settings.server.base_url)} | {
        _origin(o) for o in settings.server.allowed_return_origins}
    if _origin(text) not in allowed:
        raise ValidationError(record, "return_to", f"origin {_origin(text)} is not calsync's "
                              f"own nor listed in [server] allowed_return_origins")
    return text


def _factory(provider: str, hook: str) -> Any:
    if provider not in OAUTH_PROVIDERS:
        raise NotFound(f"no web sign-in for provider {provider!r}; use one of "
                       f"{', '.join(OAUTH_PROVIDERS)}")
    factory = load_connector_factory(provider)
    if not hasattr(factory, hook):
        raise NotFound(f"the {provider} connector has no web sign-in")
    return factory


def _context(settings: Settings, provider: str, http: Any) -> ConnectContext:
    return ConnectContext(provider=provider, url=None, account="", credentials={},
                          settings=settings, http=http)


def start_oauth(settings: Settings, db: Database, user_id: str, viewer: Viewer, *,
                provider: Any, return_to: Any, now: dt.datetime,
                http: Any = None) -> dict[str, Any]:
    """Begin a sign-in to ``provider`` (``outlook`` or ``google``) for ``user_id``.
    ``return_to`` (checked by :func:`check_return_to`; None: the callback answers JSON)
    is where the browser goes after the callback. Returns ``{"authorize_url",
    "expires_at"}``. Raises Forbidden, NotFound (user), ValidationError (provider,
    return_to)."""
    require_change(viewer, user_id)
    if provider not in OAUTH_PROVIDERS:
        raise ValidationError("oauth", "provider", f"expected one of "
                                                   f"{', '.join(OAUTH_PROVIDERS)}")
    back = check_return_to(settings, return_to) if return_to is not None else None
    factory = _factory(provider, "authorization_url")
    state = secrets.token_urlsafe(32)
    verifier, challenge = pkce_pair()
    uri = redirect_uri(settings, provider)
    with db.session() as s:
        live_user(s, user_id)
        s.execute(delete(OAuthState).where(OAuthState.expires_at < now))
        s.add(OAuthState(state_hash=hashlib.sha256(state.encode()).hexdigest(),
                         provider=provider, user_id=user_id,
                         verifier=CredentialBox.from_settings(settings).seal({"v": verifier}),
                         redirect_uri=uri, return_to=back, created_at=now,
                         expires_at=now + STATE_TTL))
    url = factory.authorization_url(_context(settings, provider, http), state, challenge, uri)
    return {"authorize_url": url, "expires_at": (now + STATE_TTL).isoformat()}


@dataclass(frozen=True)
class PendingSignIn:
    """A consumed sign-in state: for whom, and where the browser goes afterwards."""

    provider: str
    user_id: str
    redirect_uri: str
    verifier: str
    return_to: str | None


def take_state(settings: Settings, db: Database, provider: str, state: str,
               now: dt.datetime) -> PendingSignIn:
    """Consume the sign-in ``state`` (usable once, even when what follows fails). Raises
    InvalidState for a missing, unknown, reused, expired or other-provider state."""
    _factory(provider, "exchange_code")
    if not state:
        raise InvalidState("the sign-in response has no state; start again")
    state_hash = hashlib.sha256(state.encode()).hexdigest()
    found = None
    with db.session() as s:
        row = s.get(OAuthState, state_hash)
        if row is not None:
            found = (row.provider, row.expires_at, row.user_id, row.redirect_uri, row.verifier,
                     row.return_to)
            # Of two racing callbacks only the one whose DELETE matched goes on.
            gone = s.execute(delete(OAuthState).where(OAuthState.state_hash == state_hash))
            if not isinstance(gone, CursorResult) or gone.rowcount != 1:
                found = None
    if found is None:
        raise InvalidState("unknown or already used sign-in state; start again")
    started_for, expires_at, user_id, uri, sealed, return_to = found
    if started_for != provider:
        raise InvalidState(f"this sign-in was started for {started_for!r}, not {provider!r}")
    if expires_at <= now:
        raise InvalidState("the sign-in took longer than 10 minutes; start again")
    verifier = str(CredentialBox.from_settings(settings).open(sealed)["v"])
    return PendingSignIn(provider, user_id, uri, verifier, return_to)


def complete_sign_in(settings: Settings, db: Database, pending: PendingSignIn, *, code: str,
                     error: str, error_description: str, now: dt.datetime,
                     http: Any = None) -> dict[str, Any]:
    """Redeem the provider's ``code`` (or report its ``error``), verify the account and store
    the connection. Returns ``{"id", "connection_id", "user_id", "provider", "account",
    "created", "calendars": [{"id", "name", "read_only"}]}``. SignInFailed when the provider
    reported an error or sent no code."""
    provider = pending.provider
    factory = _factory(provider, "exchange_code")
    if error:
        raise SignInFailed(f"{provider} sign-in was not completed: {error}: "
                           f"{error_description[:200]}")
    if not code:
        raise SignInFailed("the sign-in response has no code")
    ctx = factory.exchange_code(_context(settings, provider, http), code, pending.verifier,
                                pending.redirect_uri)
    ctx, calendars = factory.verify(ctx)
    conn_id, created = save_oauth_connection(settings, db, pending.user_id, ctx, calendars,
                                             now, actor=f"web:{provider}")
    with db.read_session() as s:
        public_id = s.scalar(select(Connection.public_id).where(Connection.id == conn_id))
    return {"id": public_id, "connection_id": conn_id, "user_id": pending.user_id,
            "provider": provider, "account": ctx.account, "created": created,
            "calendars": [{"id": c.id, "name": c.name, "read_only": c.read_only}
                          for c in calendars if c.supports_events]}


def with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` added to its query string (replacing the same names)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k not in params]
    query += list(params.items())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query),
                       parts.fragment))
