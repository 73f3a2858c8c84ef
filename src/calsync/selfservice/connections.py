"""A user's connections and calendars, self-served (DESIGN 4.5): list with health, connect
CalDAV and iCloud (credentials verified, calendars discovered), choose the primary and
conflict calendars, rediscover calendars, sync now, disconnect.

Ids are the public ones (``con_…``, ``cal_…``). Shapes returned (JSON-ready dicts):

- connection (:func:`connection_view`): ``{"id", "provider", "account", "status":
  "ok|needs_reauth|error", "last_sync_at", "last_success_at", "last_error", "next_sync_at",
  "calendars": [calendar]}``; never a credential;
- calendar: ``{"id", "name", "role": "primary|conflict|ignored", "read_only", "status":
  "ok|error|guarded|gone", "last_synced_at" (last successful sync), "last_error"}``.

Network I/O (verifying, listing, deleting copies) never happens inside a database
transaction. Errors: ``Forbidden`` (403, see :mod:`calsync.selfservice.access`),
``NotFound`` (404), ``ValidationError`` (422, names the field), ``AuthFailed`` /
``NotCaldav`` / ``Unreachable`` (422, ``field`` and a detail that says what to do),
``ConnectionBusy`` / ``ReconnectNeeded`` / ``CopiesLeft`` (409).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from calsync.audit import audit
from calsync.config import Settings
from calsync.db.models import Calendar, Connection, Link
from calsync.db.session import Database
from calsync.errors import (
    AuthFailed,
    CalsyncError,
    ConnectFailed,
    NeedsReauth,
    NotCaldav,
    ProviderUnavailable,
    Unreachable,
    UserError,
    ValidationError,
)
from calsync.selfservice.access import (
    Viewer,
    connection_by_public_id,
    live_user,
    require_change,
    require_read,
)
from calsync.sync.connections import merge_calendars, save_connection
from calsync.sync.connector import ConnectContext, Connector, load_connector_factory
from calsync.wakeups import notify_in, wake_local

log = logging.getLogger("calsync.selfservice")
Wake = Callable[[], None]
"""Called after a sync was queued and committed; default :func:`calsync.wakeups.wake_local`
(the sync loop of this process). Other processes hear the NOTIFY sent on PostgreSQL."""


class ConnectionBusy(UserError):
    """A worker is syncing the connection right now; try again shortly."""

    code = "busy"
    http_status = 409


class ReconnectNeeded(UserError):
    """The provider no longer accepts the stored sign-in: the user must reconnect."""

    code = "needs_reauth"
    http_status = 409


class CopiesLeft(UserError):
    """Disconnecting with ``remove_copies`` could not remove every copy; nothing else of
    the connection was dropped, so the request can be repeated."""

    code = "copies_left"
    http_status = 409


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def calendar_view(cal: Calendar) -> dict[str, Any]:
    return {"id": cal.public_id, "name": cal.name, "role": cal.role,
            "read_only": cal.read_only, "status": cal.status,
            "last_synced_at": _iso(cal.last_success_at), "last_error": cal.last_error}


def connection_view(s: Session, conn: Connection) -> dict[str, Any]:
    """One connection with the health of each of its calendars (no credentials)."""
    cals = s.scalars(select(Calendar).where(Calendar.connection_id == conn.id)
                     .order_by(Calendar.id))
    return {"id": conn.public_id, "provider": conn.provider, "account": conn.account,
            "status": conn.status, "last_sync_at": _iso(conn.last_sync_at),
            "last_success_at": _iso(conn.last_success_at), "last_error": conn.last_error,
            "next_sync_at": _iso(conn.next_sync_at),
            "calendars": [calendar_view(c) for c in cals]}


def list_connections(s: Session, user_id: str, viewer: Viewer) -> dict[str, Any]:
    """``{"connections": [connection, …]}`` of ``user_id``, oldest first. Readable by the
    user, dispatchers and admins."""
    require_read(viewer, user_id)
    live_user(s, user_id)
    conns = s.scalars(select(Connection).where(Connection.user_id == user_id)
                      .order_by(Connection.id))
    return {"connections": [connection_view(s, c) for c in conns]}


def get_connection(s: Session, connection_id: str, viewer: Viewer) -> dict[str, Any]:
    """One connection by its public id (read access)."""
    return connection_view(s, connection_by_public_id(s, connection_id, viewer, change=False))


# --- connecting -------------------------------------------------------------------------

_ADVICE = {
    ("caldav", AuthFailed): "The server did not accept this username and password. Check "
                            "both; servers with two-step sign-in (Fastmail, Nextcloud, "
                            "Synology) need an app password made in their security settings.",
    ("icloud", AuthFailed): "Apple did not accept this Apple ID and app-specific password. "
                            "Check the Apple ID and make a new app-specific password at "
                            "account.apple.com (Sign-In and Security > App-Specific "
                            "Passwords); your usual Apple ID password does not work here.",
    ("caldav", NotCaldav): "This address answers, but not as a CalDAV calendar server. Check "
                           "the server URL; your provider's help pages name it (for example "
                           "https://cloud.example.com/remote.php/dav/).",
    ("icloud", NotCaldav): "iCloud's calendar server gave an answer calsync does not "
                           "understand; try again in a few minutes.",
    ("caldav", Unreachable): "The server could not be reached, or kept answering with "
                             "errors. Check the server URL for typos and that the server "
                             "is online.",
    ("icloud", Unreachable): "iCloud's calendar server could not be reached; try again in a "
                             "few minutes.",
}
_SECRET_FIELD = {"caldav": "password", "icloud": "app_password"}


def _required(record: str, field: str, value: Any, limit: int = 320) -> str:
    """A non-empty string field; the error never repeats the value (it may be a secret)."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(record, field, "is required")
    if len(value) > limit or "\x00" in value or "\n" in value:
        raise ValidationError(record, field, f"must be one line of at most {limit} characters")
    return value


