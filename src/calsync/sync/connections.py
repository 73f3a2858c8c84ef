"""Storing a verified connection, and folding a fresh calendar listing into it: one place for
the CLI (CalDAV, iCloud, OAuth device and browser sign-in, ``calendars refresh``), the web
OAuth callback and the self-service API (``calsync.selfservice``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from calsync.audit import audit
from calsync.config import Settings
from calsync.db.models import Calendar, Connection, User
from calsync.db.session import Database
from calsync.errors import NotFound
from calsync.outbox.events import emit_connection_status
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
        if not created:  # a reconnect: the platform hears the connection works again
            emit_connection_status(s, connection=conn.public_id, user_id=user_id,
                                   provider=conn.provider, account=conn.account,
                                   old_status=conn.status, new_status="ok", detail=None,
                                   base_url=settings.server.base_url, now=now)
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


GONE_ADVICE = ("the calendar no longer exists on the server; choose another with "
               "`calsync calendars set` (it stays listed until it is no longer used)")


def merge_calendars(s: Session, conn: Connection, listed: list[RemoteCalendar],
                    now: dt.datetime) -> dict[str, Any]:
    """Fold a fresh listing into the stored calendars of ``conn``. A vanished calendar that
    no role used is deleted; one that was primary or conflict is kept, marked ``gone``, so
    the user sees it and chooses another."""
    rows = {c.remote_id: c for c in s.scalars(
        select(Calendar).where(Calendar.connection_id == conn.id))}
    seen = {c.id for c in listed if c.supports_events}
    added, removed, gone = [], [], []
    for remote in listed:
        if not remote.supports_events:
            continue
        row = rows.get(remote.id)
        if row is None:
            row = Calendar(connection_id=conn.id, remote_id=remote.id, name=remote.name,
                           read_only=remote.read_only, role="ignored")
            s.add(row)
            s.flush()
            added.append({"id": row.public_id, "name": row.name, "read_only": row.read_only})
            continue
        row.name, row.read_only = remote.name, remote.read_only
        if remote.read_only and row.role == "primary":
            row.role = "conflict"
            conn.next_sync_at = now
        if row.status == "gone":  # back again (it was only out of reach)
            row.status, row.last_error = "ok", None
            conn.next_sync_at = now
    for remote_id, row in rows.items():
        if remote_id in seen:
            continue
        if row.role == "ignored":
            removed.append({"id": row.public_id, "name": row.name})
            s.delete(row)
        else:
            gone.append({"id": row.public_id, "name": row.name, "role": row.role})
            row.status, row.last_error = "gone", GONE_ADVICE
    return {"connection": conn.public_id, "added": added, "removed": removed, "gone": gone}
