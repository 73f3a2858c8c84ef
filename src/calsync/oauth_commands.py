"""OAuth connections: ``calsync connect outlook USER`` / ``connect google USER`` (device code
flow in a terminal) and :func:`save_oauth_connection`, which the web callback uses too.

The provider's factory (found by name; the core imports no connector) must have the hook
``device_flow(ctx, prompt) -> ctx``; ``verify(ctx)`` then lists the calendars. Credentials
are stored encrypted (CredentialBox); calendars start as ``ignored`` until
``calsync calendars set`` picks the primary and conflict ones.
"""

from __future__ import annotations

import datetime as dt
import webbrowser
from typing import Any

import click

from calsync.config import Settings
from calsync.db.models import User
from calsync.db.session import Database
from calsync.errors import NotFound, UserError
from calsync.loopback_signin import browser_sign_in
from calsync.sync.commands import connection_summary, print_connected
from calsync.sync.connections import save_connection
from calsync.sync.connector import ConnectContext, RemoteCalendar, load_connector_factory

OAUTH_PROVIDERS = ("outlook", "google")


def save_oauth_connection(settings: Settings, db: Database, user_id: str,
                          ctx: ConnectContext, calendars: list[RemoteCalendar],
                          now: dt.datetime, actor: str) -> tuple[int, bool]:
    """Store (or refresh) the user's connection for ``ctx.provider``/``ctx.account`` with
    encrypted credentials and its calendars; returns (connection id, created)."""
    return save_connection(settings, db, user_id, ctx, calendars, now, actor)


def connect_oauth(settings: Settings, db: Database, provider: str, user_id: str,
                  prompt: Any, now: dt.datetime, http: Any = None, browser: bool = False,
                  open_browser: Any = None, signin_timeout: float = 300.0) -> dict[str, Any]:
    """The CLI flow: sign in (device code, or ``browser``: a loopback redirect on this
    machine, see :mod:`calsync.loopback_signin`), verify, store. Returns a summary."""
    with db.session() as s:
        user = s.get(User, user_id)
        if user is None or user.deleted_at is not None:
            raise NotFound(f"user {user_id!r} not found")
    factory = load_connector_factory(provider)
    ctx = ConnectContext(provider=provider, url=None, account="", credentials={},
                         settings=settings, http=http)
    if browser:
        ctx = browser_sign_in(factory, ctx, prompt, open_browser, timeout=signin_timeout)
    else:
        device_flow = getattr(factory, "device_flow", None)
        if device_flow is None:
            raise UserError(f"the {provider} connector has no device code sign-in; "
                            f"use --browser")
        ctx = device_flow(ctx, prompt)
    ctx, calendars = factory.verify(ctx)
    conn_id, created = save_oauth_connection(settings, db, user_id, ctx, calendars, now,
                                             actor="cli:connect")
    return connection_summary(db, conn_id, created, calendars)


def _command(provider: str) -> click.Command:
    @click.command(provider)
    @click.argument("user")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    @click.option("--browser", is_flag=True,
                  help="Sign in through a browser on this machine (loopback redirect) "
                       "instead of a device code.")
    @click.pass_context
    def cmd(click_ctx: click.Context, user: str, as_json: bool, browser: bool) -> None:
        app = click_ctx.obj  # the CLI's AppContext
        settings, db = app.settings, app.migrated_db()
        summary = connect_oauth(settings, db, provider, user,
                                lambda msg: click.echo(msg, err=True),
                                dt.datetime.now(dt.timezone.utc), browser=browser,
                                open_browser=webbrowser.open if browser else None)
        print_connected(summary, user, as_json)

    cmd.help = (f"Link USER's {provider.title()} account by signing in with a device code "
                f"(open the link shown and enter the code), or with --browser through a "
                f"browser on this machine.")
    return cmd


def register(cli: click.Group) -> None:
    """Add ``outlook`` and ``google`` to the ``connect`` group (made if missing)."""
    group = cli.commands.get("connect")
    if not isinstance(group, click.Group):
        @cli.group("connect")
        def connect() -> None:
            """Link an external calendar account."""

        group = connect
    for provider in OAUTH_PROVIDERS:
        if provider not in group.commands:
            group.add_command(_command(provider))