def check_server_url(record: str, url: Any) -> str:
    """An http(s) URL with a host, and no password inside it (credentials have fields of
    their own and are stored encrypted; a URL is stored as it is)."""
    text = _required(record, "url", url, limit=2000).strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(record, "url", "must be a server address starting with "
                                             "https:// (or http://)")
    if parts.username or parts.password:
        raise ValidationError(record, "url", "must not contain a username or password; "
                                             "give them in their own fields")
    return text


def verify_account(ctx: ConnectContext) -> tuple[ConnectContext, list[Any]]:
    """``factory.verify(ctx)`` with the connect-time errors (AuthFailed, NotCaldav,
    Unreachable) put in words a technician understands, naming the field to fix. Used by
    the API, the pages and ``calsync connect``."""
    factory = load_connector_factory(ctx.provider)
    try:
        try:
            return factory.verify(ctx)
        except ProviderUnavailable as exc:  # 5xx or timeouts that outlasted the retries
            raise Unreachable(f"the server answered with errors: {exc.message}") from exc
    except ConnectFailed as exc:
        kind = type(exc)
        advice = next((text for (provider, cls), text in _ADVICE.items()
                       if provider == ctx.provider and issubclass(kind, cls)), "")
        if issubclass(kind, AuthFailed):
            field = _SECRET_FIELD.get(ctx.provider, "password")
        elif ctx.provider == "icloud":
            field = ""  # iCloud's address is not the technician's to fix
        else:
            field = exc.field or "url"
        message = f"{advice} ({exc.message})" if advice else exc.message
        raise kind(message, field=field, advice=advice) from exc


def _store(settings: Settings, db: Database, user_id: str, viewer: Viewer,
           ctx: ConnectContext, now: dt.datetime) -> dict[str, Any]:
    ctx, calendars = verify_account(ctx)
    conn_id, created = save_connection(settings, db, user_id, ctx, calendars, now,
                                       actor=viewer.actor)
    with db.read_session() as s:
        conn = s.get(Connection, conn_id)
        assert conn is not None
        return {**connection_view(s, conn), "created": created}


