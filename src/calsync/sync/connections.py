"""Storing a verified connection: one place for the CLI (CalDAV, iCloud, OAuth device and
browser sign-in) and the web OAuth callback."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from calsync.audit import audit
from calsync.config import Settings
from calsync.db.models import Calendar, Connection, User
from calsync.db.session import Database
from calsync.errors import NotFound
from calsync.secrets import CredentialBox
from calsync.sync.connector import ConnectContext, RemoteCalendar


def save_connection(settings: Settings, db: Database, user_id: str, ctx: ConnectContext,
                    calendars: list[RemoteCalendar], now: dt.datetime,
                    actor: str = "cli:connect") -> tuple[int, bool]:
    """Store (or refresh, for a reconnect) the user's connection for ``ctx.provider`` and
    ``ctx.account`` (and, for generic CalDAV, ``ctx.url``): credentials encrypted, status ok,
    due at once, calendars merged (new ones ``ignored``). Returns (connection id, created)."""
    box = CredentialBox.from_settings(settings)
    with db.session() as s:
        user = s.get(User, user_id)
        if user is None or user.deleted_at is not None:
            raise NotFound(f"user {user_id!r} not found")
        same = select(Connection).where(
            Connection.user_id == user_id, Connection.provider == ctx.provider,
            Connection.account == ctx.account)
        if ctx.provider == "caldav":  # one username may exist on several servers
            same = same.where(Connection.url == ctx.url)
        conn = s.scalar(same)
        created = conn is None
        if conn is None:
            conn = Connection(user_id=user_id, provider=ctx.provider, account=ctx.account,
                              created_at=now, settings={})
            s.add(conn)
        conn.url = ctx.url
        conn.credentials = box.seal(ctx.credentials)
        conn.status, conn.last_error = "ok", None
        conn.next_sync_at = now
        conn.updated_at = now
        s.flush()
        existing = {c.remote_id: c for c in s.scalars(
            select(Calendar).where(Calendar.connection_id == conn.id))}
        for cal in calendars:
            if not cal.supports_events:
                continue
            row = existing.get(cal.id)
            if row is None:
                s.add(Calendar(connection_id=conn.id, remote_id=cal.id, name=cal.name,
                               read_only=cal.read_only, role="ignored"))
            else:
                row.name, row.read_only = cal.name, cal.read_only
                if cal.read_only and row.role == "primary":
                    row.role = "conflict"
        audit(s, actor, "connection.create" if created else "connection.reauth", "connection",
              str(conn.id), {"provider": ctx.provider, "account": ctx.account,
                             "user": user_id}, at=now)
        return conn.id, created
