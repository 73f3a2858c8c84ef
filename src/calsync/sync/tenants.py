"""Organisation-wide connections (DESIGN 6.1): one admin consent for a Microsoft 365 tenant
(app-only) or a Google Workspace domain (domain-wide delegation) instead of one sign-in
per technician.

- :func:`save_tenant` stores the tenant (credentials sealed, kept only on the tenant row)
  with the e-mail domains it covers.
- :func:`onboard` gives every calsync user whose e-mail is in those domains a connection
  of their own (``connections.tenant_id``), with no sign-in: their calendars are discovered
  through the tenant's access and the first writable one becomes primary. A mailbox the
  tenant may not open (an application access policy, a user outside the delegation) is
  reported on that user's connection (status ``error``, with what the admin must do), and
  the others go on. Users imported later are onboarded by the next :func:`onboard`
  (:func:`onboard_due` runs it for every tenant from the worker's sync tick, at most once
  per ``sync.interval_seconds``; ``calsync tenants onboard`` at once).
- :func:`tenant_credentials` is what the runner merges into a tenant connection's own
  credentials when it builds its connector.
- :func:`remove_tenant` disconnects every user of the tenant (their calendars, links and
  busy blocks go) and forgets the tenant.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from calsync.audit import audit
from calsync.config import Settings
from calsync.db.models import (
    Calendar,
    Connection,
    ExternalBusy,
    ExternalEvent,
    Link,
    Tenant,
    User,
)
from calsync.db.session import Database
from calsync.errors import CalsyncError, NotFound
from calsync.secrets import CredentialBox
from calsync.sync.connector import RemoteCalendar

log = logging.getLogger("calsync.tenants")
Discover = Callable[[Connection], list[RemoteCalendar]]


@dataclass
class OnboardReport:
    tenant: str  # public id
    matched: int = 0
    connected: list[str] = field(default_factory=list)  # user ids newly connected
    already: int = 0
    refused: dict[str, str] = field(default_factory=dict)  # user id -> what to do
    own: list[str] = field(default_factory=list)  # users with their own sign-in to it
    left_out: list[str] = field(default_factory=list)  # disconnected: not connected again

    def as_dict(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "matched": self.matched,
                "connected": len(self.connected), "already_connected": self.already,
                "own_sign_in": sorted(self.own), "left_out": sorted(self.left_out),
                "refused": [{"user": u, "error": e} for u, e in sorted(self.refused.items())]}


def email_domain(email: str | None) -> str | None:
    if not email or "@" not in email:
        return None
    return email.rsplit("@", 1)[1].strip().lower() or None


def save_tenant(settings: Settings, db: Database, provider: str, name: str,
                credentials: dict[str, Any], domains: Iterable[str], now: dt.datetime,
                actor: str = "cli:connect") -> tuple[int, bool]:
    """Store (or update, on a second consent) the tenant ``name`` of ``provider``.
    Returns (tenant id, created)."""
    box = CredentialBox.from_settings(settings)
    with db.session() as s:
        row = s.scalar(select(Tenant).where(Tenant.provider == provider, Tenant.name == name))
        created = row is None
        if row is None:
            row = Tenant(provider=provider, name=name, created_at=now)
            s.add(row)
        row.credentials = box.seal(credentials)
        row.domains = sorted({d.strip().lower() for d in domains if d.strip()})
        row.status, row.last_error, row.updated_at = "ok", None, now
        s.flush()
        audit(s, actor, "tenant.create" if created else "tenant.update", "tenant",
              row.public_id, {"provider": provider, "name": name, "domains": row.domains},
              at=now)
        return row.id, created


def tenant_credentials(settings: Settings, session: Session, tenant_id: int) -> dict[str, Any]:
    """The tenant's decrypted credentials (for building one of its users' connectors)."""
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound(f"organisation-wide connection {tenant_id} not found")
    creds: dict[str, Any] = CredentialBox.from_settings(settings).open(tenant.credentials)
    return creds


def find_tenant(s: Session, ref: str) -> Tenant:
    """A tenant by public id (``org_…``) or name (tenant id, domain)."""
    rows = list(s.scalars(select(Tenant).where((Tenant.public_id == ref) | (Tenant.name == ref))))
    if len(rows) != 1:
        raise NotFound(f"no organisation-wide connection {ref!r}; see `calsync tenants list`"
                       if not rows else f"{ref!r} names {len(rows)} organisation-wide "
                                        f"connections; use the org_… id")
    return rows[0]


def matching_users(s: Session, tenant: Tenant) -> list[User]:
    domains = set(tenant.domains or [])
    users = s.scalars(select(User).where(User.deleted_at.is_(None), User.email.is_not(None))
                      .order_by(User.id))
    return [u for u in users if email_domain(u.email) in domains]


def _pick_primary(calendars: list[RemoteCalendar], account: str) -> str | None:
    """The user's own calendar: Google's primary (its id is the address), else the first
    writable one (Graph lists the default calendar first)."""
    writable = [c for c in calendars if c.supports_events and not c.read_only]
    own = [c for c in writable if c.id.lower() == account.lower()]
    return (own or writable)[0].id if writable else None


def onboard(settings: Settings, db: Database, tenant_id: int, now: dt.datetime,
            discover: Discover, *, progress: Callable[[str], None] | None = None,
            actor: str = "cli:connect") -> OnboardReport:
    """Connect every matching user of the tenant who has no connection through it yet.

    ``discover(connection)`` lists that user's calendars through the tenant's access (the
    caller builds the connector: the runner's ``build_connector``). A user it fails for gets
    the connection anyway, in ``error`` with the reason, so the admin sees it in
    ``connections list``; nothing stops the others. ``progress(user_id)`` runs per user."""
    box = CredentialBox.from_settings(settings)
    with db.session() as s:
        tenant = s.get(Tenant, tenant_id)
        if tenant is None:
            raise NotFound(f"organisation-wide connection {tenant_id} not found")
        report = OnboardReport(tenant.public_id)
        provider = tenant.provider
        users = [(u.id, str(u.email).strip()) for u in matching_users(s, tenant)]
        have = set(s.scalars(select(Connection.user_id).where(
            Connection.tenant_id == tenant_id)))
        # a user who connected this mailbox themselves keeps that connection (two
        # connections would sync the same calendar twice)
        own_rows = s.execute(select(Connection.user_id, Connection.account).where(
            Connection.provider == provider, Connection.tenant_id.is_(None))).all()
        signed_in = {(u, (a or "").lower()) for u, a in own_rows}
        own = {"mode": "app_only"} if provider == "outlook" else {"mode": "domain_wide"}
        left_out = set(tenant.left_out or [])
    report.matched = len(users)
    for user_id, email in users:
        if progress is not None:
            progress(user_id)
        if user_id in have:
            report.already += 1
            continue
        if user_id in left_out:  # their connection was disconnected: they stay out
            report.left_out.append(user_id)
            continue
        if (user_id, email.lower()) in signed_in:
            report.own.append(user_id)
            continue
        with db.session() as s:
            conn = Connection(user_id=user_id, provider=provider, account=email.lower(),
                              credentials=box.seal(own), tenant_id=tenant_id,
                              created_at=now, updated_at=now, settings={}, next_sync_at=now)
            s.add(conn)
            s.flush()
            conn_id = conn.id
        with db.read_session() as s:
            made = s.get(Connection, conn_id)
            assert made is not None
            try:
                calendars = discover(made)
                error = None
            except CalsyncError as exc:
                calendars, error = [], exc.message
        with db.session() as s:
            conn_row = s.get(Connection, conn_id)
            assert conn_row is not None
            conn = conn_row
            if error is not None:
                conn.status, conn.last_error = "error", error[:2000]
                # kept through syncs (it has no calendars) until retry_refused succeeds
                conn.settings = {**(conn.settings or {}), "tenant_refused": error[:2000]}
                report.refused[user_id] = error
                log.warning("tenant %s: user %s not connected: %s", report.tenant, user_id,
                            error)
            primary = _pick_primary(calendars, conn.account)
            for cal in calendars:
                if not cal.supports_events:
                    continue
                s.add(Calendar(connection_id=conn_id, remote_id=cal.id, name=cal.name,
                               read_only=cal.read_only,
                               role="primary" if cal.id == primary else "ignored"))
            audit(s, actor, "connection.create", "connection", conn.public_id,
                  {"provider": provider, "account": conn.account, "user": user_id,
                   "tenant": report.tenant}, at=now)
        if error is None:
            report.connected.append(user_id)
    return report


def retry_refused(settings: Settings, db: Database, tenant_id: int, now: dt.datetime,
                  discover: Discover) -> list[str]:
    """Try again the tenant's connections that could not list calendars (a policy fixed by
    the admin since): users now reachable get their calendars. Returns their user ids."""
    with db.read_session() as s:
        ids = [c.id for c in s.scalars(select(Connection).where(
            Connection.tenant_id == tenant_id,
            ~select(Calendar.id).where(Calendar.connection_id == Connection.id).exists()))
            if (c.settings or {}).get("tenant_refused")]
    fixed = []
    for conn_id in ids:
        with db.read_session() as s:
            conn = s.get(Connection, conn_id)
            assert conn is not None
            try:
                calendars = discover(conn)
            except CalsyncError:
                continue
        with db.session() as s:
            conn = s.get(Connection, conn_id)
            assert conn is not None
            primary = _pick_primary(calendars, conn.account)
            for cal in calendars:
                if cal.supports_events:
                    s.add(Calendar(connection_id=conn_id, remote_id=cal.id, name=cal.name,
                                   read_only=cal.read_only,
                                   role="primary" if cal.id == primary else "ignored"))
            conn.status, conn.last_error, conn.next_sync_at = "ok", None, now
            conn.settings = {k: v for k, v in (conn.settings or {}).items()
                             if k != "tenant_refused"}
            fixed.append(conn.user_id)
    return fixed


def leave_out(s: Session, tenant_id: int, user_id: str) -> None:
    """Remember that ``user_id``'s connection through the tenant was disconnected: the
    tenant's onboarding no longer connects them (:func:`take_back` undoes it)."""
    tenant = s.get(Tenant, tenant_id)
    if tenant is not None and user_id not in (tenant.left_out or []):
        tenant.left_out = sorted({*(tenant.left_out or []), user_id})


