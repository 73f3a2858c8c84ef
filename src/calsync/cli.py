"""The ``calsync`` command. User errors print one line on stderr and exit non-zero.

A database that cannot be opened (no server, no such database, a SQLite path whose folder
cannot be made) is a user error too: one line naming the database (never its password).

Start-up is kept quick (``calsync --help`` imports neither SQLAlchemy nor any subsystem):
SQLAlchemy and the database are imported by the commands that use them, and the commands
of subsystem modules are listed from :data:`SUBSYSTEM_COMMANDS` and imported only when
one of them runs.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import TYPE_CHECKING, Any

import click

from calsync.config import Settings, load_settings
from calsync.errors import CalsyncError, NotFound, UserError

if TYPE_CHECKING:
    from calsync.db.session import Database

# Libraries that log every HTTP request or set-up step at INFO; their lines would garble
# the progress bar and bury calsync's own messages. ``-v`` shows them again.
THIRD_PARTY_LOGGERS = ("httpx", "httpcore", "urllib3", "alembic", "googleapiclient",
                       "google_auth_httplib2", "msal", "uvicorn.access", "apscheduler")


def configure_logging(verbose: bool, fmt: str = "text") -> None:
    """Text or JSON lines (``[logging] format``, applied once the config is read)."""
    from calsync.logs import setup

    setup(verbose, fmt)
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)


def database_label(url: str) -> str:
    """The database URL as it may be shown: the password replaced by ``***``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "the configured database URL"


def database_error_reason(exc: BaseException, url: str) -> str:
    """One line from a driver error: its first line, no SQL, no parameters, no password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    reason = " ".join(lines[0].split()) if lines else type(orig).__name__
    try:
        password = make_url(url).password
    except ArgumentError:
        password = None
    if password:
        reason = reason.replace(str(password), "***")
    return reason


def follow_port(settings: Settings, host: str | None, port: int | None) -> Settings:
    """``settings`` for a server on ``port``: when no base URL was configured (it is still
    the built-in default), printed links follow the port (and a loopback host) too."""
    from dataclasses import replace

    from calsync.config import ServerSettings

    if port is None:
        return settings
    server = replace(settings.server, port=port)
    if settings.server.base_url == ServerSettings().base_url:
        link_host = host if host and host not in ("0.0.0.0", "::") else "127.0.0.1"
        if ":" in link_host:
            link_host = f"[{link_host}]"
        server = replace(server, base_url=f"http://{link_host}:{port}")
    return replace(settings, server=server)


class DatabaseUnavailable(UserError):
    """The configured database cannot be opened."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot open the database {database_label(url)}: {reason} "
                         f"(check [database] url or CALSYNC_DATABASE_URL)")


class AppContext:
    """Settings and database, made on first use so ``--help`` needs neither."""

    # The context of the running command, for ``main``'s error messages after click is done.
    latest: AppContext | None = None

    def __init__(self, config_path: str | None, verbose: bool = False) -> None:
        AppContext.latest = self
        self.config_path = config_path
        self.verbose = verbose
        self._configured: Settings | None = None
        self._settings: Settings | None = None
        self._db: Database | None = None

    @property
    def configured_settings(self) -> Settings:
        """The settings as configured (the secret key may be unset)."""
        if self._configured is None:
            self._configured = load_settings(self.config_path)
            if self._configured.logging.format != "text":
                configure_logging(self.verbose, self._configured.logging.format)
        return self._configured

    @property
    def settings(self) -> Settings:
        """The configured settings with a secret key to use (no built-in one exists)."""
        if self._settings is None:
            from calsync.secrets import resolve_secret_key

            self._settings = resolve_secret_key(self.configured_settings)
        return self._settings

    @property
    def db(self) -> Database:
        if self._db is None:
            from sqlalchemy.exc import ArgumentError, DBAPIError

            from calsync.db.session import Database, pool_size_for

            url = self.settings.database.url
            try:
                database = Database(url, echo=self.settings.database.echo,
                                    pool_size=pool_size_for(self.settings))
            except OSError as exc:  # the SQLite file's folder could not be made
                where = f" ({exc.filename})" if exc.filename else ""
                raise DatabaseUnavailable(url, f"{exc.strerror or exc}{where}") from None
            except ArgumentError as exc:
                raise DatabaseUnavailable(url, str(exc)) from None
            try:  # connect now, so an unreachable database is one line, not a traceback
                with database.engine.connect():
                    pass
            except DBAPIError as exc:
                database.dispose()
                raise DatabaseUnavailable(url, database_error_reason(exc, url)) from None
            self._db = database
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


