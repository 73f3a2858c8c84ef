"""A process keeps a PostgreSQL connection for each concurrent sync: with
``sync.concurrency`` above the old fixed pool (10 kept + 20 overflow), threads queued for
a connection (and a long queue times out after 30 s)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from calsync.config import load_settings
from calsync.db.session import Database, pool_size_for
from tests.conftest import SECRET, make_db


def test_the_pool_follows_sync_concurrency() -> None:
    base = load_settings(env={"CALSYNC_SECRET_KEY": SECRET})
    assert pool_size_for(replace(base, sync=replace(base.sync, concurrency=64))) == 68
    assert pool_size_for(replace(base, sync=replace(base.sync, concurrency=2))) == 10


@pytest.fixture
def pg_db(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Database]:
    """PostgreSQL only: SQLite's pool is not sized (one writer at a time)."""
    database = make_db("postgresql", tmp_path, request)
    yield database
    database.dispose()


def test_postgresql_database_keeps_the_pool_it_is_given(pg_db: Database) -> None:
    db = pg_db
    sized = Database(db.url, pool_size=40)
    try:
        assert sized.engine.pool.size() == 40  # type: ignore[attr-defined]
    finally:
        sized.dispose()


def test_the_cli_sizes_its_pool_from_the_configuration(pg_db: Database,
                                                         tmp_path: Path) -> None:
    db = pg_db
    from calsync.cli import cli

    config = tmp_path / "calsync.toml"
    config.write_text("[sync]\nconcurrency = 48\n")
    seen: list[int] = []

    @cli.command("pool-size-probe", hidden=True)
    def probe() -> None:  # pragma: no cover - run by the CLI below
        import click

        ctx = click.get_current_context().find_object(object)
        seen.append(ctx.db.engine.pool.size())  # type: ignore[attr-defined]

    try:
        out = CliRunner().invoke(cli, ["--config", str(config), "pool-size-probe"],
                                 env={"CALSYNC_DATABASE_URL": db.url,
                                      "CALSYNC_SECRET_KEY": SECRET})
    finally:
        cli.commands.pop("pool-size-probe", None)
    assert out.exit_code == 0, out.output
    assert seen == [52]
