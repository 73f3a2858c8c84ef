"""``calsync connect ics`` (a subscribed calendar), the organisation-wide connection
``connect outlook-tenant`` / ``connect google-domain`` (progress bar and summary) and
``tenants list|onboard|remove``.
Registered from ``cli.py`` after :mod:`calsync.sync.commands`."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select

from calsync.config import Settings
from calsync.db.models import Connection, Tenant
from calsync.db.session import Database
from calsync.errors import UserError
from calsync.sync.commands import add_connect_command
from calsync.sync.connector import ConnectContext, RemoteCalendar, load_connector_factory
from calsync.sync.subscriptions import subscribe_feed
from calsync.sync.tenants import (
    find_tenant,
    onboard,
    onboard_all,
    remove_tenant,
    retry_refused,
    save_tenant,
    take_back,
    tenant_connections,
    tenant_overviews,
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _app(ctx: click.Context) -> Any:
    return ctx.find_root().obj  # calsync.cli.AppContext


@click.command("ics")
@click.argument("user")
@click.option("--url", required=True,
              help="The calendar's .ics address (https://, http:// or webcal://).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def connect_ics(ctx: click.Context, user: str, url: str, as_json: bool) -> None:
    """Subscribe USER to a read-only calendar feed (a school timetable, a shift roster, a
    booking site's export): its events block USER's availability."""
    app = _app(ctx)
    summary = subscribe_feed(app.settings, app.migrated_db(), user, url, _now())
    if as_json:
        click.echo(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    verb = "subscribed" if summary["created"] else "subscription refreshed"
    click.echo(f"{user} {verb}: {summary['account']} (connection {summary['id']})")
    for cal in summary["calendars"]:
        click.echo(f"  {cal['id']}  {cal['name']}  {cal['role']} read-only")
    click.echo("its events count as busy from the next sync (calsync sync --user "
               f"{user})")


# --- organisation-wide connections ----------------------------------------------------------

class _NullFile:
    def write(self, _text: str) -> int:
        return 0

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _bar_file(as_json: bool) -> Any:
    return None if not as_json and sys.stdout.isatty() else _NullFile()


def discover_through(settings: Settings) -> Any:
    """``discover(connection)`` for :func:`calsync.sync.tenants.onboard`: the user's calendars
    listed through the tenant's access."""
    from calsync.sync.runner import build_connector

    def discover(conn: Connection) -> list[RemoteCalendar]:
        connector = build_connector(settings, conn)
        try:
            return connector.list_calendars()
        finally:
            connector.close()

    return discover


def _sync_tenant(settings: Settings, db: Database, tenant_id: int,
                 as_json: bool) -> list[Any]:
    from calsync.sync.runner import sync_connection

    with db.read_session() as s:
        ids = [c.id for c in tenant_connections(s, tenant_id) if c.status != "error"]
    results = []
    with click.progressbar(ids, label="syncing", show_pos=True,
                           file=_bar_file(as_json)) as bar:
        for cid in bar:
            results.append(sync_connection(settings, db, cid, _now()))
    return results


def _connect_tenant(ctx: click.Context, provider: str, name: str, creds: dict[str, Any],
                    domains: list[str], as_json: bool, no_sync: bool) -> None:
    app = _app(ctx)
    db = app.migrated_db()
    now = _now()
    tenant_id, created = save_tenant(app.settings, db, provider, name, creds, domains, now)
    with db.read_session() as s:
        tenant = s.get(Tenant, tenant_id)
        assert tenant is not None
        total = len([u for u in _matching(s, tenant)])
    with click.progressbar(length=total, label="connecting users", show_pos=True,
                           file=_bar_file(as_json)) as bar:
        report = onboard(app.settings, db, tenant_id, now, discover_through(app.settings),
                         progress=lambda _u: bar.update(1))
    fixed = retry_refused(app.settings, db, tenant_id, now, discover_through(app.settings))
    results = [] if no_sync else _sync_tenant(app.settings, db, tenant_id, as_json)
    synced_ok = sum(1 for r in results if r.status == "ok")
    failed = [r for r in results if r.status not in ("ok", "busy")]
    summary = {**report.as_dict(), "created": created, "domains": domains,
               "reconnected": fixed, "synced": {"ok": synced_ok, "failed": len(failed)},
               "sync_errors": [{"user": r.user_id, "error": r.error} for r in failed]}
    if as_json:
        click.echo(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    click.echo(f"{provider} organisation {name} ({report.tenant}) "
               f"{'connected' if created else 'updated'}; domains: {', '.join(domains)}")
    click.echo(f"  {report.matched} users match, {len(report.connected)} newly connected, "
               f"{report.already} already connected, {len(report.refused)} refused")
    for user, error in sorted(report.refused.items()):
        click.echo(f"  refused {user}: {error}")
    if report.own:
        click.echo(f"  kept their own sign-in: {', '.join(sorted(report.own))}")
    if not no_sync:
        click.echo(f"  synced: {synced_ok} ok, {len(failed)} failed")
        for r in failed:
            click.echo(f"  sync of {r.user_id} ({r.public_id}): {r.status}: {r.error}")


def _matching(s: Any, tenant: Tenant) -> list[Any]:
    from calsync.sync.tenants import matching_users

    return matching_users(s, tenant)


def _certificate(path: str) -> dict[str, str]:
    """A PEM file with the private key and its certificate -> msal's client credential."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"--certificate {path}: cannot read it ({exc.strerror})") from exc
    try:
        cert = x509.load_pem_x509_certificate(data)
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as exc:
        raise UserError(f"--certificate {path}: expected one PEM file holding the private key "
                        f"(unencrypted) and its certificate") from exc
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    # msal names the certificate by its SHA-256 thumbprint (x5t#S256, PS256) from this
    return {"private_key": pem,
            "public_certificate": cert.public_bytes(serialization.Encoding.PEM).decode()}


@click.command("outlook-tenant")
@click.option("--tenant", "tenant", required=True, help="The Microsoft 365 tenant id (GUID) "
              "or its primary domain.")
@click.option("--client-id", required=True, help="The app registration's client id.")
@click.option("--client-secret-stdin", is_flag=True, help="Read the client secret from stdin.")
@click.option("--certificate", default=None, metavar="PEM",
              help="Instead of a secret: a PEM file with the app's private key and "
                   "certificate.")
@click.option("--no-sync", is_flag=True, help="Connect the users, do not sync them yet.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def connect_outlook_tenant(ctx: click.Context, tenant: str, client_id: str,
                           client_secret_stdin: bool, certificate: str | None, no_sync: bool,
                           as_json: bool) -> None:
    """Connect a whole Microsoft 365 tenant with app-only access (admin consent to the
    application permission Calendars.ReadWrite): every user whose e-mail is in the tenant's
    verified domains is connected and synced, with no sign-in of their own."""
    if certificate and client_secret_stdin:
        raise UserError("give --client-secret-stdin or --certificate, not both")
    creds: dict[str, Any] = {"mode": "app_only", "tenant": tenant, "client_id": client_id}
    if certificate:
        creds["certificate"] = _certificate(certificate)
    else:
        if not client_secret_stdin:
            raise UserError("give the client secret on standard input with "
                            "--client-secret-stdin (it is never taken as an argument), or "
                            "--certificate PEM")
        secret = sys.stdin.readline().rstrip("\r\n")
        if not secret:
            raise UserError("--client-secret-stdin: no client secret on standard input")
        creds["client_secret"] = secret
    app = _app(ctx)
    factory = load_connector_factory("outlook")
    check = ConnectContext(provider="outlook", url=None, account="", credentials=creds,
                           settings=app.settings)
    domains = factory.tenant_domains(check)  # type: ignore[attr-defined]
    _connect_tenant(ctx, "outlook", tenant, creds, domains, as_json, no_sync)


@click.command("google-domain")
@click.option("--domain", required=True, help="The Google Workspace domain (users' e-mail "
              "domain), e.g. example.com.")
@click.option("--service-account-key-file", "key_file", required=True, metavar="FILE",
              help="The service account's JSON key (its client id authorised for the "
                   "Calendar scope under domain-wide delegation). Stored encrypted.")
@click.option("--no-sync", is_flag=True, help="Connect the users, do not sync them yet.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def connect_google_domain(ctx: click.Context, domain: str, key_file: str, no_sync: bool,
                          as_json: bool) -> None:
    """Connect a whole Google Workspace domain through domain-wide delegation: every user
    whose e-mail is in DOMAIN is impersonated by the service account, with no sign-in of
    their own."""
    domain = domain.strip().lower().lstrip("@")
    if not domain or "." not in domain or "/" in domain:
        raise UserError(f"--domain: expected a domain such as example.com, got {domain!r}")
    try:
        key = json.loads(Path(key_file).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"--service-account-key-file {key_file}: cannot read it "
                        f"({exc.strerror})") from exc
    except ValueError as exc:
        raise UserError(f"--service-account-key-file {key_file}: not JSON (expected the "
                        f"service account's key file)") from exc
    creds = {"mode": "domain_wide", "domain": domain, "service_account_key": key}
    app = _app(ctx)
    factory = load_connector_factory("google")
    db = app.migrated_db()
    with db.read_session() as s:
        from calsync.db.models import User
        from calsync.sync.tenants import email_domain

        first = next((u.email for u in s.scalars(select(User).where(
            User.deleted_at.is_(None), User.email.is_not(None)).order_by(User.id))
            if email_domain(u.email) == domain), None)
    # a bad key, or a delegation that is not set up at all, fails here once for everyone
    factory.check_delegation(ConnectContext(  # type: ignore[attr-defined]
        provider="google", url=None, account=str(first or "").lower(), credentials=creds,
        settings=app.settings))
    _connect_tenant(ctx, "google", domain, creds, [domain], as_json, no_sync)


@click.group("tenants")
def tenants_group() -> None:
    """Organisation-wide connections (Microsoft 365 tenants, Google Workspace domains)."""


@tenants_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def tenants_list(ctx: click.Context, as_json: bool) -> None:
    """Each organisation with its domains and its users' health."""
    with _app(ctx).migrated_db().read_session() as s:
        data = [{**overview,
                 "problems": [{"user": c.user_id, "connection": c.public_id,
                               "status": c.status, "error": c.last_error}
                              for c in conns if c.status != "ok"]}
                for _t, overview, conns in tenant_overviews(s)]
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    if not data:
        click.echo("no organisation-wide connections")
    for d in data:
        health_text = ", ".join(f"{n} {k}" for k, n in sorted(d["health"].items())) or "none"
        click.echo(f"{d['id']}  {d['provider']}  {d['name']}  domains "
                   f"{', '.join(d['domains'])}  users: {d['users']} ({health_text})")
        for p in d["problems"]:
            click.echo(f"  {p['user']} ({p['connection']}): {p['status']}: {p['error']}")
        if d["left_out"]:
            click.echo(f"  left out (disconnected; `tenants onboard --user USER` takes them "
                       f"back): {', '.join(d['left_out'])}")


@tenants_group.command("onboard")
@click.option("--user", "users", multiple=True, metavar="USER",
              help="Connect USER again although their connection was disconnected "
                   "(repeatable).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def tenants_onboard(ctx: click.Context, users: tuple[str, ...], as_json: bool) -> None:
    """Connect the users imported since (and retry refused ones) for every organisation.

    A user whose connection through an organisation was disconnected stays out until named
    with --user."""
    app = _app(ctx)
    db = app.migrated_db()
    now = _now()
    if users:
        with db.session() as s:
            tenant_ids = list(s.scalars(select(Tenant.id)))
            for user in users:
                # every organisation that left them out takes them back (no short cut)
                if not any([take_back(s, tid, user) for tid in tenant_ids]):
                    raise UserError(f"--user {user}: no organisation left them out "
                                    "(see `calsync tenants list`)")
    reports = onboard_all(app.settings, db, now, discover_through(app.settings))
    with db.read_session() as s:
        ids = list(s.scalars(select(Tenant.id)))
    for tid in ids:
        retry_refused(app.settings, db, tid, now, discover_through(app.settings))
    data = [r.as_dict() for r in reports]
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    for r in reports:
        click.echo(f"{r.tenant}: {len(r.connected)} newly connected, {len(r.refused)} refused"
                   + (f", {len(r.left_out)} left out ({', '.join(r.left_out)})"
                      if r.left_out else ""))


@tenants_group.command("remove")
@click.argument("tenant")
@click.pass_context
def tenants_remove(ctx: click.Context, tenant: str) -> None:
    """Disconnect every user of TENANT (org_… id or name) and forget its credentials."""
    app = _app(ctx)
    db = app.migrated_db()
    with db.read_session() as s:
        row = find_tenant(s, tenant)
        tid, public = row.id, row.public_id
    n = remove_tenant(app.settings, db, tid, _now())
    click.echo(f"organisation {public} removed; {n} user connection(s) disconnected")


def register(cli: click.Group) -> None:
    add_connect_command(connect_ics)
    add_connect_command(connect_outlook_tenant)
    add_connect_command(connect_google_domain)
    if tenants_group.name not in cli.commands:
        cli.add_command(tenants_group)