def take_back(s: Session, tenant_id: int, user_id: str) -> bool:
    """Let the tenant's onboarding connect ``user_id`` again; False when they were not
    left out."""
    tenant = s.get(Tenant, tenant_id)
    if tenant is None or user_id not in (tenant.left_out or []):
        return False
    tenant.left_out = [u for u in tenant.left_out if u != user_id]
    return True


def onboard_all(settings: Settings, db: Database, now: dt.datetime,
                discover: Discover) -> list[OnboardReport]:
    """:func:`onboard` for every tenant: users imported since get their connection."""
    with db.read_session() as s:
        ids = list(s.scalars(select(Tenant.id).order_by(Tenant.id)))
    return [onboard(settings, db, tid, now, discover, actor="sync:onboard") for tid in ids]


_last_onboard: dict[str, dt.datetime] = {}


def onboard_due(settings: Settings, db: Database, now: dt.datetime,
                discover: Discover) -> list[OnboardReport]:
    """What the worker runs each tick: at most once every ``sync.interval_seconds`` per
    database, onboard users imported since and retry refused mailboxes of every tenant.
    Costs one query when there are no tenants."""
    last = _last_onboard.get(db.url)
    if last is not None and dt.timedelta(0) <= now - last < dt.timedelta(
            seconds=settings.sync.interval_seconds):
        return []
    _last_onboard[db.url] = now
    with db.read_session() as s:
        ids = list(s.scalars(select(Tenant.id).order_by(Tenant.id)))
    reports = []
    for tid in ids:
        reports.append(onboard(settings, db, tid, now, discover, actor="worker:onboard"))
        retry_refused(settings, db, tid, now, discover)
    return reports