# Commands added by subsystem modules (their ``register(cli)``), with their one-line help:
# `calsync --help` lists them from here without importing the modules; the first use of
# any of them imports them all. tests/test_cli_startup.py checks this table against what
# the modules register.
SUBSYSTEM_MODULES = ("calsync.sync.commands", "calsync.sync.connect_commands",
                     "calsync.availability.commands", "calsync.oauth_commands",
                     "calsync.outbox.commands")
# The modules a command needs, in registration order (a command's group is made by the first;
# the others add to it). Running one command imports only these: `calsync sync` no longer
# pays for availability's statements or the outbox.
_SYNC = ("calsync.sync.commands",)
_CONNECT = ("calsync.sync.commands", "calsync.sync.connect_commands", "calsync.oauth_commands")
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "calendars": _SYNC, "connections": _SYNC, "secrets": _SYNC, "sync": _SYNC,
    "connect": _CONNECT, "tenants": _CONNECT,
    "check": ("calsync.availability.commands",),
    "webhooks": ("calsync.outbox.commands",),
}
SUBSYSTEM_COMMANDS = {
    "calendars": "Remote calendars of a user's connections: list, set roles, refresh, "
                 "confirm-empty.",
    "check": "Print USER's conflicts between START and END (ISO 8601 with offset).",
    "connect": "Link an external calendar account.",
    "connections": "Linked accounts and their health.",
    "secrets": "Encryption of stored credentials.",
    "sync": "Sync now (all connections, or USER's), with a progress bar and a summary.",
    "tenants": "Organisation-wide connections (Microsoft 365 tenants, Google Workspace "
               "domains).",
    "webhooks": "Webhook endpoints of the platform (signed events, DESIGN 4.7).",
}


class LazyGroup(click.Group):
    """The top-level group: subsystem commands are imported on first use."""

    _listing = False

    def load_subsystems(self, modules: tuple[str, ...] = SUBSYSTEM_MODULES) -> None:
        _register_subsystem_commands(modules)  # each module once

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(SUBSYSTEM_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SUBSYSTEM_COMMANDS and cmd_name in self.commands:
            return self.commands[cmd_name]
        if self._listing and cmd_name in SUBSYSTEM_COMMANDS:
            return self.commands.get(cmd_name) or click.Command(
                cmd_name, help=SUBSYSTEM_COMMANDS[cmd_name])
        # even when the group exists: the module that made it may not be the last that
        # adds to it (`sync` makes `connect`; `connect google-domain` comes with another)
        self.load_subsystems(COMMAND_MODULES.get(cmd_name, SUBSYSTEM_MODULES))
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_commands(ctx, formatter)
        finally:
            self._listing = False


@click.group(cls=LazyGroup)
@click.option("--config", "config_path", metavar="FILE", default=None,
              help="TOML config (default $CALSYNC_CONFIG, then ./calsync.toml).")
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: bool) -> None:
    """calsync: calendar sync and scheduling integration worker."""
    configure_logging(verbose)
    ctx.obj = AppContext(config_path, verbose)


@cli.group()
def db() -> None:
    """Database commands."""


@db.command("upgrade")
@pass_app
def db_upgrade(app: AppContext) -> None:
    """Migrate the database to head."""
    app.db.upgrade()
    click.echo("database is at head")


def read_json_document(raw: bytes, name: str) -> Any:
    """Parse UTF-8 JSON (a byte-order mark is accepted); bad input is one UserError line
    saying where."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UserError(f"{name}: not UTF-8 text: byte 0x{raw[exc.start]:02x} at line {line} "
                        f"column {column} (save the file as UTF-8)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{name}: not valid JSON at line {exc.lineno} "
                        f"column {exc.colno}: {exc.msg}") from None


@cli.command("import")
@click.argument("file", type=click.File("rb"))
@click.option("--json", "as_json", is_flag=True)
@pass_app
def import_cmd(app: AppContext, file: Any, as_json: bool) -> None:
    """Upsert users, jobs, time off and blocks from a JSON FILE (- for stdin)."""
    from calsync.schedule.store import import_document

    name = "<stdin>" if file.name in ("-", "<stdin>") else file.name
    doc = read_json_document(file.read(), name)
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
@click.option("--port", type=int, default=None,
              help="The port `calsync serve` will use; with no base_url configured, the "
                   "printed links point there.")
@pass_app
def demo(app: AppContext, if_empty: bool, port: int | None) -> None:
    """Load the demo data set and print the demo users' feed links."""
    from calsync.demo import load_demo

    settings = follow_port(app.settings, None, port)
    for line in load_demo(settings, app.migrated_db(), if_empty=if_empty):
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
        owner = s.get(User, user_id) if user_id is not None else None
        if user_id is not None and (owner is None or owner.deleted_at is not None):
            raise NotFound(f"user {user_id!r} not found")
        value = create_api_token(s, name, role, user_id)
        audit(s, "cli", "token.create", "api_token", name, {"role": role, "user": user_id})
    click.echo(value)


