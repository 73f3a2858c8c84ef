"""Engine and session set-up, SQLite pragmas, and migrating to head.

On SQLite every session that may write takes the write lock when it begins (``BEGIN
IMMEDIATE``): a deferred transaction that reads and then writes cannot wait for another
writer (SQLite answers "database is locked" at once instead of applying ``busy_timeout``
when the snapshot it read is stale), so writers queue for the lock up front instead.
Sessions that only read use :meth:`Database.read_session` and never wait for writers (WAL).
A write session opened inside another one on the same thread would wait for itself: that
programming error raises at once instead of after the busy timeout.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"


def _normalise_url(url: str) -> str:
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def make_engine(url: str, echo: bool = False) -> Engine:
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
    return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=20)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run Alembic migrations up to ``revision`` on ``engine``."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


class Database:
    """An engine plus session factories: :meth:`session` (may write: on SQLite it holds the
    write lock from its start) and :meth:`read_session` (reads only)."""

    def __init__(self, url: str, echo: bool = False) -> None:
        self.url = _normalise_url(url)
        self.engine = make_engine(url, echo=echo)
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

    # Kept for the callers that say so explicitly; every write session is locked now.
    locked_session = session

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
