"""Quick start-up of the CLI and its log formats: ``calsync --help`` imports neither
SQLAlchemy nor any subsystem yet lists every command with the help its module gives it;
``[logging] format = "json"`` gives one JSON object a line with the connection's public id
on the lines of its sync (text lines carry it too)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import click

from calsync.config import Settings
from calsync.db.session import Database
from calsync.logs import JsonFormatter, RunContextFilter
from calsync.runcontext import working_on
from tests.conftest import SECRET
from tests.test_sync_runner import add_connection, add_user

HEAVY = ("sqlalchemy", "fastapi", "apscheduler", "prometheus_client", "httpx", "caldav",
         "googleapiclient", "msal", "calsync.db", "calsync.sync", "calsync.api",
         "calsync.availability", "calsync.outbox")

def then_modules(*argv: str) -> str:
    """Code that runs the CLI with ``argv`` in-process, then prints the modules loaded."""
    return f"""
import sys
sys.argv = ["calsync", *{list(argv)!r}]
from calsync.cli import main
try:
    main()
except SystemExit:
    pass
print("MODULES " + " ".join(sorted(sys.modules)))
"""


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env})


def test_help_imports_no_database_or_subsystem_and_lists_every_command() -> None:
    out = run_python(then_modules("--help"))
    assert out.returncode == 0, out.stderr
    help_text, _, modules = out.stdout.partition("MODULES ")
    loaded = modules.split()
    assert [m for m in loaded if m.startswith(HEAVY)] == []
    from calsync.cli import SUBSYSTEM_COMMANDS

    for name in (*SUBSYSTEM_COMMANDS, "serve", "worker", "db", "feed", "token", "import"):
        assert f"\n  {name} " in help_text, name


def test_the_listed_subsystem_commands_are_what_the_modules_register() -> None:
    from calsync.cli import SUBSYSTEM_COMMANDS, cli

    cli.load_subsystems()  # type: ignore[attr-defined]
    core = {n for n, c in cli.commands.items()
            if c.callback is not None and c.callback.__module__ == "calsync.cli"}
    added = {n: c for n, c in cli.commands.items() if n not in core}
    assert set(added) == set(SUBSYSTEM_COMMANDS), "update calsync.cli.SUBSYSTEM_COMMANDS"
    for name, command in added.items():
        listed = click.Command(name, help=SUBSYSTEM_COMMANDS[name])
        assert listed.get_short_help_str(200) == command.get_short_help_str(200), name


def test_a_command_imports_only_the_modules_it_needs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    Database(url).upgrade()
    out = run_python(then_modules("sync"), CALSYNC_DATABASE_URL=url, CALSYNC_SECRET_KEY=SECRET)
    assert out.returncode == 0, out.stderr
    printed, _, modules = out.stdout.partition("MODULES ")
    assert "No connections to sync" in printed or "no connections" in printed.lower()
    loaded = set(modules.split())
    assert "calsync.sync.commands" in loaded
    # availability's statements (compiled at import) and the webhook commands are not paid
    assert not {m for m in loaded if m.startswith(("calsync.availability",
                                                    "calsync.outbox.commands",
                                                    "calsync.api"))}


def test_every_subsystem_command_names_the_modules_it_needs() -> None:
    from calsync import cli as cli_module

    assert set(cli_module.COMMAND_MODULES) == set(cli_module.SUBSYSTEM_COMMANDS)
    for name, modules in cli_module.COMMAND_MODULES.items():
        code = (f"from calsync import cli\n"
                f"cli._register_subsystem_commands({modules!r})\n"
                f"print({name!r} in cli.cli.commands)")
        out = run_python(code)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "True", name


def test_a_group_made_by_one_module_gets_the_others_commands_on_a_later_use() -> None:
    # `sync` imports the module that makes the `connect` group; a later `connect
    # google-domain` in the same process (an embedding, a test run) must still load the
    # modules that add to it
    code = """
from click.testing import CliRunner
from calsync.cli import cli
runner = CliRunner()
runner.invoke(cli, ["sync", "--help"])
for argv in (["connect", "google-domain", "--help"], ["connect", "outlook-tenant", "--help"]):
    print(runner.invoke(cli, argv).exit_code)
"""
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "0"], out.stdout


def test_a_subsystem_command_runs_after_a_lazy_start(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "calsync.cli", "check", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "conflicts between START and END" in out.stdout


def test_json_log_lines_carry_the_connection_of_their_sync() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RunContextFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("calsync.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.info("outside any sync")
        with working_on("con_abc", "caldav"):
            logger.warning("calendar %s: %s", "cal_1", "throttled")
            try:
                raise ValueError("boom")
            except ValueError:
                logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["level"], r["message"]) for r in lines] == [
        ("info", "outside any sync"), ("warning", "calendar cal_1: throttled"),
        ("error", "failed")]
    assert "connection" not in lines[0]
    assert lines[1]["connection"] == lines[2]["connection"] == "con_abc"
    assert lines[1]["provider"] == "caldav" and lines[1]["logger"] == "calsync.test.json"
    assert "ValueError: boom" in lines[2]["exc"] and lines[0]["ts"].endswith("+00:00")


def test_calsync_sync_logs_json_lines_with_the_connection_id(
        sqlite_db: Database, tmp_path: Path) -> None:
    from dataclasses import replace

    from calsync.config import load_settings

    base = load_settings(env={"CALSYNC_SECRET_KEY": SECRET})
    settings: Settings = replace(base, database=replace(base.database, url=sqlite_db.url))
    add_user(sqlite_db)
    cid, _server, _ids = add_connection(sqlite_db, settings)
    with sqlite_db.read_session() as s:
        from calsync.db.models import Connection

        conn = s.get(Connection, cid)
        assert conn is not None
        public_id = conn.public_id
    config = tmp_path / "calsync.toml"
    for fmt in ("json", "text"):
        config.write_text(f'[database]\nurl = "{sqlite_db.url}"\n[security]\n'
                          f'secret_key = "{SECRET}"\n[logging]\nformat = "{fmt}"\n')
        out = subprocess.run([sys.executable, "-m", "calsync.cli", "--config", str(config),
                              "sync", "--json"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)[0]["id"] == public_id
        lines = [line for line in out.stderr.splitlines() if "synced connection" in line]
        assert lines, out.stderr
        if fmt == "json":
            record = json.loads(lines[0])
            assert record["connection"] == public_id and record["provider"] == "memory"
            assert record["logger"] == "calsync.sync" and record["level"] == "info"
        else:
            assert f"[{public_id}] synced connection" in lines[0]
