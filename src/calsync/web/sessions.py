"""Sign-in for the pages under /app/: one-use login links, browser sessions, CSRF tokens.

- A login link (``POST /api/login-links``, admin) names a technician (role ``user``) or a
  dispatcher by name. Its token (256 bits) is shown once; only its SHA-256 is stored. It
  works once, within :data:`LOGIN_LINK_TTL`: redeeming marks it used in the same
  conditional UPDATE that checks it, so two browsers racing for one link get one session.
- A session is a random cookie value; only its SHA-256 is stored, with the role and who it
  is for. It ends at sign-out or after :data:`SESSION_TTL`; a technician's session also
  ends when the user is deleted.
- CSRF: every form carries ``csrf_token``, an HMAC of the session id under a key derived
  from the configured secret (nothing stored), checked in constant time on every POST.

The signed-in person is a :class:`WebPrincipal`: the same ``Principal`` the API's tokens
give, so the pages go through the same role checks and masking as the API.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from calsync.api.auth import Principal
from calsync.config import Settings
from calsync.db.models import LoginLink, User, WebSession
from calsync.db.session import Database
from calsync.errors import AuthError, NotFound, ValidationError
from calsync.secrets import derive_key

LOGIN_LINK_TTL = dt.timedelta(minutes=15)
SESSION_TTL = dt.timedelta(hours=12)
COOKIE_NAME = "calsync_session"
CSRF_FIELD = "csrf_token"
SIGN_IN_PATH = "/app/sign-in/"
CSRF_PURPOSE = b"calsync web csrf v1"
WEB_ROLES = ("user", "dispatcher")
MAX_NAME = 256


@dataclass(frozen=True)
class WebPrincipal(Principal):
    """A signed-in browser: role ``user`` (a technician, ``user_id`` set) or
    ``dispatcher``. ``display_name`` is what the pages greet."""

    display_name: str = ""

    @property
    def actor(self) -> str:
        return f"web:{self.token_name}"


@dataclass(frozen=True)
class LoginLinkRequest:
    role: str
    user_id: str | None
    name: str


@dataclass(frozen=True)
class IssuedLink:
    token: str
    expires_at: dt.datetime


@dataclass(frozen=True)
class SignedIn:
    session_id: str
    principal: WebPrincipal
    expires_at: dt.datetime


class LoginLinkInvalid(AuthError):
    """The link is unknown, used already or expired (one message for all three)."""

    code = "login_link_invalid"


def hash_secret(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()


def parse_login_link_request(raw: Any, record: str = "login link") -> LoginLinkRequest:
    """``{"user_id"}`` for a technician or ``{"role": "dispatcher", "name"}``."""
    if not isinstance(raw, dict):
        raise ValidationError(record, "*", "expected a JSON object")
    for key in sorted(raw, key=str):
        if key not in ("user_id", "role", "name"):
            raise ValidationError(record, str(key), "unknown field; expected user_id, role, name")
    role = raw.get("role", "user" if "user_id" in raw else None)
    if role not in WEB_ROLES:
        raise ValidationError(record, "role", "expected \"user\" (with user_id) or "
                              "\"dispatcher\" (with name)")
    name = raw.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()
                             or len(name) > MAX_NAME):
        raise ValidationError(record, "name", f"expected a non-empty name of at most "
                              f"{MAX_NAME} characters")
    if role == "user":
        uid = raw.get("user_id")
        if not isinstance(uid, str) or not uid.strip():
            raise ValidationError(record, "user_id", "is required for a technician's link")
        return LoginLinkRequest("user", uid, name.strip() if name else "")
    if "user_id" in raw:
        raise ValidationError(record, "user_id", "a dispatcher's link names no user")
    if not name:
        raise ValidationError(record, "name", "is required for a dispatcher's link")
    return LoginLinkRequest("dispatcher", None, name.strip())


def create_login_link(session: Session, req: LoginLinkRequest, created_by: str,
                      now: dt.datetime) -> IssuedLink:
    """Store a new link (its hash) and return its token once. Raises NotFound for an
    unknown or deleted user."""
    name = req.name
    if req.role == "user":
        assert req.user_id is not None
        user = session.get(User, req.user_id)
        if user is None or user.deleted_at is not None:
            raise NotFound(f"user {req.user_id!r} not found")
        name = user.name
    token = secrets.token_urlsafe(32)
    expires = now + LOGIN_LINK_TTL
    session.add(LoginLink(token_hash=hash_secret(token), role=req.role, user_id=req.user_id,
                          name=name, created_by=created_by, created_at=now, expires_at=expires))
    return IssuedLink(token, expires)


def login_link_url(settings: Settings, token: str) -> str:
    return settings.server.base_url.rstrip("/") + SIGN_IN_PATH + token


def _principal(role: str, user_id: str | None, name: str) -> WebPrincipal:
    who = user_id if role == "user" else f"dispatcher:{name}"
    return WebPrincipal(role=role, user_id=user_id, token_name=str(who), display_name=name)


def redeem_login_link(db: Database, token: str, now: dt.datetime) -> SignedIn:
    """Use the link once and open a session. Raises LoginLinkInvalid."""
    token_hash = hash_secret(token)
    with db.session() as s:
        # Checked and spent in one statement: a second redeem matches no row.
        spent = s.execute(update(LoginLink).where(
            LoginLink.token_hash == token_hash, LoginLink.used_at.is_(None),
            LoginLink.expires_at > now).values(used_at=now))
        if getattr(spent, "rowcount", 0) != 1:
            raise LoginLinkInvalid("this sign-in link was already used or has expired")
        link = s.get(LoginLink, token_hash)
        assert link is not None
        if link.user_id is not None:
            user = s.get(User, link.user_id)
            if user is None or user.deleted_at is not None:
                raise LoginLinkInvalid("this sign-in link was already used or has expired")
        session_id = secrets.token_urlsafe(32)
        expires = now + SESSION_TTL
        s.add(WebSession(session_hash=hash_secret(session_id), role=link.role,
                         user_id=link.user_id, name=link.name, created_at=now,
                         expires_at=expires))
        # Housekeeping: links and sessions long expired are of no use to anyone.
        old = now - dt.timedelta(days=1)
        s.execute(delete(LoginLink).where(LoginLink.expires_at < old))
        s.execute(delete(WebSession).where(WebSession.expires_at < old))
        principal = _principal(link.role, link.user_id, link.name)
    return SignedIn(session_id, principal, expires)


def session_principal(db: Database, session_id: str | None,
                      now: dt.datetime) -> WebPrincipal | None:
    """Who this cookie signs in, or None (no such session, expired, user deleted)."""
    if not session_id:
        return None
    with db.read_session() as s:
        row = s.get(WebSession, hash_secret(session_id))
        if row is None or row.expires_at <= now:
            return None
        if row.user_id is not None:
            user = s.get(User, row.user_id)
            if user is None or user.deleted_at is not None:
                return None
            return _principal(row.role, row.user_id, user.name)
        return _principal(row.role, row.user_id, row.name)


def end_session(db: Database, session_id: str | None) -> None:
    if session_id:
        with db.session() as s:
            s.execute(delete(WebSession).where(WebSession.session_hash == hash_secret(session_id)))


def csrf_token(settings: Settings, session_id: str) -> str:
    key = derive_key(settings.security.secret_key, CSRF_PURPOSE)
    return hmac.new(key, session_id.encode(), hashlib.sha256).hexdigest()


def csrf_ok(settings: Settings, session_id: str, given: object) -> bool:
    if not isinstance(given, str) or not given:
        return False
    return hmac.compare_digest(csrf_token(settings, session_id), given)