def _check_user(db: Database, user_id: str, viewer: Viewer) -> None:
    require_change(viewer, user_id)
    with db.read_session() as s:
        live_user(s, user_id)


def connect_caldav(settings: Settings, db: Database, user_id: str, viewer: Viewer, *,
                   url: Any, username: Any, password: Any, now: dt.datetime,
                   http: Any = None) -> dict[str, Any]:
    """Link ``user_id``'s account on any CalDAV server: the credentials are tried and the
    calendars discovered before anything is stored (a reconnect of the same account on the
    same server replaces its credentials). Returns the connection plus ``"created"``
    (False for a reconnect); its calendars start ``ignored``. ``http`` is an injected
    transport (tests). Raises AuthFailed (field ``password``), NotCaldav / Unreachable
    (field ``url``), ValidationError for a missing or malformed field."""
    record = "connection"
    url = check_server_url(record, url)
    username = _required(record, "username", username)
    password = _required(record, "password", password, limit=1000)
    _check_user(db, user_id, viewer)
    ctx = ConnectContext(provider="caldav", url=url, account=username,
                         credentials={"username": username, "password": password},
                         settings=settings, http=http)
    return _store(settings, db, user_id, viewer, ctx, now)


def connect_icloud(settings: Settings, db: Database, user_id: str, viewer: Viewer, *,
                   apple_id: Any, app_password: Any, now: dt.datetime,
                   http: Any = None) -> dict[str, Any]:
    """Link ``user_id``'s iCloud calendars with an Apple ID and an app-specific password
    (discovery starts at ``[icloud] url``). Returns as :func:`connect_caldav`. Raises
    AuthFailed (field ``app_password``), NotCaldav / Unreachable, ValidationError."""
    record = "connection"
    apple_id = _required(record, "apple_id", apple_id).strip()
    app_password = _required(record, "app_password", app_password, limit=1000).strip()
    _check_user(db, user_id, viewer)
    ctx = ConnectContext(provider="icloud", url=settings.icloud.url, account=apple_id,
                         credentials={"username": apple_id, "password": app_password},
                         settings=settings, http=http)
    return _store(settings, db, user_id, viewer, ctx, now)


def connect_ics(settings: Settings, db: Database, user_id: str, viewer: Viewer, *,
                url: Any, now: dt.datetime, http: Any = None) -> dict[str, Any]:
    """Subscribe ``user_id`` to an ``.ics`` feed (DESIGN 6.2): fetched once to check it is
    iCalendar, stored with its address sealed, its one calendar a read-only ``conflict``
    calendar due at once. Returns as :func:`connect_caldav`. Raises ConnectFailed (field
    ``url``) when the address does not answer or not with iCalendar, ValidationError."""
    from calsync.sync.subscriptions import subscribe_feed

    address = _required("connection", "url", url, limit=2000).strip()
    _check_user(db, user_id, viewer)
    result = subscribe_feed(settings, db, user_id, address, now, actor=viewer.actor,
                            http=http)
    with db.session() as s:
        conn = s.scalar(select(Connection).where(Connection.public_id == result["id"]))
        assert conn is not None
        notify_in(s)
        view = {**connection_view(s, conn), "created": result["created"]}
    wake_local()
    return view


# --- calendars --------------------------------------------------------------------------

def _user_calendars(s: Session, user_id: str) -> list[tuple[Calendar, Connection]]:
    rows = s.execute(select(Calendar, Connection).join(Connection)
                     .where(Connection.user_id == user_id)
                     .order_by(Connection.id, Calendar.id)).all()
    return [(r[0], r[1]) for r in rows]


