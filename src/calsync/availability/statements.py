"""The statements availability reads, built once with SQLAlchemy Core.

Ids, start and end are bound per call; fixed values (the watched roles) are written into
the SQL, so the text of a statement never changes: it is compiled once per dialect and
run on the driver's connection (:mod:`calsync.availability.reads`). Tables are aliased
and only the first part of a ``UNION ALL`` names or types its columns, which keeps the
text short (psycopg caches its parsing of a statement up to 4 KB).

Both busy tables carry a copy of each row's span and a ``long_span`` mark (longer than
:data:`SHORT_SPAN`), kept right by database triggers (migration 0009), with the index
``(user_id, long_span, start_at, end_at)``. A short row that overlaps ``[start, end)``
starts after ``start - SHORT_SPAN``, so each user costs two narrow index ranges (short
rows from ``start - LOOKBACK``, long rows up to ``end``), not a walk over all their rows;
only the rows found are joined to their item or event.

Statements (bound parameters ``ids``, and ``start``, ``end``, ``lookback_from`` where
there is a range), each a dict by dialect name (``""``: any other dialect):

- :data:`PEOPLE`: ``uid, name, timezone, working_hours, private_mode, calendar name,
  role, calendar status, last success, connection status, provider`` -- a user outer
  joined to their primary/conflict calendars, one row per watched calendar or one without;
- :data:`BUSY_DETAILED` / :data:`CHECK` / :data:`BUSY_TIMES` / :data:`SEARCH`: see
  :func:`busy_statement`;

and :data:`TEAMS`: ``item_pk, user_id`` of the items in ``pks`` (an expanding list), run
through SQLAlchemy.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    CompoundSelect,
    Select,
    TypeDecorator,
    and_,
    bindparam,
    false,
    literal_column,
    null,
    select,
    true,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import aliased
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import JSON, Boolean, NullType, String, Text, TypeEngine

from calsync.availability.busy import WATCHED_ROLES
from calsync.db.models import (
    Calendar,
    Connection,
    ExternalBusy,
    ExternalEvent,
    ItemAssignee,
    ScheduleItem,
    User,
)

# The ``long_span`` bound of migration 0009 (its triggers hard-code one day).
SHORT_SPAN = dt.timedelta(days=1)
# A minute more than the bound: SQLite's julianday() rounds to milliseconds.
LOOKBACK = SHORT_SPAN + dt.timedelta(minutes=1)


class IdList(TypeDecorator[list[str]]):
    """A list of user ids bound as one parameter: JSON text for SQLite's ``json_each``,
    a ``VARCHAR[]`` for PostgreSQL."""

    impl = String
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(ARRAY(String))  # type: ignore[no-any-return]
        return dialect.type_descriptor(String())  # type: ignore[no-any-return]

    def process_bind_param(self, value: list[str] | None, dialect: Any) -> Any:
        return json.dumps(value) if dialect.name == "sqlite" else value


IDS: BindParameter[Any] = bindparam("ids", type_=IdList())
START: BindParameter[Any] = bindparam("start")
END: BindParameter[Any] = bindparam("end")
LOOKBACK_FROM: BindParameter[Any] = bindparam("lookback_from")
_ROLES: list[Any] = [literal_column(f"'{role}'") for role in WATCHED_ROLES]


class _AmongIds(ColumnElement[Any]):
    """``column`` is one of the bound ids. Unlike an expanding ``IN``, whose SQL is
    re-rendered for every count, the statement text stays the same for any number of
    ids: ``IN (SELECT value FROM json_each(:ids))`` on SQLite, ``= ANY(:ids)`` elsewhere;
    both probe the index once per id."""

    inherit_cache = True
    type = NullType()  # a Boolean type would make SQLite write "... = 1" (no index)
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement)]

    def __init__(self, column: Any) -> None:
        self.column = column


@compiles(_AmongIds, "sqlite")
def _among_ids_sqlite(element: _AmongIds, compiler: Any, **kw: Any) -> str:
    return (f"{compiler.process(element.column, **kw)} IN "
            f"(SELECT value FROM json_each({compiler.process(IDS, **kw)}))")


@compiles(_AmongIds)
def _among_ids(element: _AmongIds, compiler: Any, **kw: Any) -> str:
    return f"{compiler.process(element.column, **kw)} = ANY({compiler.process(IDS, **kw)})"


_a = aliased(ItemAssignee, name="a")
_i = aliased(ScheduleItem, name="i")
_b = aliased(ExternalBusy, name="b")
_e = aliased(ExternalEvent, name="e")
_c = aliased(Calendar, name="c")
_n = aliased(Connection, name="n")
_u = aliased(User, name="u")


class _Watched:
    """A user's primary/conflict calendars and their connection: outer joins, or (for
    PostgreSQL) a ``LATERAL`` subquery per user. A generic plan cannot know how many ids
    come and, guessing few, hashed every connection or calendar for the joins; the
    subquery reads each user's rows on their indexes whatever it guesses."""

    def __init__(self, lateral: bool) -> None:
        self.lateral = lateral
        columns: tuple[Any, ...] = (_n.status, _n.provider, _c.name, _c.role, _c.status,
                                    _c.last_success_at)
        if lateral:
            self.rows = (select(*(c.label(f"w{i}") for i, c in enumerate(columns)))
                         .select_from(_n)
                         .outerjoin(_c, and_(_c.connection_id == _n.id, _c.role.in_(_ROLES)))
                         .where(_n.user_id == _u.id)
                         .offset(literal_column("0"))  # not pulled up into the joins
                         .lateral("w"))
            columns = tuple(self.rows.c[f"w{i}"] for i in range(len(columns)))
        (self.conn_status, self.provider, self.cal_name, self.role, self.cal_status,
         self.last_success) = columns

    def select(self, *columns: Any) -> Select[Any]:
        query = select(*columns).select_from(_u)
        if self.lateral:
            query = query.outerjoin(self.rows, true())
        else:
            query = (query.outerjoin(_n, _n.user_id == _u.id)
                     .outerjoin(_c, and_(_c.connection_id == _n.id, _c.role.in_(_ROLES))))
        return query.where(_AmongIds(_u.id), _u.deleted_at.is_(None))


