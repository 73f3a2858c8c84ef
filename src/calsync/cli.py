"""The ``calsync`` command. User errors print one line on stderr and exit non-zero."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from calsync.config import Settings, load_settings
from calsync.db.session import Database
from calsync.errors import CalsyncError, NotFound, UserError


class AppContext:
    """Settings and database, made on first use so ``--help`` needs neither."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._settings: Settings | None = None
        self._db: Database | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_path)
        return self._settings

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.settings.database.url, echo=self.settings.database.echo)
        return self._db

    def migrated_db(self) -> Database:
        db = self.db
        if not db.is_migrated():
            raise UserError("the database is not set up; run `calsync db upgrade` first")
        return db


pass_app = click.make_pass_decorator(AppContext)


def emit(obj: Any, as_json: bool, text: str | None = None) -> None:
    if as_json:
        click.echo(json.dumps(obj, indent=2, default=str, ensure_ascii=False))
    else:
        click.echo(text if text is not None else str(obj))


@click.group()
@click.option("--config", "config_path", metavar="FILE", default=None,
              help="TOML config (default $CALSYNC_CONFIG, then ./calsync.toml).")
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: bool) -> None:
    """calsync: calendar sync and scheduling integration worker."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = AppContext(config_path)


@cli.group()
def db() -> None:
    """Database commands."""


@db.command("upgrade")
@pass_app
def db_upgrade(app: AppContext) -> None:
    """Migrate the database to head."""
    app.db.upgrade()
    click.echo("database is at head")


@cli.command("import")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option("--json", "as_json", is_flag=True)
@pass_app
def import_cmd(app: AppContext, file: Any, as_json: bool) -> None:
    """Upsert users, jobs, time off and blocks from a JSON FILE (- for stdin)."""
    from calsync.schedule.store import import_document

    try:
        doc = json.load(file)
    except json.JSONDecodeError as exc:
        raise UserError(f"{file.name}: not valid JSON at line {exc.lineno} "
                        f"column {exc.colno}: {exc.msg}") from None
    report = import_document(app.migrated_db(), doc, actor="cli:import")
    if as_json:
        emit(report.as_dict(), True)
    else:
        for section, counts in report.counts.items():
            click.echo(f"{section}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
        for err in report.errors:
            click.echo(f"rejected {err['record']}: field {err['field']!r}: {err['error']}",
                       err=True)
    if not report.ok:
        sys.exit(1)


@cli.command()
@click.option("--if-empty", is_flag=True, help="Load only when there are no users yet.")
@pass_app
def demo(app: AppContext, if_empty: bool) -> None:
    """Load the demo data set and print the demo users' feed links."""
    from calsync.demo import load_demo

    for line in load_demo(app.settings, app.migrated_db(), if_empty=if_empty):
        click.echo(line)


@cli.group()
def feed() -> None:
    """Feed links: url, regenerate, revoke."""


def _feed_action(app: AppContext, user_id: str, action: str) -> str:
    from calsync.audit import audit
    from calsync.db.models import User
    from calsync.feeds.links import feed_url, issue_feed, revoke_feed

    with app.migrated_db().session() as s:
        user = s.get(User, user_id)
        if user is None or user.deleted_at is not None:
            raise NotFound(f"user {user_id!r} not found")
        if action == "url":
            if not user.feed_enabled:
                issue_feed(user)
                audit(s, "cli", "feed.issue", "user", user_id)
            return feed_url(app.settings, user)
        if action == "regenerate":
            issue_feed(user)
            audit(s, "cli", "feed.regenerate", "user", user_id)
            return feed_url(app.settings, user)
        revoke_feed(user)
        audit(s, "cli", "feed.revoke", "user", user_id)
        return f"feed of {user_id} revoked"


@feed.command("url")
@click.argument("user")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def feed_url_cmd(app: AppContext, user: str, as_json: bool) -> None:
    """Print USER's feed link (issues one if the feed is off)."""
    url = _feed_action(app, user, "url")
    emit({"user_id": user, "url": url}, as_json, url)


@feed.command("regenerate")
@click.argument("user")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def feed_regenerate_cmd(app: AppContext, user: str, as_json: bool) -> None:
    """Issue a new link; the old one stops working at once."""
    url = _feed_action(app, user, "regenerate")
    emit({"user_id": user, "url": url}, as_json, url)


@feed.command("revoke")
@click.argument("user")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def feed_revoke_cmd(app: AppContext, user: str, as_json: bool) -> None:
    """Disable USER's feed."""
    message = _feed_action(app, user, "revoke")
    emit({"user_id": user, "revoked": True}, as_json, message)


@cli.group()
def token() -> None:
    """API tokens."""


@token.command("create")
@click.option("--name", required=True)
@click.option("--role", required=True, type=click.Choice(["admin", "dispatcher", "user"]))
@click.option("--user", "user_id", default=None)
@pass_app
def token_create(app: AppContext, name: str, role: str, user_id: str | None) -> None:
    """Create an API token and print it once (it is stored hashed)."""
    from calsync.api.auth import create_api_token
    from calsync.audit import audit
    from calsync.db.models import User

    with app.migrated_db().session() as s:
        if user_id is not None and s.get(User, user_id) is None:
            raise NotFound(f"user {user_id!r} not found")
        value = create_api_token(s, name, role, user_id)
        audit(s, "cli", "token.create", "api_token", name, {"role": role, "user": user_id})
    click.echo(value)


@cli.command()
@click.option("--host", default=None)
@click.option("--port", type=int, default=None)
@click.option("--no-worker", is_flag=True, help="Serve HTTP only; run `calsync worker` apart.")
@pass_app
def serve(app: AppContext, host: str | None, port: int | None, no_worker: bool) -> None:
    """Serve the HTTP API and feeds (and the scheduler unless --no-worker)."""
    import uvicorn

    from calsync.api.app import create_app

    settings = app.settings
    db = app.migrated_db()
    scheduler = None
    if not no_worker:
        from calsync.worker import build_scheduler

        scheduler = build_scheduler(settings, db, blocking=False)
        scheduler.start()
    try:
        uvicorn.run(create_app(settings, db), host=host or settings.server.host,
                    port=port or settings.server.port, log_level="info", access_log=False)
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=False)


@cli.command()
@pass_app
def worker(app: AppContext) -> None:
    """Run the scheduler and sync worker alone (start more for scale)."""
    from calsync.worker import build_scheduler

    scheduler = build_scheduler(app.settings, app.migrated_db(), blocking=True)
    click.echo("calsync worker running; Ctrl-C stops it")
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        pass


def _register_subsystem_commands() -> None:
    """Commands owned by subsystems (sync, availability) live in their own modules."""
    import importlib

    for module in ("calsync.sync.commands", "calsync.availability.commands",
                   "calsync.oauth_commands"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(cli)


_register_subsystem_commands()


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except CalsyncError as exc:
        click.echo(f"calsync: {exc.message}", err=True)
        sys.exit(2 if isinstance(exc, UserError) else 1)


if __name__ == "__main__":
    main()