def _roles_view(rows: list[tuple[Calendar, Connection]]) -> dict[str, Any]:
    primary = next((c.public_id for c, _ in rows if c.role == "primary"), None)
    return {"primary": primary,
            "conflict": [c.public_id for c, _ in rows if c.role == "conflict"],
            "calendars": [{**calendar_view(c), "connection": conn.public_id}
                          for c, conn in rows]}


def list_calendars(s: Session, user_id: str, viewer: Viewer) -> dict[str, Any]:
    """``{"primary": CAL|None, "conflict": [CAL…], "calendars": [calendar + "connection"]}``
    over all of the user's connections."""
    require_read(viewer, user_id)
    live_user(s, user_id)
    return _roles_view(_user_calendars(s, user_id))


def set_calendars(db: Database, user_id: str, viewer: Viewer, *, primary: Any,
                  conflict: Any, now: dt.datetime, wake: Wake | None = None) -> dict[str, Any]:
    """Choose the user's primary calendar (``cal_…`` or None for none) and conflict calendars
    (a list of ``cal_…``); every other calendar becomes ``ignored``. Each connection that
    holds a chosen calendar or whose roles changed is due at once (``next_sync_at = now``)
    and the sync workers are woken after the commit (``wake``). Returns the roles now, as
    :func:`list_calendars`. ValidationError (422) for an id that is not one of this user's
    calendars, a read-only or gone primary, a calendar named twice or both primary and
    conflict."""
    record = "calendars"
    require_change(viewer, user_id)
    if primary is not None and not isinstance(primary, str):
        raise ValidationError(record, "primary", "expected a calendar id (cal_…) or null")
    if not isinstance(conflict, list) or not all(isinstance(c, str) for c in conflict):
        raise ValidationError(record, "conflict", "expected a list of calendar ids (cal_…)")
    with db.session() as s:
        live_user(s, user_id)
        rows = _user_calendars(s, user_id)
        by_id = {c.public_id: (c, conn) for c, conn in rows}

        def pick(field: str, ref: str) -> Calendar:
            if ref not in by_id:
                raise ValidationError(record, field, f"{ref!r} is not one of the calendars of "
                                                     f"user {user_id!r}")
            return by_id[ref][0]

        prim = pick("primary", primary) if primary is not None else None
        if prim is not None and prim.read_only:
            raise ValidationError(record, "primary", f"calendar {prim.public_id} "
                                  f"({prim.name!r}) is read-only; choose it as a conflict "
                                  f"calendar instead")
        if prim is not None and prim.status == "gone" and prim.role != "primary":
            raise ValidationError(record, "primary", f"calendar {prim.public_id} no longer "
                                                     f"exists on the server")
        chosen: list[Calendar] = []
        for i, ref in enumerate(conflict):
            cal = pick(f"conflict[{i}]", ref)
            if cal in chosen:
                raise ValidationError(record, f"conflict[{i}]", f"{ref!r} is named twice")
            if prim is not None and cal.id == prim.id:
                raise ValidationError(record, f"conflict[{i}]", f"{ref!r} is the primary "
                                      f"calendar; a calendar is either primary or conflict")
            chosen.append(cal)
        conflict_ids = {c.id for c in chosen}
        queued: set[int] = set()
        for cal, conn in rows:
            role = "primary" if prim is not None and cal.id == prim.id else \
                "conflict" if cal.id in conflict_ids else "ignored"
            if role != cal.role:
                cal.role = role
                queued.add(conn.id)
            if role != "ignored":
                queued.add(conn.id)
        for _cal, conn in rows:
            if conn.id in queued:
                conn.next_sync_at = now
        if queued:
            notify_in(s)  # workers of other processes (PostgreSQL), on commit
        view = _roles_view(rows)
        audit(s, viewer.actor, "calendars.set", "user", user_id,
              {"primary": view["primary"], "conflict": view["conflict"]}, at=now)
    if queued:
        (wake or wake_local)()
    return view


# --- refresh, sync, disconnect ---------------------------------------------------------

