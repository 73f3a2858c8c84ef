"""The ``calsync check USER START END [--json]`` command.

The person at the command line is an operator, not the user: external events are shown
masked ("Busy", times only) whatever the user's private mode, like for a dispatcher.
``--json`` prints the ``results`` entry of the API's check for that user. Exit status is
0 when the check ran (busy or free); 2 with a one-line reason for bad input.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import click

from calsync.availability.check import check_availability
from calsync.availability.requests import parse_check
from calsync.availability.store import reading
from calsync.db.models import utcnow
from calsync.privacy import OPERATOR


def render_text(result: dict[str, Any]) -> str:
    lines = []
    state = "available" if result["available"] else "NOT available"
    lines.append(f"{result['user_id']}: {state}")
    if result["stale"]:
        lines.append("  stale calendars (not synced recently; bookings refused unless forced): "
                     + ", ".join(result["stale_calendars"]))
    for c in result["conflicts"]:
        lines.append(f"  {c['kind']:<13} {c['start']} - {c['end']}  {c['summary']} "
                     f"[{c['source']}]")
    return "\n".join(lines)


def register(cli: click.Group) -> None:
    from calsync.cli import AppContext, pass_app

    @cli.command("check")
    @click.argument("user")
    @click.argument("start")
    @click.argument("end")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    @pass_app
    def check_cmd(app: AppContext, user: str, start: str, end: str, as_json: bool) -> None:
        """Print USER's conflicts between START and END (ISO 8601 with offset)."""
        q = parse_check({"user_ids": [user], "start": start, "end": end}, "check")
        stale_after = dt.timedelta(seconds=app.settings.sync.stale_after_seconds)
        with reading(app.migrated_db()) as s:  # reads only: no write lock
            [result] = check_availability(s, q.user_ids, q.start, q.end, OPERATOR, utcnow(),
                                          stale_after)
        if as_json:
            click.echo(json.dumps(result, indent=2, ensure_ascii=False))
        else:
            click.echo(render_text(result))