@token.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def token_list(app: AppContext, as_json: bool) -> None:
    """List API tokens: id, name, role, user, prefix, created, last used, revoked."""
    from calsync.api.auth import list_api_tokens

    with app.migrated_db().read_session() as s:
        rows = list_api_tokens(s)
    lines = [f"{r['id']}  {r['name']}  {r['role']}"
             f"{'  user ' + r['user_id'] if r['user_id'] else ''}  {r['prefix']}…  "
             f"created {r['created_at']}  last used {r['last_used_at'] or 'never'}"
             f"{'  REVOKED ' + r['revoked_at'] if r['revoked_at'] else ''}" for r in rows]
    emit(rows, as_json, "\n".join(lines) if lines else "no API tokens")


@token.command("revoke")
@click.argument("token_id", metavar="ID", type=int)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def token_revoke(app: AppContext, token_id: int, as_json: bool) -> None:
    """Revoke the API token ID (from `calsync token list`); it stops working at once."""
    from calsync.api.auth import revoke_api_token
    from calsync.audit import audit
    from calsync.db.models import utcnow

    with app.migrated_db().session() as s:
        row = revoke_api_token(s, token_id, utcnow())
        audit(s, "cli", "token.revoke", "api_token", str(token_id), {"name": row["name"]})
    emit(row, as_json, f"token {token_id} ({row['name']}) revoked")


@cli.command()
@click.option("--host", default=None)
@click.option("--port", type=int, default=None)
@click.option("--no-worker", is_flag=True, help="Serve HTTP only; run `calsync worker` apart.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="HTTP worker processes sharing the port (the scheduler runs once).")
@pass_app
def serve(app: AppContext, host: str | None, port: int | None, no_worker: bool,
          workers: int) -> None:
    """Serve the HTTP API and feeds (and the scheduler unless --no-worker)."""
    from calsync.api.app import create_app
    from calsync.secrets import require_configured_secret

    host = host or app.configured_settings.server.host
    require_configured_secret(app.configured_settings, host)
    settings = follow_port(app.settings, host, port)
    db = app.migrated_db()
    scheduler = None
    if not no_worker:
        from calsync.worker import build_scheduler

        scheduler = build_scheduler(settings, db, blocking=False)
        scheduler.start()
    try:
        if workers > 1:
            import os

            from calsync.api import serving

            os.environ[serving.CONFIG_ENV] = app.config_path or ""
            os.environ[serving.HOST_ENV] = host
            os.environ[serving.PORT_ENV] = str(port or settings.server.port)
            serving.run(None, host, port or settings.server.port, workers)
        else:
            from calsync.api import serving

            serving.run(create_app(settings, db), host, port or settings.server.port)
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=False)


@cli.command()
@pass_app
def worker(app: AppContext) -> None:
    """Run the scheduler and sync worker alone (start more for scale)."""
    from calsync.heap import freeze_startup_heap
    from calsync.worker import build_scheduler

    scheduler = build_scheduler(app.settings, app.migrated_db(), blocking=True)
    freeze_startup_heap()
    click.echo("calsync worker running; Ctrl-C stops it")
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        pass


_registered: set[str] = set()


def _register_subsystem_commands(modules: tuple[str, ...] = SUBSYSTEM_MODULES) -> None:
    """Commands owned by subsystems (sync, availability) live in their own modules; each
    module registers its commands once."""
    import importlib

    for module in modules:
        if module in _registered:
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(cli)
        _registered.add(module)


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
    except Exception as exc:
        if not _is_database_error(exc):
            raise
        # The database went away mid-command (or refused a statement). SQLAlchemy's own
        # text carries the statement and its parameters (event details): print neither.
        url = _configured_url()
        click.echo(f"calsync: database error on {database_label(url)}: "
                   f"{database_error_reason(exc, url)}", err=True)
        sys.exit(1)


def _is_database_error(exc: BaseException) -> bool:
    """A SQLAlchemy DBAPIError (SQLAlchemy is imported only if a command used it)."""
    if "sqlalchemy" not in sys.modules:
        return False
    from sqlalchemy.exc import DBAPIError

    return isinstance(exc, DBAPIError)


def _configured_url() -> str:
    app = AppContext.latest
    if app is not None and app._settings is not None:
        return app._settings.database.url
    return "the database"


if __name__ == "__main__":
    main()
