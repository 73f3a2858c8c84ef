"""``calsync connect ics`` (a subscribed calendar), and the organisation-wide connections
``connect outlook-tenant`` / ``connect google-domain`` with ``tenants`` to list and remove
them. Registered from ``cli.py`` after :mod:`calsync.sync.commands`."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import click

from calsync.sync.commands import add_connect_command
from calsync.sync.subscriptions import subscribe_feed


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


def register(cli: click.Group) -> None:
    add_connect_command(connect_ics)
