"""Push channels: the shapes connectors hand back for webhooks, and keeping provider
subscriptions (Graph change notifications, Google watch channels) alive.

Connector factories opt in with these hooks (looked up by name, never imported):

- ``parse_notification(headers, query, body) -> PushResult`` — what a webhook POST means;
- ``subscribe(connector, calendar_id, notify_url, secret) -> (remote_id, resource_id|None,
  expires_at)``; optional ``renew(connector, remote_id, resource_id) -> expires_at`` (else a
  new channel replaces the old one); ``unsubscribe(connector, remote_id, resource_id)``.

:func:`renew_push_subscriptions` (run by the scheduler) creates channels for the primary and
conflict calendars of healthy connections, renews them ``RENEW_BEFORE`` ahead of expiry, and
drops channels of calendars that are no longer synced. The secret given to the provider is
random per channel; only its SHA-256 is stored (``PushSubscription.secret_hash``).

:func:`mark_calendars_due` is what a valid notification does: the calendars' connections
become due now and the workers are woken (:mod:`calsync.wakeups`); the API process never
syncs itself.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from calsync.config import Settings
    from calsync.db.models import Connection
    from calsync.db.session import Database

log = logging.getLogger("calsync.push")

RENEW_BEFORE = dt.timedelta(hours=12)
PUSH_ROLES = ("primary", "conflict")


@dataclass(frozen=True)
class PushNotice:
    """One notification: the channel it claims to come from and the secret it carries
    (Graph ``clientState``, Google ``X-Goog-Channel-Token``)."""

    subscription_id: str
    secret: str
    resource_id: str | None = None  # Google X-Goog-Resource-ID
    change: str | None = None  # created|updated|deleted|sync|exists|…


@dataclass(frozen=True)
class PushResult:
    """What a webhook request means. When ``reply_text`` is set (Graph's validation
    handshake) the endpoint answers it as ``text/plain`` with ``reply_status`` and syncs
    nothing; otherwise each notice is checked against its stored channel."""

    notices: tuple[PushNotice, ...] = ()
    reply_text: str | None = None
    reply_status: int = 200
    extra: dict[str, Any] = field(default_factory=dict)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    """Constant-time comparison of a presented secret with the stored hash."""
    return hmac.compare_digest(hash_secret(secret).encode(), stored_hash.encode())


def notify_url(settings: Settings, provider: str) -> str:
    return f"{settings.server.base_url.rstrip('/')}/webhooks/{provider}"


def open_connector(settings: Settings, conn: Connection, http: Any = None) -> Any:
    """A connector for a stored connection (credentials decrypted here, never logged)."""
    from calsync.secrets import CredentialBox
    from calsync.sync.connector import ConnectContext, load_connector_factory

    factory = load_connector_factory(conn.provider)
    creds = CredentialBox.from_settings(settings).open(conn.credentials) \
        if conn.credentials else {}
    if conn.tenant_id is not None:  # organisation-wide: the tenant's credentials too
        from sqlalchemy.orm import object_session

        from calsync.sync.tenants import tenant_credentials

        session = object_session(conn)
        if session is not None:
            creds = {**tenant_credentials(settings, session, conn.tenant_id), **creds}
    ctx = ConnectContext(provider=conn.provider, url=conn.url, account=conn.account,
                         credentials=creds, settings=settings, http=http)
    return factory, factory.connect(ctx)


def _store_credentials(settings: Settings, conn: Connection, connector: Any) -> None:
    from calsync.secrets import CredentialBox

    changed = connector.credentials()
    if changed is not None:
        conn.credentials = CredentialBox.from_settings(settings).seal(changed)


def mark_calendars_due(db: Database, calendar_ids: list[int], now: dt.datetime) -> int:
    """Make the connections of ``calendar_ids`` due at ``now`` and wake the workers.
    Returns how many connections were marked. A connection that is being synced right now
    stays due after that sync (it keeps a due time set while it ran)."""
    from sqlalchemy import or_, select, update

    from calsync.db.models import Calendar, Connection
    from calsync.wakeups import notify_in, wake_local

    if not calendar_ids:
        return 0
    with db.session() as s:
        owners = select(Calendar.connection_id).where(Calendar.id.in_(calendar_ids))
        marked = s.execute(update(Connection)  # type: ignore[attr-defined]  # CursorResult
                           .where(Connection.id.in_(owners),
                                  or_(Connection.next_sync_at.is_(None),
                                      Connection.next_sync_at > now,
                                      # being synced: the new due time tells that sync
                                      # to leave the connection due when it ends
                                      Connection.lease_owner.is_not(None)))
                           .values(next_sync_at=now)).rowcount or 0
        notify_in(s)
    wake_local()
    return int(marked)


def renew_push_subscriptions(settings: Settings, db: Database,
                             now: dt.datetime) -> dict[str, int]:
    """Create, renew and drop push channels; returns counts. Provider failures are logged
    and counted per calendar; one failing connection never stops the others."""
    from sqlalchemy import select

    from calsync.db.models import Calendar, Connection, PushSubscription
    from calsync.errors import CalsyncError, NeedsReauth
    from calsync.outbox.events import emit_connection_status
    from calsync.sync.connector import load_connector_factory

    counts = {"created": 0, "renewed": 0, "removed": 0, "failed": 0}
    with db.session() as s:
        conn_ids = list(s.scalars(select(Connection.id).where(Connection.status == "ok")))
    for conn_id in conn_ids:
        with db.session() as s:
            conn = s.get(Connection, conn_id)
            if conn is None:
                continue
            try:
                factory = load_connector_factory(conn.provider)
            except CalsyncError:
                continue
            if not hasattr(factory, "subscribe"):
                continue
            calendars = list(s.scalars(select(Calendar).where(
                Calendar.connection_id == conn.id)))
            subs = {sub.calendar_id: sub for sub in s.scalars(
                select(PushSubscription).where(PushSubscription.calendar_id.in_(
                    [c.id for c in calendars] or [-1])))}
            work = [c for c in calendars
                    if (c.role in PUSH_ROLES and (c.id not in subs or
                                                   subs[c.id].expires_at - now < RENEW_BEFORE))
                    or (c.role not in PUSH_ROLES and c.id in subs)]
            if not work:
                continue
            connector = None
            try:
                factory, connector = open_connector(settings, conn)
                for cal in work:
                    try:
                        counts[_sync_channel(settings, s, factory, connector, conn, cal,
                                             subs.get(cal.id), now)] += 1
                    except NeedsReauth:
                        raise
                    except CalsyncError as exc:
                        counts["failed"] += 1
                        log.warning("push channel for calendar %s (connection %s): %s",
                                    cal.id, conn.id, exc.message)
                _store_credentials(settings, conn, connector)
            except NeedsReauth as exc:
                emit_connection_status(s, connection=conn.public_id, user_id=conn.user_id,
                                       provider=conn.provider, account=conn.account,
                                       old_status=conn.status, new_status="needs_reauth",
                                       detail=None, base_url=settings.server.base_url,
                                       now=now)
                conn.status = "needs_reauth"
                conn.last_error = exc.message
                counts["failed"] += 1
            except CalsyncError as exc:
                counts["failed"] += 1
                log.warning("push channels of connection %s: %s", conn.id, exc.message)
            finally:
                if connector is not None:
                    connector.close()
    return counts


def _sync_channel(settings: Settings, s: Any, factory: Any, connector: Any, conn: Connection,
                  cal: Any, sub: Any, now: dt.datetime) -> str:
    from calsync.db.models import PushSubscription

    if cal.role not in PUSH_ROLES:
        unsubscribe = getattr(factory, "unsubscribe", None)
        if unsubscribe is not None:
            unsubscribe(connector, sub.remote_id, sub.resource_id)
        s.delete(sub)
        return "removed"
    from calsync.errors import NotFound

    renew = getattr(factory, "renew", None)
    if sub is not None and renew is not None:
        try:
            sub.expires_at = renew(connector, sub.remote_id, sub.resource_id)
            return "renewed"
        except NotFound:  # the provider dropped it (expired, removed): make a new one
            log.info("push channel %s is gone at the provider; subscribing again", sub.id)
    secret = secrets.token_urlsafe(32)
    remote_id, resource_id, expires_at = factory.subscribe(
        connector, cal.remote_id, notify_url(settings, conn.provider), secret)
    if sub is not None:  # no renew hook: the new channel replaces the old one
        unsubscribe = getattr(factory, "unsubscribe", None)
        if unsubscribe is not None:
            try:
                unsubscribe(connector, sub.remote_id, sub.resource_id)
            except Exception as exc:  # noqa: BLE001 - the old channel expires by itself
                log.info("old push channel not removed: %s", type(exc).__name__)
        s.delete(sub)
    s.add(PushSubscription(calendar_id=cal.id, provider=conn.provider, remote_id=remote_id,
                           resource_id=resource_id, secret_hash=hash_secret(secret),
                           expires_at=expires_at, created_at=now))
    return "renewed" if sub is not None else "created"
