"""Subscribed calendars (DESIGN 6.2): a user's read-only ``.ics`` feed as a conflict
calendar. One place for the CLI (``calsync connect ics``) and the self-service API.

The feed is verified (fetched once, must be iCalendar) by the ``ics`` connector's factory,
stored like any connection (its address sealed with the credentials: private links carry
their key), and its one calendar starts as a ``conflict`` calendar, due at once.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select

from calsync.audit import audit
from calsync.config import Settings
from calsync.db.models import Calendar, Connection, User
from calsync.db.session import Database
from calsync.errors import NotFound
from calsync.sync.connections import save_connection
from calsync.sync.connector import ConnectContext, load_connector_factory

PROVIDER = "ics"


def subscribe_feed(settings: Settings, db: Database, user_id: str, url: str, now: dt.datetime,
                   *, actor: str = "cli:connect", http: Any = None) -> dict[str, Any]:
    """Verify and store ``url`` as ``user_id``'s subscribed calendar. Returns ``{"id",
    "provider", "account", "created", "calendars": [{"id", "name", "role", "read_only"}]}``.
    Raises NotFound (no such user) and ConnectFailed (the address does not answer, or not
    with iCalendar), both with what to fix."""
    with db.read_session() as s:
        user = s.get(User, user_id)
        if user is None or user.deleted_at is not None:
            raise NotFound(f"user {user_id!r} not found")
        timezone = user.timezone
    ctx = ConnectContext(provider=PROVIDER, url=None, account="", credentials={"url": url},
                         settings=settings, http=http, options={"timezone": timezone})
    stored, calendars = load_connector_factory(PROVIDER).verify(ctx)
    conn_id, created = save_connection(settings, db, user_id, stored, calendars, now, actor)
    with db.session() as s:
        conn = s.get(Connection, conn_id)
        assert conn is not None
        rows = list(s.scalars(select(Calendar).where(Calendar.connection_id == conn_id)
                              .order_by(Calendar.id)))
        for cal in rows:
            cal.read_only = True
            if cal.role == "ignored":
                cal.role = "conflict"
        audit(s, actor, "subscription.create" if created else "subscription.refresh",
              "connection", conn.public_id, {"user": user_id, "account": conn.account}, at=now)
        return {"id": conn.public_id, "provider": conn.provider, "account": conn.account,
                "created": created,
                "calendars": [{"id": c.public_id, "name": c.name, "role": c.role,
                               "read_only": c.read_only} for c in rows]}


__all__ = ["PROVIDER", "subscribe_feed"]
