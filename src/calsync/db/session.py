"""Engine and session set-up, SQLite pragmas, and migrating to head.

On SQLite every session that may write takes the write lock when it begins (``BEGIN
IMMEDIATE``): a deferred transaction that reads and then writes cannot wait for another
writer (SQLite answers "database is locked" at once instead of applying ``busy_timeout``
when the snapshot it read is stale), so writers queue for the lock up front instead.
Sessions that only read use :meth:`Database.read_session` and never wait for writers (WAL).
A write session opened inside another one on the same thread would wait for itself: that
programming error raises at once instead of after the busy timeout.

PostgreSQL pools check a connection on checkout without a round trip when they can: a
connection whose server went away (a restart, ``pg_terminate_backend``) has its socket
readable (the server's farewell or EOF), and one that sat idle longer than
:data:`IDLE_PING_SECONDS` may have been dropped silently; only those are pinged with
``SELECT 1``. A failed ping invalidates the pool (every connection older than now is
replaced), as ``pool_pre_ping`` would, without its round trip on every checkout.
"""

from __future__ import annotations

import contextlib
import select
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, exc, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from calsync.config import Settings

MIGRATIONS = Path(__file__).parent / "migrations"


def _normalise_url(url: str) -> str:
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


# A pooled PostgreSQL connection idle longer than this is pinged before it is handed out.
IDLE_PING_SECONDS = 5.0


def _has_input(dbapi_conn: Any) -> bool:
    """Whether the server sent something to an idle connection (its farewell, EOF):
    a zero-timeout poll of the socket, no round trip."""
    try:
        ready, _, _ = select.select([dbapi_conn.fileno()], [], [], 0)
    except (OSError, ValueError, AttributeError):
        return True  # a closed socket, or none to look at: let the ping decide
    return bool(ready)


def _ping(dbapi_conn: Any) -> bool:
    try:
        cur = dbapi_conn.cursor()
        try:
            cur.execute("SELECT 1")
        finally:
            cur.close()
    except Exception:  # noqa: BLE001 - any failure means the connection is gone
        return False
    return True


def _check_on_checkout(engine: Engine) -> None:
    """Ping a connection on checkout only when it may be gone (see the module docstring)."""

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_conn, record):  # type: ignore[no-untyped-def]
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _alive(dbapi_conn, record, _proxy):  # type: ignore[no-untyped-def]
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None:
            return  # fresh from connect
        if time.monotonic() - idle_since < IDLE_PING_SECONDS and not _has_input(dbapi_conn):
            return
        if not _ping(dbapi_conn):
            raise exc.InvalidatePoolError("the pooled connection is gone")


def _with_server_settings(url: str, settings: Mapping[str, str]) -> dict[str, Any]:
    """libpq ``options`` that start each session with ``settings`` (``-c key=value``)."""
    if not settings:
        return {}
    given = make_url(url).query.get("options") or ""
    options = " ".join([*([given] if isinstance(given, str) and given else []),
                        *(f"-c {k}={v}" for k, v in settings.items())])
    return {"options": options}


def make_engine(url: str, echo: bool = False, *,
                server_settings: Mapping[str, str] | None = None,
                isolation_level: str | None = None, pool_size: int = 10) -> Engine:
    """An engine for ``url``. PostgreSQL only: ``server_settings`` are set once per
    connection when it opens; ``isolation_level`` (e.g. ``"AUTOCOMMIT"``) is every
    connection's default; ``pool_size`` connections are kept (20 more may open at once)."""
    url = _normalise_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args={"timeout": 30,
                                                             "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            # Let SQLAlchemy emit BEGIN itself so "BEGIN IMMEDIATE" can be used for locks.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            # Read pages through the OS cache, shared by every connection, instead of each
            # connection's 2 MB page cache: availability reads hop between index and rows.
            cur.execute("PRAGMA mmap_size=268435456")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):  # type: ignore[no-untyped-def]
            mode = conn.info.pop("sqlite_begin", "BEGIN")
            conn.exec_driver_sql(mode)

        return engine
    extra: dict[str, Any] = {}
    if isolation_level is not None:
        extra["isolation_level"] = isolation_level
    engine = create_engine(url, echo=echo, pool_size=pool_size, max_overflow=20,
                           connect_args=_with_server_settings(url, server_settings or {}),
                           **extra)
    _check_on_checkout(engine)
    return engine


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run Alembic migrations up to ``revision`` on ``engine``."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def pool_size_for(settings: Settings) -> int:
    """Connections a process keeps: one per concurrent sync (``sync.concurrency``) plus the
    scheduler's jobs and listeners; never fewer than 10."""
    return max(10, settings.sync.concurrency + 4)


class Database:
    """An engine plus session factories: :meth:`session` (may write: on SQLite it holds the
    write lock from its start) and :meth:`read_session` (reads only)."""

    def __init__(self, url: str, echo: bool = False, pool_size: int = 10) -> None:
        """``pool_size``: PostgreSQL connections kept open (at least one per thread that
        uses the database at once: a worker's ``sync.concurrency`` and a few)."""
        self.url = _normalise_url(url)
        self.engine = make_engine(url, echo=echo, pool_size=pool_size)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._writing = threading.local()
        # Threads of this process queue for SQLite's write lock here: a waiter wakes as soon
        # as the lock is free, where SQLite's busy handler would sleep 1-100 ms between
        # tries. Other processes still wait in busy_timeout.
        self._write_lock = threading.Lock()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def upgrade(self) -> None:
        upgrade(self.engine)

    def is_migrated(self) -> bool:
        return inspect(self.engine).has_table("users")

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A write transaction: commits on success, rolls back on error. On SQLite it takes
        the write lock up front (``BEGIN IMMEDIATE``, one writer at a time across processes,
        waiting up to ``busy_timeout``); on PostgreSQL callers take row locks themselves
        (``with_for_update``) where they read before they write."""
        if self.dialect != "sqlite":
            with self.sessions() as s:
                with s.begin():
                    yield s
            return
        if getattr(self._writing, "active", False):
            raise RuntimeError("a write session was opened inside another one on the same "
                               "thread; SQLite would wait for itself")
        self._writing.active = True
        self._write_lock.acquire()
        try:
            with self.engine.connect() as conn:
                conn.info["sqlite_begin"] = "BEGIN IMMEDIATE"
                with conn.begin():
                    s = Session(bind=conn, expire_on_commit=False,
                                join_transaction_mode="conditional_savepoint")
                    try:
                        yield s
                        s.flush()
                    finally:
                        s.close()
        finally:
            self._write_lock.release()
            self._writing.active = False

    @contextlib.contextmanager
    def read_session(self) -> Iterator[Session]:
        """A read-only transaction: never waits for a writer (WAL), rolled back at the end."""
        with self.sessions() as s:
            try:
                yield s
            finally:
                s.rollback()

    def dispose(self) -> None:
        self.engine.dispose()