def _open(settings: Settings, conn: Connection, http: Any) -> Connector:
    from calsync.sync.runner import connect_context

    ctx = connect_context(settings, conn)
    if http is not None:
        ctx.http = http
    return load_connector_factory(conn.provider).connect(ctx)


def _mark_needs_reauth(db: Database, connection_id: int, exc: NeedsReauth,
                       now: dt.datetime) -> ReconnectNeeded:
    with db.session() as s:
        conn = s.get(Connection, connection_id)
        if conn is not None:
            conn.status, conn.last_error, conn.updated_at = "needs_reauth", exc.message, now
    return ReconnectNeeded(f"the provider no longer accepts this connection's sign-in; "
                           f"reconnect the account ({exc.message})")


def refresh_connection(settings: Settings, db: Database, connection_id: str, viewer: Viewer,
                       now: dt.datetime, http: Any = None) -> dict[str, Any]:
    """Discover the connection's calendars again through the stored credentials: new ones
    appear ``ignored``, vanished unused ones are dropped, vanished used ones are marked
    ``gone``. Returns the connection plus ``"added"``, ``"removed"``, ``"gone"`` (lists of
    ``{"id", "name", …}``). ReconnectNeeded (409) when the provider refuses the sign-in;
    a provider that fails otherwise raises its ProviderError (502/503)."""
    with db.read_session() as s:
        conn = connection_by_public_id(s, connection_id, viewer, change=True)
        conn_pk = conn.id
        connector = _open(settings, conn, http)
    try:
        listed = connector.list_calendars()
    except NeedsReauth as exc:
        raise _mark_needs_reauth(db, conn_pk, exc, now) from exc
    finally:
        connector.close()
    with db.session() as s:
        current = s.get(Connection, conn_pk)
        if current is None:
            raise ConnectionBusy(f"connection {connection_id} was removed meanwhile")
        report = merge_calendars(s, current, listed, now)
        audit(s, viewer.actor, "connection.refresh", "connection", connection_id,
              {k: v for k, v in report.items() if k != "connection"}, at=now)
        s.flush()
        return {**connection_view(s, current),
                **{k: v for k, v in report.items() if k != "connection"}}


def request_sync(db: Database, connection_id: str, viewer: Viewer, now: dt.datetime,
                 wake: Wake | None = None) -> dict[str, Any]:
    """Queue a sync of the connection at once (``next_sync_at = now``; workers woken).
    Returns ``{"id", "queued": true, "next_sync_at"}``. ReconnectNeeded (409) when the
    connection needs re-authentication (the worker skips it until reconnected)."""
    with db.session() as s:
        conn = connection_by_public_id(s, connection_id, viewer, change=True)
        if conn.status == "needs_reauth":
            raise ReconnectNeeded(f"connection {connection_id} needs the user to sign in "
                                  f"again before it can sync; reconnect the account")
        conn.next_sync_at = now
        notify_in(s)
        audit(s, viewer.actor, "connection.sync_requested", "connection", connection_id,
              at=now)
    (wake or wake_local)()
    return {"id": connection_id, "queued": True, "next_sync_at": now.isoformat()}


