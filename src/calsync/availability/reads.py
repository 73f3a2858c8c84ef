"""Where availability reads run: their connections, and statements run on the driver.

:func:`reading` gives a check or search a session without a transaction. On PostgreSQL
it comes from :func:`read_engine`, whose connections run in autocommit and were started
with generic plans (``plan_cache_mode``): a READ COMMITTED transaction gives each
statement its own snapshot anyway, so ``BEGIN``/``ROLLBACK`` would only add round trips,
and PostgreSQL re-planned the prepared check statement with its parameters ("custom
plans"), which cost ~10x running it. The rest of calsync keeps the server's default on
the main engine. On SQLite each statement is its own (WAL) read transaction: it never
waits for a writer and takes no lock.

:class:`Prepared` runs a fixed statement on the DBAPI connection under a session: it is
compiled once per dialect, its parameters are converted by the statement's own bind
types, and rows come back as the driver's tuples (no SQLAlchemy result processing), which
is most of what a check costs otherwise. A driver error is raised as SQLAlchemy's
:class:`~sqlalchemy.exc.DBAPIError` (parameters hidden), as an ``execute`` would.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from calsync.db.session import Database, make_engine

READ_SETTINGS = {"plan_cache_mode": "force_generic_plan"}
_read_engines: weakref.WeakKeyDictionary[Database, Engine] = weakref.WeakKeyDictionary()
_read_engines_lock = threading.Lock()


def read_engine(db: Database) -> Engine:
    """The engine checks and searches read on: ``db.engine`` on SQLite; on PostgreSQL one
    of its own (made on first use, disposed with ``db.engine``)."""
    if db.dialect == "sqlite":
        return db.engine
    engine = _read_engines.get(db)
    if engine is not None:
        return engine
    with _read_engines_lock:
        engine = _read_engines.get(db)
        if engine is None:
            engine = make_engine(db.url, echo=bool(db.engine.echo),
                                 server_settings=READ_SETTINGS, isolation_level="AUTOCOMMIT")
            _read_engines[db] = engine
            event.listen(db.engine, "engine_disposed", lambda _e: engine.dispose())
    return engine


@contextlib.contextmanager
def reading(db: Database) -> Iterator[Session]:
    """A session for one check, search or schedule (reads only), bound to one connection
    of :func:`read_engine` that is in no transaction."""
    with read_engine(db).connect() as conn, Session(bind=conn) as session:
        yield session


def _connection(session: Session) -> Connection:
    """The connection a session reads on: the one it is bound to (:func:`reading`, the
    SQLite write session) or its transaction's."""
    bind = session.get_bind()
    return bind if isinstance(bind, Connection) else session.connection()


class _Compiled:
    def __init__(self, statement: ClauseElement, dialect: Any) -> None:
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
        self.sql = compiled.string
        self.order: list[str] | None = (list(compiled.positiontup or ())
                                        if compiled.positional else None)
        self.convert: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                self.convert[name] = process


class Prepared:
    """A statement whose text never changes, run on the driver (see the module
    docstring): ``statements`` maps a dialect name to its form (``""``: any other)."""

    def __init__(self, statements: Mapping[str, ClauseElement]) -> None:
        self.statements = statements
        self._compiled: dict[str, _Compiled] = {}

    def rows(self, session: Session, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Every row for ``params`` (by bind name), as the driver gives them."""
        conn = _connection(session)
        dialect = conn.dialect
        key = f"{dialect.name}+{dialect.driver}"
        compiled = self._compiled.get(key)
        if compiled is None:
            statement = self.statements.get(dialect.name, self.statements[""])
            compiled = self._compiled[key] = _Compiled(statement, dialect)
        convert = compiled.convert
        values = {k: (convert[k](v) if k in convert else v) for k, v in params.items()}
        args: Any = (values if compiled.order is None
                     else [values[name] for name in compiled.order])
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cursor = raw.cursor()
        try:
            cursor.execute(compiled.sql, args)
            return cast("list[tuple[Any, ...]]", cursor.fetchall())
        except dialect.loaded_dbapi.Error as exc:
            if dialect.is_disconnect(exc, raw, cursor):
                conn.invalidate(exc)
            raise DBAPIError.instance(compiled.sql, None, exc, dialect.loaded_dbapi.Error,
                                      hide_parameters=True, dialect=dialect) from exc
        finally:
            cursor.close()
