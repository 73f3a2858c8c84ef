"""The sync CLI: ``connect``, ``calendars``, ``connections``, ``sync`` and ``secrets rotate``.

Connections and calendars are named by their public ids (``con_…``, ``cal_…``), which
every command prints and takes; internal row numbers are never shown.

``cli.py`` calls :func:`register` with the root group.

Adding a ``connect`` subcommand (Outlook, Google, any provider): either call
:func:`add_connect_command` with a click command from a module registered in ``cli.py``'s
``_register_subsystem_commands`` (it runs after this one), or look the group up with
``cli.commands["connect"]`` and ``add_command`` to it. To store what the provider's factory
verified, call :func:`save_connection` (credentials sealed with ``CredentialBox``; calendars
start as ``ignored`` until ``calsync calendars set``), or :func:`connect_account` to run
``factory.verify(ctx)`` and then store.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable
from typing import Any

import click
from cryptography.fernet import InvalidToken
from sqlalchemy import select

from calsync.audit import audit
from calsync.config import Settings
from calsync.db.models import Calendar, Connection, OAuthState, Tenant, User
from calsync.db.session import Database
from calsync.errors import CalsyncError, NotFound, UserError
from calsync.secrets import CredentialBox
from calsync.sync.connections import GONE_ADVICE, merge_calendars, save_connection
from calsync.sync.connector import ConnectContext, RemoteCalendar


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _app(ctx: click.Context) -> Any:
    return ctx.find_root().obj  # calsync.cli.AppContext


def _emit(obj: Any, as_json: bool, text: str) -> None:
    click.echo(json.dumps(obj, indent=2, default=str, ensure_ascii=False) if as_json else text)


def _user(db: Database, user_id: str) -> None:
    with db.read_session() as s:
        user = s.get(User, user_id)
        if user is None or user.deleted_at is not None:
            raise NotFound(f"user {user_id!r} not found")


def _read_secret(flag: bool, option: str, what: str) -> str:
    if not flag:
        raise UserError(f"give the {what} on standard input with {option} "
                        f"(it is never taken as an argument)")
    value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise UserError(f"{option}: no {what} on standard input")
    return value


# --- storing connections --------------------------------------------------------------------

def connect_account(settings: Settings, db: Database, user_id: str, ctx: ConnectContext,
                    now: dt.datetime, actor: str = "cli:connect") -> dict[str, Any]:
    """Verify ``ctx`` with its provider's factory (a wrong password or URL raises UserError,
    in the same words as the self-service API) and store the connection. Returns a summary
    for printing (:func:`connection_summary`)."""
    from calsync.selfservice.connections import verify_account

    _user(db, user_id)
    ctx, calendars = verify_account(ctx)
    conn_id, created = save_connection(settings, db, user_id, ctx, calendars, now, actor)
    return connection_summary(db, conn_id, created, calendars)


def connection_summary(db: Database, conn_id: int, created: bool,
                       calendars: list[RemoteCalendar]) -> dict[str, Any]:
    """What ``connect`` reports: the connection's public id (``con_…``) and the public ids
    (``cal_…``) of the calendars just discovered, in the provider's order. ``connection_id``
    is the internal number, for callers in this process; it is not printed."""
    with db.read_session() as s:
        conn = s.get(Connection, conn_id)
        if conn is None:
            raise NotFound(f"connection {conn_id} vanished while it was being saved")
        rows = {c.remote_id: c for c in s.scalars(
            select(Calendar).where(Calendar.connection_id == conn_id))}
        listed = [rows[c.id] for c in calendars if c.supports_events and c.id in rows]
        return {"id": conn.public_id, "connection_id": conn.id, "provider": conn.provider,
                "account": conn.account, "created": created,
                "calendars": [{"id": c.public_id, "remote_id": c.remote_id, "name": c.name,
                               "read_only": c.read_only} for c in listed]}


def print_connected(summary: dict[str, Any], user: str, as_json: bool) -> None:
    if as_json:
        _emit({k: v for k, v in summary.items() if k != "connection_id"}, True, "")
        return
    verb = "connected" if summary["created"] else "reconnected"
    click.echo(f"{summary['provider']} account {summary['account']} {verb} for {user} "
               f"(connection {summary['id']}); calendars:")
    for cal in summary["calendars"]:
        ro = " (read-only)" if cal["read_only"] else ""
        click.echo(f"  {cal['id']}  {cal['name']}{ro}")
    click.echo(f"choose them with: calsync calendars set {user} --primary CAL "
               f"[--conflict CAL ...]")


# --- connect --------------------------------------------------------------------------------

@click.group("connect")
def connect_group() -> None:
    """Link an external calendar account."""


def add_connect_command(cmd: click.Command) -> None:
    """Add ``calsync connect <name>`` (e.g. outlook, google)."""
    connect_group.add_command(cmd)


@connect_group.command("caldav")
@click.argument("user")
@click.option("--url", required=True, help="The CalDAV server or calendar home URL.")
@click.option("--username", required=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def connect_caldav(ctx: click.Context, user: str, url: str, username: str,
                   password_stdin: bool, as_json: bool) -> None:
    """Link USER's CalDAV account (Nextcloud, Fastmail, Radicale, ...)."""
    app = _app(ctx)
    password = _read_secret(password_stdin, "--password-stdin", "password")
    cctx = ConnectContext(provider="caldav", url=url, account=username,
                          credentials={"username": username, "password": password},
                          settings=app.settings)
    print_connected(connect_account(app.settings, app.migrated_db(), user, cctx, _now()),
                     user, as_json)