def _remove_copies(settings: Settings, db: Database, conn_pk: int, connection_id: str,
                   http: Any) -> int:
    """Delete every copy calsync wrote through this connection (its links' remote objects),
    dropping each link as its copy goes. Returns the count; raises CopiesLeft when some
    could not be deleted."""
    with db.read_session() as s:
        conn = s.get(Connection, conn_pk)
        assert conn is not None
        targets = [(link.id, cal.remote_id, link.remote_id) for link, cal in s.execute(
            select(Link, Calendar).join(Calendar, Link.calendar_id == Calendar.id)
            .where(Calendar.connection_id == conn_pk).order_by(Link.id)).tuples()]
        connector = _open(settings, conn, http) if targets else None
    if connector is None:
        return 0
    removed: list[int] = []
    failure: CalsyncError | None = None
    try:
        for link_id, calendar_remote_id, remote_id in targets:
            try:
                # No If-Match: the copy goes whatever was edited in it since.
                connector.delete(calendar_remote_id, remote_id, None)
            except CalsyncError as exc:
                failure = exc
                break
            removed.append(link_id)
    finally:
        connector.close()
        if removed:
            with db.session() as s:
                for link_id in removed:
                    link = s.get(Link, link_id)
                    if link is not None:
                        s.delete(link)
    if failure is not None:
        left = len(targets) - len(removed)
        what = ("the provider no longer accepts the sign-in; reconnect the account first"
                if isinstance(failure, NeedsReauth) else failure.message)
        raise CopiesLeft(f"{left} of calsync's copies could not be removed from the calendars "
                         f"of connection {connection_id}: {what}; try again, or disconnect "
                         f"without removing copies (remove_copies=false)")
    return len(removed)


def _revoke(settings: Settings, conn: Connection, http: Any) -> bool:
    """Ask the provider to revoke the stored sign-in, where its factory can
    (``revoke(ctx) -> bool``). A failure is logged and the disconnect goes on."""
    from calsync.sync.runner import connect_context

    factory = load_connector_factory(conn.provider)
    hook = getattr(factory, "revoke", None)
    if hook is None:
        return False
    ctx = connect_context(settings, conn)
    if http is not None:
        ctx.http = http
    try:
        return bool(hook(ctx))
    except CalsyncError as exc:
        log.warning("connection %s: the provider did not revoke its sign-in: %s",
                    conn.public_id, exc.message)
        return False


def disconnect(settings: Settings, db: Database, connection_id: str, viewer: Viewer, *,
               remove_copies: bool, now: dt.datetime, http: Any = None,
               worker_id: str | None = None) -> dict[str, Any]:
    """Disconnect: with ``remove_copies``, first delete calsync's copies (jobs, time off,
    blocks) from the connection's calendars; then revoke the provider's sign-in where it
    allows, and delete the connection with its stored secrets, calendars, links and
    external busy blocks. Holds the connection's sync lease meanwhile. Returns ``{"id",
    "removed": true, "copies_removed": n, "revoked": bool}``. ConnectionBusy (409) while a
    worker syncs it; CopiesLeft (409) when copies could not be removed (then nothing else
    was dropped)."""
    from calsync.sync.runner import claim_connection, default_worker_id, release_connection

    with db.read_session() as s:
        conn = connection_by_public_id(s, connection_id, viewer, change=True)
        conn_pk, user_id = conn.id, conn.user_id
    owner = worker_id or default_worker_id()
    if not claim_connection(db, conn_pk, owner, now, settings.sync.lease_seconds):
        raise ConnectionBusy(f"connection {connection_id} is being synced right now; try "
                             f"again in a minute")
    try:
        copies = _remove_copies(settings, db, conn_pk, connection_id, http) \
            if remove_copies else 0
        with db.read_session() as s:
            stored = s.get(Connection, conn_pk)
            assert stored is not None
            revoked = _revoke(settings, stored, http)
        with db.session() as s:
            gone = s.get(Connection, conn_pk)
            if gone is not None:
                provider, account = gone.provider, gone.account
                if gone.tenant_id is not None:  # made by an organisation's onboarding
                    from calsync.sync.tenants import leave_out

                    leave_out(s, gone.tenant_id, gone.user_id)
                s.delete(gone)  # calendars, links, external events and busy go with it
                audit(s, viewer.actor, "connection.delete", "connection", connection_id,
                      {"user": user_id, "provider": provider, "account": account,
                       "remove_copies": remove_copies, "copies_removed": copies,
                       "revoked": revoked}, at=now)
    finally:
        release_connection(db, conn_pk, owner)  # no-op once the row is gone
    return {"id": connection_id, "removed": True, "copies_removed": copies,
            "revoked": revoked}