def tenant_connections(s: Session, tenant_id: int) -> list[Connection]:
    return list(s.scalars(select(Connection).where(Connection.tenant_id == tenant_id)
                          .order_by(Connection.user_id)))


def tenant_overviews(s: Session
                     ) -> Iterator[tuple[Tenant, dict[str, Any], list[Connection]]]:
    """Each organisation, oldest first, with what ``tenants list`` and ``GET /api/tenants``
    both show of it (``{"id", "provider", "name", "domains", "users", "health": {status:
    count}, "left_out"}``; never a credential) and its users' connections."""
    for t in s.scalars(select(Tenant).order_by(Tenant.id)):
        conns = tenant_connections(s, t.id)
        health: dict[str, int] = {}
        for c in conns:
            health[c.status] = health.get(c.status, 0) + 1
        overview: dict[str, Any] = {
            "id": t.public_id, "provider": t.provider, "name": t.name,
            "domains": list(t.domains or []), "users": len(conns), "health": health,
            "left_out": list(t.left_out or [])}
        yield t, overview, conns


def remove_tenant(settings: Settings, db: Database, tenant_id: int, now: dt.datetime,
                  actor: str = "cli") -> int:
    """Disconnect every user of the tenant (connections, calendars, links, busy blocks) and
    delete the tenant with its sealed credentials. Returns how many users it disconnected.
    calsync's copies stay on the users' calendars (the access to remove them goes with the
    tenant)."""
    with db.session() as s:
        tenant = s.get(Tenant, tenant_id)
        if tenant is None:
            raise NotFound(f"organisation-wide connection {tenant_id} not found")
        conns = tenant_connections(s, tenant_id)
        conn_ids = [c.id for c in conns]
        cal_ids = list(s.scalars(select(Calendar.id).where(
            Calendar.connection_id.in_(conn_ids)))) if conn_ids else []
        if cal_ids:
            events = select(ExternalEvent.id).where(ExternalEvent.calendar_id.in_(cal_ids))
            s.execute(delete(ExternalBusy).where(ExternalBusy.event_id.in_(events)))
            s.execute(delete(ExternalEvent).where(ExternalEvent.calendar_id.in_(cal_ids)))
            s.execute(delete(Link).where(Link.calendar_id.in_(cal_ids)))
        for conn in conns:
            s.delete(conn)
        audit(s, actor, "tenant.remove", "tenant", tenant.public_id,
              {"provider": tenant.provider, "name": tenant.name, "users": len(conns)}, at=now)
        s.flush()
        s.delete(tenant)
        return len(conns)


__all__ = ["OnboardReport", "email_domain", "find_tenant", "matching_users", "onboard",
           "onboard_all", "onboard_due",
           "remove_tenant", "retry_refused", "save_tenant", "tenant_connections",
           "tenant_credentials"]
