"""Bearer API tokens and roles: create, list, revoke, and resolve a request's caller.

Tokens are stored as SHA-256 hashes only; listings show the id, name, role, user, the
public prefix and the dates, never the token or its hash. A token of a deleted user is
revoked with the user (``calsync.schedule.store``) and refused here in any case."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from calsync.db.models import ApiToken, User, utcnow
from calsync.errors import AuthError, Forbidden, NotFound, UserError
from calsync.secrets import hash_api_token, new_api_token

ROLES = ("admin", "dispatcher", "user")
log = logging.getLogger("calsync.api")


@dataclass(frozen=True)
class Principal:
    """Who is calling. ``user_id`` is set for role ``user``."""

    role: str
    user_id: str | None
    token_name: str

    @property
    def actor(self) -> str:
        return f"token:{self.token_name}"

    def can_see_details_of(self, owner_id: str) -> bool:
        """Details of external events are for their owner only (DESIGN 7)."""
        return self.role == "user" and self.user_id == owner_id

    def require(self, *roles: str) -> None:
        if self.role not in roles:
            raise Forbidden(f"role {self.role!r} may not do this; needs {' or '.join(roles)}")

    def require_user_access(self, user_id: str, *, write: bool = False) -> None:
        """admin: all; dispatcher: read all; user: own only."""
        if self.role == "admin":
            return
        if self.role == "dispatcher" and not write:
            return
        if self.role == "user" and self.user_id == user_id:
            return
        raise Forbidden(f"role {self.role!r} may not access user {user_id!r}")


def create_api_token(session: Session, name: str, role: str, user_id: str | None) -> str:
    if role not in ROLES:
        raise UserError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if role == "user" and not user_id:
        raise UserError("role 'user' needs --user USER")
    if role != "user" and user_id:
        raise UserError(f"--user goes with role 'user' only, not {role!r}")
    token = new_api_token()
    session.add(ApiToken(name=name, role=role, user_id=user_id,
                         token_hash=hash_api_token(token), prefix=token[:8]))
    return token


def token_as_dict(row: ApiToken) -> dict[str, Any]:
    """What a listing shows of a token: never the token or its hash."""
    return {"id": row.id, "name": row.name, "role": row.role, "user_id": row.user_id,
            "prefix": row.prefix, "created_at": _iso(row.created_at),
            "last_used_at": _iso(row.last_used_at), "revoked_at": _iso(row.revoked_at)}


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def list_api_tokens(session: Session, include_revoked: bool = True) -> list[dict[str, Any]]:
    q = select(ApiToken).order_by(ApiToken.id)
    if not include_revoked:
        q = q.where(ApiToken.revoked_at.is_(None))
    return [token_as_dict(row) for row in session.scalars(q)]


def revoke_api_token(session: Session, token_id: int, now: dt.datetime) -> dict[str, Any]:
    """Revoke one token by id (the next request with it gets 401). Revoking twice keeps the
    first date. Raises NotFound."""
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFound(f"API token {token_id} not found; see `calsync token list`")
    if row.revoked_at is None:
        row.revoked_at = now
    return token_as_dict(row)


def _token_row(session: Session, header: str | None) -> ApiToken:
    if not header or not header.lower().startswith("bearer "):
        raise AuthError("missing bearer token (Authorization: Bearer TOKEN)")
    token = header[7:].strip()
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_api_token(token)))
    if row is None or row.revoked_at is not None:
        raise AuthError("invalid or revoked API token")
    if row.user_id is not None:
        # Tokens die with their user, also those from before deletions revoked them.
        owner = session.get(User, row.user_id)
        if owner is None or owner.deleted_at is not None:
            raise AuthError("invalid or revoked API token")
    return row


def principal_for(session: Session, header: str | None) -> Principal:
    row = _token_row(session, header)
    row.last_used_at = utcnow()
    return Principal(role=row.role, user_id=row.user_id, token_name=row.name)


# "Last used" is bookkeeping: written at most once a minute per token, in its own short
# write-first transaction, so concurrent requests (SQLite: one writer at a time) do not
# turn a read transaction into a contended write.
TOKEN_TOUCH_EVERY = dt.timedelta(minutes=1)


# Declares the bearer scheme in the OpenAPI document (every route that takes PrincipalDep);
# the header itself is read below, so a missing token is our 401, not FastAPI's 403.
bearer_scheme = HTTPBearer(auto_error=False, scheme_name="bearer",
                           description="An API token from `calsync token create` "
                                       "(role admin, dispatcher, or user with --user)")


def current_principal(request: Request,
                      _declared: HTTPAuthorizationCredentials | None = Security(bearer_scheme)
                      ) -> Principal:
    db = request.app.state.db
    with db.session() as s:
        row = _token_row(s, request.headers.get("authorization"))
        who = Principal(role=row.role, user_id=row.user_id, token_name=row.name)
        token_id, last_used = row.id, row.last_used_at
    now = utcnow()
    if last_used is None or now - last_used >= TOKEN_TOUCH_EVERY:
        try:
            with db.session() as ws:
                ws.execute(update(ApiToken).where(ApiToken.id == token_id)
                           .values(last_used_at=now))
        except OperationalError:
            log.warning("could not record the use of API token %r", who.token_name)
    return who


PrincipalDep = Depends(current_principal)
