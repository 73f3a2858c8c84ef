"""Shared fixtures: a migrated database on SQLite and on PostgreSQL, settings, API client.

PostgreSQL comes from $CALSYNC_TEST_DATABASE_URL or 127.0.0.1:5432 (user postgres). With
CI=true a missing PostgreSQL fails the run instead of skipping.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from calsync.config import Settings, load_settings
from calsync.db.models import Base
from calsync.db.session import Database

# the account servers (Radicale with passwords, an iCloud root, a non-CalDAV URL) that the
# connection tests of the API, the pages and the roles share
pytest_plugins = ("tests.api_connections_support",)

IN_CI = os.environ.get("CI", "").lower() == "true"
PG_ADMIN_URL = os.environ.get("CALSYNC_TEST_DATABASE_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
SECRET = "test-secret-key-0123456789abcdef"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ICS_CORPUS = Path(os.environ.get("CALSYNC_ICS_CORPUS", SHARED / "ics-corpus"))


def need(condition: bool, reason: str) -> None:
    """Skip locally when a real part is missing; fail in CI."""
    if not condition:
        if IN_CI:
            pytest.fail(f"required in CI: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated to head."""
    admin_url = PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text("select 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means no server
        need(False, f"PostgreSQL not reachable at {PG_ADMIN_URL}: {type(exc).__name__}")
        raise
    name = f"calsync_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    db = Database(url)
    db.upgrade()
    db.dispose()
    yield url
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _truncate_pg(db: Database) -> None:
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with db.engine.begin() as c:
        c.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


def make_db(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Database:
    if kind == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'calsync.db'}")
        db.upgrade()
        return db
    url = request.getfixturevalue("pg_database_url")
    db = Database(url)
    _truncate_pg(db)
    # what the process remembers of "this database" is of an earlier test's data: the
    # worker's once-per-interval tenant onboarding (keyed by the URL every PostgreSQL test
    # shares) would skip this test's first tick
    from calsync.sync import tenants

    tenants._last_onboard.pop(url, None)
    return db


def alembic_to(db: Database, action: str, revision: str) -> None:
    """``alembic upgrade|downgrade <revision>`` on ``db`` (migration tests)."""
    from alembic import command
    from alembic.config import Config

    from calsync.db.session import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, action)(cfg, revision)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated, empty database; every storage test runs on both engines."""
    database = make_db(request.param, tmp_path, request)
    yield database
    database.dispose()


@pytest.fixture
def sqlite_db(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Database]:
    database = make_db("sqlite", tmp_path, request)
    yield database
    database.dispose()


@pytest.fixture
def cli_env(sqlite_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Database:
    """The CLI run in-process against ``sqlite_db`` (its URL and the test secret in the
    environment, no config file found)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CALSYNC_CONFIG", raising=False)
    monkeypatch.setenv("CALSYNC_DATABASE_URL", sqlite_db.url)
    monkeypatch.setenv("CALSYNC_SECRET_KEY", SECRET)
    return sqlite_db


@pytest.fixture
def settings(db: Database) -> Settings:
    base = load_settings(env={"CALSYNC_SECRET_KEY": SECRET})
    return replace(base, database=replace(base.database, url=db.url))


@pytest.fixture
def app_client(settings: Settings, db: Database):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from calsync.api.app import create_app

    with TestClient(create_app(settings, db)) as client:
        yield client


@pytest.fixture
def make_token(db: Database):  # type: ignore[no-untyped-def]
    from calsync.api.auth import create_api_token

    def _make(role: str, user_id: str | None = None, name: str | None = None) -> str:
        with db.session() as s:
            return create_api_token(s, name or f"{role}-{uuid.uuid4().hex[:6]}", role, user_id)

    return _make
