"""Who may do what with a user's connections and profile (DESIGN 4.5).

- ``admin``: everything, for anyone;
- ``dispatcher``: may read anyone's connection health, never change it;
- ``user``: their own user only.

A viewer acting on someone else's data gets ``Forbidden`` (403), always the same one; a
connection or calendar id that does not exist gets ``NotFound`` (404).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from calsync.db.models import Connection, User
from calsync.errors import Forbidden, NotFound


class Viewer(Protocol):
    """Who is acting: ``role`` is ``admin``, ``dispatcher`` or ``user``; ``user_id`` is set
    for ``user``; ``actor`` is what the audit log records (e.g. ``token:NAME``)."""

    @property
    def role(self) -> str: ...

    @property
    def user_id(self) -> str | None: ...

    @property
    def actor(self) -> str: ...


@dataclass(frozen=True)
class Operator:
    """The operator at a shell (``calsync`` commands): acts as ``admin``."""

    actor: str = "cli"
    role: str = "admin"
    user_id: str | None = None


def may_read(viewer: Viewer, user_id: str) -> bool:
    return viewer.role in ("admin", "dispatcher") or (
        viewer.role == "user" and viewer.user_id == user_id)


def may_change(viewer: Viewer, user_id: str) -> bool:
    return viewer.role == "admin" or (viewer.role == "user" and viewer.user_id == user_id)


def require_read(viewer: Viewer, user_id: str) -> None:
    """Raise Forbidden unless ``viewer`` may read ``user_id``'s connections."""
    if not may_read(viewer, user_id):
        raise Forbidden(f"role {viewer.role!r} may not see the connections of user "
                        f"{user_id!r}")


def require_change(viewer: Viewer, user_id: str) -> None:
    """Raise Forbidden unless ``viewer`` may change ``user_id``'s connections or profile."""
    if not may_change(viewer, user_id):
        if viewer.role == "dispatcher":
            raise Forbidden("role 'dispatcher' may read connection health but not change it")
        raise Forbidden(f"role {viewer.role!r} may not change user {user_id!r}")


def live_user(s: Session, user_id: str) -> User:
    """The user, or NotFound (deleted users count as gone)."""
    user = s.get(User, user_id)
    if user is None or user.deleted_at is not None:
        raise NotFound(f"user {user_id!r} not found")
    return user


def connection_by_public_id(s: Session, connection_id: str, viewer: Viewer, *,
                            change: bool) -> Connection:
    """The connection ``con_…`` after the role check (read, or ``change``). NotFound for an
    unknown id, Forbidden for another user's connection."""
    conn = s.scalar(select(Connection).where(Connection.public_id == connection_id))
    if conn is None:
        raise NotFound(f"connection {connection_id!r} not found")
    (require_change if change else require_read)(viewer, conn.user_id)
    return conn