def people_statement(lateral: bool = False) -> Select[Any]:
    w = _Watched(lateral)
    return w.select(_u.id, _u.name, _u.timezone, _u.working_hours, _u.private_mode,
                    w.cal_name, w.role, w.cal_status, w.last_success, w.conn_status,
                    w.provider)


def _windows(user_id: Any, long_span: Any, start_at: Any,
             end_at: Any) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """(short rows, long rows) of the users overlapping [start, end): each an index range."""
    overlap = and_(_AmongIds(user_id), start_at < END, end_at > START)
    return (and_(overlap, long_span == false(), start_at >= LOOKBACK_FROM),
            and_(overlap, long_span == true()))


def _typed_null(type_: Any) -> Any:
    return null().cast(type_)


# Unlabelled and untyped: for the later parts of a UNION.
_NULL: ColumnElement[Any] = literal_column("NULL")


def busy_statement(details: bool, with_people: bool = False,
                   lateral: bool = False) -> CompoundSelect[Any]:
    """Item rows then event rows, in one column layout (``src`` says which)::

        0 src, 1 uid, 2 row_id, 3 kind, 4 ext_id, 5 start_at, 6 end_at, 7 status,
        8 all_day, 9 busy_status, 10 response, 11 private_at_source[, 12 title,
        13 job_type, 14 account, 15 location, 16 notes, 17 reason, 18 tzid,
        19 description, 20 organizer, 21 attendees, 22 calendar_name]

    Times come as the driver gives them (text on SQLite), flags as 0/1 on SQLite and
    JSON as text on SQLite. ``with_people`` adds the rows of :data:`PEOPLE`, so a check
    or a search is one statement (one round trip): ``src`` 'person', ``kind`` the
    calendar's role (NULL: no watched calendar), ``start_at`` its last success,
    ``status`` its status, ``busy_status``/``response`` the connection's status and
    provider, ``private_at_source`` the user's private mode; the user's name, timezone
    and working hours and the calendar's name are ``title``, ``job_type``, ``attendees``
    and ``calendar_name`` with ``details``, else four more columns 12-15 (NULL in busy
    rows) in that order. ``lateral``: see :class:`_Watched`.
    """
    # PostgreSQL resolves a UNION's column types part by part: a NULL in the first part
    # gets the type the rest need, the other parts' NULLs follow it.
    first: list[Any] = [
        literal_column("'item'").label("src"), _a.user_id, _i.pk, _i.kind, _i.ext_id,
        _a.start_at, _a.end_at, _i.status, _i.all_day, _typed_null(String),
        _typed_null(String), _typed_null(Boolean)]
    events: list[Any] = [
        literal_column("'event'"), _b.user_id, _e.id, _NULL, _e.remote_id, _b.start_at,
        _b.end_at, _e.status, _e.all_day, _e.busy_status, _e.response, _e.private_at_source]
    w = _Watched(lateral)
    person: list[Any] = [
        literal_column("'person'"), _u.id, _NULL, w.role, _NULL, w.last_success, _NULL,
        w.cal_status, _NULL, w.conn_status, w.provider, _u.private_mode]
    if details:
        first += [_i.title, _i.job_type, _i.account, _i.location, _i.notes, _i.reason,
                  _i.tzid, _typed_null(Text), _typed_null(Text), _typed_null(JSON),
                  _typed_null(Text)]
        events += [_e.summary, _NULL, _NULL, _e.location, _NULL, _NULL, _NULL,
                   _e.description, _e.organizer, _e.attendees, _c.name]
        person += [_u.name, _u.timezone, *[_NULL] * 7, _u.working_hours, w.cal_name]
    elif with_people:
        first += [_typed_null(Text), _typed_null(Text), _typed_null(JSON), _typed_null(Text)]
        events += [_NULL] * 4
        person += [_u.name, _u.timezone, _u.working_hours, w.cal_name]
    later = [literal_column("'item'"), *first[1:9], *[_NULL] * 3,
             *(first[12:19] if details else []), *[_NULL] * (len(first) - 19 if details
                                                           else len(first) - 12)]
    parts = []
    for n, window in enumerate(_windows(_a.user_id, _a.long_span, _a.start_at, _a.end_at)):
        parts.append(select(*(first if n == 0 else later)).select_from(_a)
                     .join(_i, _i.pk == _a.item_pk)
                     .where(window, _i.deleted_at.is_(None)))
    for window in _windows(_b.user_id, _b.long_span, _b.start_at, _b.end_at):
        parts.append(select(*events).select_from(_b)
                     .join(_e, _e.id == _b.event_id)
                     .join(_c, _c.id == _e.calendar_id)
                     .where(window, _c.role.in_(_ROLES)))
    if with_people:
        parts.append(w.select(*person))
    return union_all(*parts)


# Each statement by dialect name ("" for any other).
PEOPLE = {"": people_statement(), "postgresql": people_statement(lateral=True)}
BUSY_DETAILED = {"": busy_statement(details=True)}
CHECK = {"": busy_statement(details=True, with_people=True),
         "postgresql": busy_statement(details=True, with_people=True, lateral=True)}
BUSY_TIMES = {"": busy_statement(details=False)}
SEARCH = {"": busy_statement(details=False, with_people=True),
          "postgresql": busy_statement(details=False, with_people=True, lateral=True)}
TEAMS = (select(ItemAssignee.item_pk, ItemAssignee.user_id)
         .where(ItemAssignee.item_pk.in_(bindparam("pks", expanding=True))))