@connect_group.command("icloud")
@click.argument("user")
@click.option("--apple-id", required=True, help="The Apple ID (e-mail).")
@click.option("--app-password-stdin", is_flag=True,
              help="Read the app-specific password from stdin.")
@click.option("--url", default=None, help="Default: [icloud] url (https://caldav.icloud.com/).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def connect_icloud(ctx: click.Context, user: str, apple_id: str, app_password_stdin: bool,
                   url: str | None, as_json: bool) -> None:
    """Link USER's iCloud calendars with an app-specific password."""
    app = _app(ctx)
    password = _read_secret(app_password_stdin, "--app-password-stdin", "app-specific password")
    cctx = ConnectContext(provider="icloud", url=url or app.settings.icloud.url,
                          account=apple_id,
                          credentials={"username": apple_id, "password": password},
                          settings=app.settings)
    print_connected(connect_account(app.settings, app.migrated_db(), user, cctx, _now()),
                     user, as_json)


@connect_group.command("memory")
@click.argument("user")
@click.option("--server", default="default", help="Name of the in-process memory server.")
@click.option("--account", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def connect_memory(ctx: click.Context, user: str, server: str, account: str | None,
                   as_json: bool) -> None:
    """Link USER to the in-memory provider (demos and tests; lives in this process)."""
    app = _app(ctx)
    cctx = ConnectContext(provider="memory", url=server, account=account or f"{user}@memory",
                          credentials={}, settings=app.settings)
    print_connected(connect_account(app.settings, app.migrated_db(), user, cctx, _now()),
                     user, as_json)


# --- calendars ------------------------------------------------------------------------------

@click.group("calendars")
def calendars_group() -> None:
    """Remote calendars of a user's connections: list, set roles, refresh, confirm-empty."""


def _user_calendars(s: Any, user_id: str) -> list[tuple[Calendar, Connection]]:
    user = s.get(User, user_id)
    if user is None or user.deleted_at is not None:
        raise NotFound(f"user {user_id!r} not found")
    rows = s.execute(select(Calendar, Connection).join(Connection)
                     .where(Connection.user_id == user_id)
                     .order_by(Connection.id, Calendar.id)).all()
    return [(r[0], r[1]) for r in rows]


def _resolve(rows: list[tuple[Calendar, Connection]], ref: str, user_id: str) -> Calendar:
    """A calendar by public id (``cal_…``), remote id or exact name."""
    keys: list[Callable[[Calendar], str]] = [lambda c: c.public_id, lambda c: c.remote_id,
                                             lambda c: c.name]
    for key in keys:
        found = [c for c, _ in rows if key(c) == ref]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise UserError(f"{ref!r} names {len(found)} calendars of {user_id}; "
                            f"use the id from `calsync calendars list {user_id}`")
    raise NotFound(f"user {user_id} has no calendar {ref!r}; "
                   f"see `calsync calendars list {user_id}`")


def _calendar_line(c: Calendar, conn: Connection) -> str:
    status = c.status + (": " + c.last_error if c.last_error else "")
    return (f"{c.public_id}  {c.name!r}  {c.role}{' read-only' if c.read_only else ''}"
            f"  [{conn.public_id} {conn.provider} {conn.account}; {status}]")


@calendars_group.command("list")
@click.argument("user")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def calendars_list(ctx: click.Context, user: str, as_json: bool) -> None:
    """Show USER's remote calendars with their ids and roles."""
    with _app(ctx).migrated_db().read_session() as s:
        rows = _user_calendars(s, user)
        data = [{"id": c.public_id, "name": c.name, "role": c.role, "read_only": c.read_only}
                for c, _ in rows]
        lines = [_calendar_line(c, conn) for c, conn in rows]
    _emit(data, as_json, "\n".join(lines) if lines else f"{user} has no connected calendars")


@calendars_group.command("set")
@click.argument("user")
@click.option("--primary", default=None, metavar="CAL",
              help="Where USER's jobs, time off and blocks are written (and read).")
@click.option("--no-primary", is_flag=True,
              help="Write USER's schedule to no calendar (the primary becomes ignored).")
@click.option("--conflict", multiple=True, metavar="CAL",
              help="Read-only busy source (repeatable); replaces the conflict calendars.")
@click.option("--no-conflict", is_flag=True, help="Check no calendars for conflicts.")
@click.pass_context
def calendars_set(ctx: click.Context, user: str, primary: str | None, no_primary: bool,
                  conflict: tuple[str, ...], no_conflict: bool) -> None:
    """Choose USER's primary calendar and conflict calendars (ids from `calendars list`).

    Each option changes only its own role: --conflict alone keeps the primary, --primary
    alone keeps the conflict calendars; --no-primary and --no-conflict drop them."""
    if primary is not None and no_primary:
        raise UserError("give --primary CAL or --no-primary, not both")
    if conflict and no_conflict:
        raise UserError("give --conflict CAL or --no-conflict, not both")
    if primary is None and not no_primary and not conflict and not no_conflict:
        raise UserError("nothing to change: give --primary CAL, --conflict CAL, "
                        "--no-primary or --no-conflict")
    now = _now()
    with _app(ctx).migrated_db().session() as s:
        rows = _user_calendars(s, user)
        current = next((c for c, _ in rows if c.role == "primary"), None)
        confl = [_resolve(rows, ref, user) for ref in conflict]
        if no_primary:
            prim = None
        elif primary is not None:
            prim = _resolve(rows, primary, user)
        else:
            prim = current
            if prim is not None and any(c.id == prim.id for c in confl):
                raise UserError(f"calendar {prim.public_id} ({prim.name!r}) is the primary; "
                                f"to check it for conflicts instead, also give --no-primary "
                                f"or another --primary")
        if prim is not None and prim.read_only:
            raise UserError(f"calendar {prim.name!r} is read-only and cannot be primary; "
                            f"use it with --conflict")
        if prim is not None and any(c.id == prim.id for c in confl):
            raise UserError(f"calendar {prim.name!r} cannot be both primary and conflict")
        conflict_ids = ({c.id for c in confl} if conflict or no_conflict else
                        {c.id for c, _ in rows if c.role == "conflict"})
        for cal, conn in rows:
            role = "primary" if prim is not None and cal.id == prim.id else \
                "conflict" if cal.id in conflict_ids else "ignored"
            if role != cal.role:
                cal.role = role
                conn.next_sync_at = now
        audit(s, "cli", "calendars.set", "user", user,
              {"primary": prim.public_id if prim else None,
               "conflict": sorted(c.public_id for c, _ in rows if c.role == "conflict")},
              at=now)
        summary = [f"{c.public_id}  {c.name!r}  {c.role}" for c, _ in rows]
        if prim is None:
            summary.append(f"{user} has no primary calendar: their jobs, time off and blocks "
                           f"are written to no calendar")
    click.echo("\n".join(summary))


@calendars_group.command("refresh")
@click.argument("user")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def calendars_refresh(ctx: click.Context, user: str, as_json: bool) -> None:
    """Discover USER's calendars again through the stored credentials: new ones appear as
    ignored, vanished ones are reported (and dropped when no role used them)."""
    from calsync.sync.runner import build_connector

    app = _app(ctx)
    db = app.migrated_db()
    _user(db, user)
    # Read, then ask the servers, then write: no database lock is held across the network.
    with db.read_session() as s:
        conns = list(s.scalars(select(Connection).where(Connection.user_id == user)
                               .order_by(Connection.id)))
        if not conns:
            raise NotFound(f"user {user} has no connections; link one with `calsync connect`")
        targets = [(conn.id, conn.public_id, f"{conn.provider} {conn.account}", conn)
                   for conn in conns]
        connectors: dict[int, Any] = {}
        build_errors: dict[int, CalsyncError] = {}
        for conn in conns:
            try:
                connectors[conn.id] = build_connector(app.settings, conn)
            except CalsyncError as exc:  # e.g. credentials that no longer open
                build_errors[conn.id] = exc
    listings: dict[int, list[RemoteCalendar]] = {}
    report: list[dict[str, Any]] = []
    failures: list[str] = []
    for conn_id, public_id, label, _conn in targets:
        try:
            if conn_id in build_errors:
                raise build_errors[conn_id]
            listings[conn_id] = connectors[conn_id].list_calendars()
        except CalsyncError as exc:
            failures.append(f"connection {public_id} ({label}): {exc.message}")
            report.append({"connection": public_id, "error": exc.message,
                           "added": [], "removed": [], "gone": []})
    now = _now()
    with db.session() as s:
        for conn_id, listed in listings.items():
            conn = s.get(Connection, conn_id)
            if conn is not None:
                report.append(merge_calendars(s, conn, listed, now))
        audit(s, "cli", "calendars.refresh", "user", user,
              {"connections": [{k: v for k, v in r.items() if k != "error"} for r in report]},
              at=now)
    order = {public_id: i for i, (_c, public_id, _l, _k) in enumerate(targets)}
    report.sort(key=lambda r: order.get(r["connection"], len(order)))
    if as_json:
        _emit(report, True, "")
    else:
        for r in report:
            if r.get("error"):
                continue
            click.echo(f"connection {r['connection']}: {len(r['added'])} new, "
                       f"{len(r['removed'])} removed, {len(r['gone'])} gone")
            for c in r["added"]:
                click.echo(f"  new      {c['id']}  {c['name']!r}"
                           f"{' read-only' if c['read_only'] else ''} (ignored)")
            for c in r["removed"]:
                click.echo(f"  removed  {c['id']}  {c['name']!r}")
            for c in r["gone"]:
                click.echo(f"  gone     {c['id']}  {c['name']!r} was {c['role']}: "
                           f"{GONE_ADVICE}")
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise UserError(f"could not list the calendars of {failures[0]}{more}")


@calendars_group.command("confirm-empty")
@click.argument("user")
@click.argument("cal")
@click.pass_context
def calendars_confirm_empty(ctx: click.Context, user: str, cal: str) -> None:
    """Confirm that calendar CAL really is empty, so sync of it resumes."""
    now = _now()
    with _app(ctx).migrated_db().session() as s:
        rows = _user_calendars(s, user)
        row = _resolve(rows, cal, user)
        row.empty_confirmed = True
        row.last_error = None
        if row.status == "guarded":
            row.status = "ok"
        conn = next(c for k, c in rows if k.id == row.id)
        conn.next_sync_at = now
        audit(s, "cli", "calendar.confirm_empty", "calendar", row.public_id,
              {"user": user, "calendar": row.remote_id}, at=now)
        name = row.name
    click.echo(f"calendar {name!r} confirmed empty; it syncs again at the next run")


# --- connections ----------------------------------------------------------------------------

@click.group("connections")
def connections_group() -> None:
    """Linked accounts and their health."""


@connections_group.command("list")
@click.option("--user", "user_id", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def connections_list(ctx: click.Context, user_id: str | None, as_json: bool) -> None:
    """Each connection with provider, status, last sync and last error, and each of its
    calendars that is not ok (in error, guarded, or gone) with what to do."""
    with _app(ctx).migrated_db().read_session() as s:
        q = select(Connection).order_by(Connection.user_id, Connection.id)
        if user_id is not None:
            if s.get(User, user_id) is None:
                raise NotFound(f"user {user_id!r} not found")
            q = q.where(Connection.user_id == user_id)
        data = []
        tenants = {t.id: t.public_id for t in s.scalars(select(Tenant))}
        for conn in s.scalars(q):
            cals = s.scalars(select(Calendar).where(Calendar.connection_id == conn.id)
                             .order_by(Calendar.id)).all()
            data.append({
                "id": conn.public_id, "user": conn.user_id, "provider": conn.provider,
                "account": conn.account, "status": conn.status,
                # the organisation-wide connection it comes through (org_…), if any
                "tenant": tenants.get(conn.tenant_id) if conn.tenant_id else None,
                "last_sync_at": conn.last_sync_at.isoformat() if conn.last_sync_at else None,
                "last_success_at": (conn.last_success_at.isoformat()
                                    if conn.last_success_at else None),
                "last_error": conn.last_error,
                "calendars": [{"id": c.public_id, "name": c.name, "role": c.role,
                               "status": c.status, "last_error": c.last_error}
                              for c in cals if c.role != "ignored" or c.status != "ok"],
            })
    lines = []
    for d in data:
        via = f" (via {d['tenant']})" if d["tenant"] else ""
        lines.append(f"{d['id']}  {d['user']}  {d['provider']}{via}  {d['account']}  "
                     f"{d['status']}  "
                     f"last sync {d['last_sync_at'] or 'never'}"
                     f"{'  error: ' + d['last_error'] if d['last_error'] else ''}")
        lines += [f"  calendar {c['id']}  {c['name']!r}  {c['status']}"
                  f"{': ' + c['last_error'] if c['last_error'] else ''}"
                  for c in d["calendars"] if c["status"] != "ok"]
    _emit(data, as_json, "\n".join(lines) if lines else "no connections")


@connections_group.command("disconnect")
@click.argument("connection")
@click.option("--remove-copies", is_flag=True,
              help="First delete calsync's copies (jobs, time off, blocks) from the "
                   "connection's calendars.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def connections_disconnect(ctx: click.Context, connection: str, remove_copies: bool,
                           as_json: bool) -> None:
    """Disconnect CONNECTION (con_… from `connections list`): its sign-in revoked where the
    provider allows, stored secrets, calendars and busy blocks deleted."""
    from calsync.selfservice.access import Operator
    from calsync.selfservice.connections import disconnect

    app = _app(ctx)
    result = disconnect(app.settings, app.migrated_db(), connection, Operator(),
                        remove_copies=remove_copies, now=_now())
    copies = (f"; {result['copies_removed']} of calsync's copies removed" if remove_copies
              else "; calsync's copies stay in the calendars")
    revoked = "; sign-in revoked at the provider" if result["revoked"] else ""
    _emit(result, as_json, f"connection {connection} disconnected{copies}{revoked}")


# --- sync -----------------------------------------------------------------------------------

def _summary_line(r: Any) -> str:
    t = r.totals()
    extra = ", ".join(f"{n} {k}" for k, n in sorted(t.items())
                      if n and k not in ("created", "updated", "deleted", "imported"))
    if r.status == "busy":
        return (f"connection {r.public_id or r.connection_id}: skipped, another worker is "
                f"syncing it right now: {r.error}")
    line = (f"connection {r.public_id} ({r.provider}, {r.user_id}): {r.status}: "
            f"{t['created']} created, {t['updated']} updated, {t['deleted']} deleted, "
            f"{t['imported']} imported" + (f", {extra}" if extra else ""))
    return line + (f"; {r.error}" if r.error else "")


@click.command("sync")
@click.option("--user", "user_id", default=None, help="Only this user's connections.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def sync_cmd(ctx: click.Context, user_id: str | None, as_json: bool) -> None:
    """Sync now (all connections, or USER's), with a progress bar and a summary."""
    from calsync.sync.runner import sync_connection

    app = _app(ctx)
    db = app.migrated_db()
    with db.session() as s:
        q = select(Connection.id).order_by(Connection.id)
        if user_id is not None:
            if s.get(User, user_id) is None:
                raise NotFound(f"user {user_id!r} not found")
            q = q.where(Connection.user_id == user_id)
        ids = list(s.scalars(q))
    results = []
    show_bar = not as_json and sys.stdout.isatty() and len(ids) > 0
    bar_file: Any = None if show_bar else _NullFile()
    with click.progressbar(ids, label="syncing", show_pos=True, file=bar_file) as bar:
        for cid in bar:
            results.append(sync_connection(app.settings, db, cid, _now()))
    if as_json:
        _emit([r.as_dict() for r in results], True, "")
    else:
        for r in results:
            click.echo(_summary_line(r))
        if not results:
            click.echo("no connections to sync")
    failed = [r for r in results if r.status not in ("ok", "busy")]
    if results and all(r.status == "busy" for r in results):
        r = results[0]
        more = f" (and {len(results) - 1} more)" if len(results) > 1 else ""
        raise UserError(f"nothing synced: connection {r.public_id or r.connection_id} is "
                        f"leased, "
                        f"{r.error}{more}; try again after the lease ends")
    if failed:
        r = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise UserError(f"sync of connection {r.public_id} ({r.provider}) "
                        f"{r.status}: {r.error or 'see calsync connections list'}{more}")


class _NullFile:
    def write(self, _text: str) -> int:
        return 0

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


# --- secrets --------------------------------------------------------------------------------

@click.group("secrets")
def secrets_group() -> None:
    """Encryption of stored credentials."""


@secrets_group.command("rotate")
@click.pass_context
def secrets_rotate(ctx: click.Context) -> None:
    """Re-encrypt every stored credential under the current credential key (derived from
    security.secret_key, or security.credential_key when set; old keys must be listed in
    security.previous_secret_keys)."""
    app = _app(ctx)
    box = CredentialBox.from_settings(app.settings)
    count = 0
    with app.migrated_db().session() as s:
        for conn in s.scalars(select(Connection).where(Connection.credentials.is_not(None))):
            assert conn.credentials is not None
            box.open(conn.credentials)  # fails clearly when no configured key opens it
            conn.credentials = box.rotate(conn.credentials)
            count += 1
        for tenant in s.scalars(select(Tenant)):  # organisation-wide secrets and keys
            box.open(tenant.credentials)
            tenant.credentials = box.rotate(tenant.credentials)
            count += 1
        from calsync.db.models import WebhookEndpoint

        for endpoint in s.scalars(select(WebhookEndpoint)):  # webhook signing secrets
            box.open(endpoint.secret)
            endpoint.secret = box.rotate(endpoint.secret)
        for state in s.scalars(select(OAuthState)):
            try:
                state.verifier = box.rotate(state.verifier)
            except InvalidToken:  # a pending sign-in under a dropped key: let it expire
                s.delete(state)
        audit(s, "cli", "secrets.rotate", "connections", "*", {"count": count})
    click.echo(f"re-encrypted the credentials of {count} connection(s) and organisation(s)")


def register(cli: click.Group) -> None:
    for cmd in (connect_group, calendars_group, connections_group, sync_cmd, secrets_group):
        if cmd.name not in cli.commands:
            cli.add_command(cmd)
