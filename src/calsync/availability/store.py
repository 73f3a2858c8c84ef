"""Loading what the busy model needs for users x range: one statement, whatever the count.

- people: the users by primary key, outer-joined to their primary/conflict calendars and
  each calendar's connection status (one row per watched calendar, or one without);
- busy rows: schedule items through ``item_assignees`` and external occurrences from
  ``external_busy``;

all in one ``UNION ALL`` for a check (a slot search reads people, then spans).

Both busy tables carry a copy of each row's span and a ``long_span`` mark (longer than
:data:`SHORT_SPAN`), kept right by database triggers (migration 0009), with the index
``(user_id, long_span, start_at, end_at)``. A short row that overlaps ``[start, end)``
starts after ``start - SHORT_SPAN``, so each user costs two narrow index ranges (short
rows from ``start - LOOKBACK``, long rows up to ``end``), not a walk over all their rows;
only the rows found are joined to their item or event.

Details (titles, notes, attendees...) are read only when asked: checks and schedules
show conflicts, a slot search needs times and the fields the busy rules read. Ids are
sent in chunks so an ``IN`` list stays small. Returns plain frozen records from
:mod:`calsync.availability.busy`; nothing here decides who is busy.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    CompoundSelect,
    Engine,
    TypeDecorator,
    and_,
    bindparam,
    event,
    false,
    literal_column,
    null,
    select,
    true,
    type_coerce,
    union_all,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.visitors import InternalTraversal
from sqlalchemy.types import JSON, Boolean, DateTime, Integer, NullType, String, Text

from calsync.availability.busy import (
    WATCHED_ROLES,
    CalendarHealth,
    ExternalEntry,
    Interval,
    ScheduleEntry,
    UserBusyInput,
    UserProfile,
    external_fields_are_busy,
    schedule_status_is_busy,
)
from calsync.db.models import (
    Calendar,
    Connection,
    ExternalBusy,
    ExternalEvent,
    ItemAssignee,
    ScheduleItem,
    User,
)
from calsync.db.session import Database, make_engine
from calsync.errors import NotFound
from calsync.timezones import UTC

CHUNK = 500
# The ``long_span`` bound of migration 0009 (its triggers hard-code one day).
SHORT_SPAN = dt.timedelta(days=1)
# A minute more than the bound: SQLite's julianday() rounds to milliseconds.
LOOKBACK = SHORT_SPAN + dt.timedelta(minutes=1)


class _IdList(TypeDecorator[list[str]]):
    """A list of user ids bound as one parameter: JSON text for SQLite's ``json_each``,
    an array for PostgreSQL."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: list[str] | None, dialect: Any) -> Any:
        return json.dumps(value) if dialect.name == "sqlite" else value


class _AmongIds(ColumnElement[Any]):
    """``column`` is one of the bound ids. Unlike an expanding ``IN``, whose SQL is
    re-rendered on every execution, the statement text stays the same for any number of
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
            f"(SELECT value FROM json_each({compiler.process(_IDS, **kw)}))")


@compiles(_AmongIds)
def _among_ids(element: _AmongIds, compiler: Any, **kw: Any) -> str:
    return (f"{compiler.process(element.column, **kw)} = "
            f"ANY(CAST({compiler.process(_IDS, **kw)} AS VARCHAR[]))")


# Statements are built once; ids, start and end are bound per call. Fixed values (the
# watched roles) are written into the SQL, so no execution re-renders it.
_IDS: BindParameter[Any] = bindparam("ids", type_=_IdList())
_ROLES: list[Any] = [literal_column(f"'{role}'") for role in WATCHED_ROLES]
_START: BindParameter[Any] = bindparam("start")
_END: BindParameter[Any] = bindparam("end")
_FROM: BindParameter[Any] = bindparam("lookback_from")

_PEOPLE = (select(User.id, User.name, User.timezone, User.working_hours, User.private_mode,
                  Calendar.name, Calendar.role, Calendar.status, Calendar.last_success_at,
                  Connection.status, Connection.provider)
           .outerjoin(Connection, Connection.user_id == User.id)
           .outerjoin(Calendar, and_(Calendar.connection_id == Connection.id,
                                     Calendar.role.in_(_ROLES)))
           .where(_AmongIds(User.id), User.deleted_at.is_(None)))


def _windows(user_id: Any, long_span: Any, start_at: Any,
             end_at: Any) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """(short rows, long rows) of the users overlapping [start, end): each an index range."""
    overlap = and_(_AmongIds(user_id), start_at < _END, end_at > _START)
    return (and_(overlap, long_span == false(), start_at >= _FROM),
            and_(overlap, long_span == true()))


def _raw(column: Any) -> Any:
    """A datetime column read as the driver gives it (no per-value type processing);
    :func:`_instant_reader` turns it into aware UTC, once per distinct value."""
    return type_coerce(column, String)


def _busy_statement(details: bool, with_people: bool = False) -> CompoundSelect[Any]:
    """Item rows then event rows, in one column layout (``src`` says which)::

        src, uid, row_id, kind, ext_id, start_at, end_at, status, all_day,
        busy_status, response, private_at_source[, title, job_type, account, location,
        notes, reason, tzid, description, organizer, attendees, calendar_name]

    ``with_people`` (details only) adds the rows of :data:`_PEOPLE` in the same layout, so
    a check is one statement (one round trip): ``src`` 'person', ``kind`` the calendar's
    role (NULL: no watched calendar), ``start_at`` its last success, ``status`` its status,
    ``busy_status``/``response`` the connection's status and provider,
    ``private_at_source`` the user's private mode, ``title``/``job_type``/``attendees`` the
    user's name, timezone and working hours, ``calendar_name`` the calendar's name.
    """
    nothing = null()
    item_cols: list[Any] = [
        literal_column("'item'").label("src"), ItemAssignee.user_id.label("uid"),
        ScheduleItem.pk.label("row_id"), ScheduleItem.kind.label("kind"),
        ScheduleItem.ext_id.label("ext_id"), _raw(ItemAssignee.start_at).label("start_at"),
        _raw(ItemAssignee.end_at).label("end_at"), ScheduleItem.status.label("status"),
        ScheduleItem.all_day.label("all_day"),
        nothing.cast(String).label("busy_status"), nothing.cast(String).label("response"),
        nothing.cast(Boolean).label("private_at_source")]
    event_cols: list[Any] = [
        literal_column("'event'").label("src"), ExternalBusy.user_id.label("uid"),
        ExternalEvent.id.label("row_id"), nothing.cast(String).label("kind"),
        ExternalEvent.remote_id.label("ext_id"), _raw(ExternalBusy.start_at).label("start_at"),
        _raw(ExternalBusy.end_at).label("end_at"), ExternalEvent.status.label("status"),
        ExternalEvent.all_day.label("all_day"), ExternalEvent.busy_status.label("busy_status"),
        ExternalEvent.response.label("response"),
        ExternalEvent.private_at_source.label("private_at_source")]
    if details:
        item_cols += [ScheduleItem.title.label("title"), ScheduleItem.job_type,
                      ScheduleItem.account, ScheduleItem.location.label("location"),
                      ScheduleItem.notes, ScheduleItem.reason, ScheduleItem.tzid,
                      nothing.cast(Text).label("description"),
                      nothing.cast(Text).label("organizer"),
                      nothing.cast(JSON).label("attendees"),
                      nothing.cast(Text).label("calendar_name")]
        event_cols += [ExternalEvent.summary.label("title"), nothing.cast(String),
                       nothing.cast(Text), ExternalEvent.location.label("location"),
                       nothing.cast(Text), nothing.cast(Text), nothing.cast(String),
                       ExternalEvent.description.label("description"),
                       ExternalEvent.organizer.label("organizer"),
                       ExternalEvent.attendees.label("attendees"),
                       Calendar.name.label("calendar_name")]
    parts = []
    for window in _windows(ItemAssignee.user_id, ItemAssignee.long_span,
                           ItemAssignee.start_at, ItemAssignee.end_at):
        parts.append(select(*item_cols).select_from(ItemAssignee)
                     .join(ScheduleItem, ScheduleItem.pk == ItemAssignee.item_pk)
                     .where(window, ScheduleItem.deleted_at.is_(None)))
    for window in _windows(ExternalBusy.user_id, ExternalBusy.long_span,
                           ExternalBusy.start_at, ExternalBusy.end_at):
        parts.append(select(*event_cols).select_from(ExternalBusy)
                     .join(ExternalEvent, ExternalEvent.id == ExternalBusy.event_id)
                     .join(Calendar, Calendar.id == ExternalEvent.calendar_id)
                     .where(window, Calendar.role.in_(_ROLES)))
    if with_people:
        n_text, n_str = nothing.cast(Text), nothing.cast(String)
        parts.append(select(
            literal_column("'person'"), User.id, nothing.cast(Integer), Calendar.role, n_str,
            _raw(Calendar.last_success_at), nothing.cast(DateTime(timezone=True)),
            Calendar.status, nothing.cast(Boolean), Connection.status, Connection.provider,
            User.private_mode, User.name, User.timezone, n_text, n_text, n_text, n_text,
            n_str, n_text, n_text, User.working_hours, Calendar.name)
            .select_from(User)
            .outerjoin(Connection, Connection.user_id == User.id)
            .outerjoin(Calendar, and_(Calendar.connection_id == Connection.id,
                                      Calendar.role.in_(_ROLES)))
            .where(_AmongIds(User.id), User.deleted_at.is_(None)))
    return union_all(*parts)


_BUSY_DETAILED = _busy_statement(details=True)
_CHECK = _busy_statement(details=True, with_people=True)
_BUSY_TIMES = _busy_statement(details=False)

_TEAMS = (select(ItemAssignee.item_pk, ItemAssignee.user_id)
          .where(ItemAssignee.item_pk.in_(bindparam("pks", expanding=True))))


def _instant_reader() -> Callable[[Any], dt.datetime]:
    """Driver value -> aware UTC datetime, as :class:`calsync.db.models.UTCDateTime`
    reads it. SQLite gives naive UTC text, parsed once per distinct string (the rows of
    one range repeat few instants); PostgreSQL gives aware datetimes."""
    memo: dict[str, dt.datetime] = {}

    def read(value: Any) -> dt.datetime:
        if isinstance(value, str):
            got = memo.get(value)
            if got is None:
                got = memo[value] = dt.datetime.fromisoformat(value).replace(tzinfo=UTC)
            return got
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]

    return read


# PostgreSQL re-plans a prepared statement with its parameters ("custom plans") while it
# thinks that pays; for the check statement planning costs ~10x running it. Reads get
# connections of their own that use generic plans from the start (one setting per
# connection, not a SET and RESET per request) and run in autocommit; the other
# statements of calsync keep the server's default on the main engine's connections.
READ_SETTINGS = {"plan_cache_mode": "force_generic_plan"}
_read_engines: weakref.WeakKeyDictionary[Database, Engine] = weakref.WeakKeyDictionary()
_read_engines_lock = threading.Lock()


def read_engine(db: Database) -> Engine:
    """The PostgreSQL engine checks and searches read on (made on first use, disposed
    with ``db.engine``)."""
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
    """A session for one check or search (reads only). On PostgreSQL it runs in autocommit
    on :func:`read_engine`: a READ COMMITTED transaction gives each statement its own
    snapshot anyway, so the ``BEGIN`` and ``ROLLBACK`` would only add two round trips to
    a request. On SQLite it is :meth:`Database.read_session` (WAL: never waits for a
    writer)."""
    if db.dialect == "sqlite":
        with db.read_session() as session:
            yield session
        return
    with read_engine(db).connect() as conn, Session(bind=conn) as session:
        yield session


def _chunks(ids: Sequence[str]) -> Iterator[list[str]]:
    for i in range(0, len(ids), CHUNK):
        yield list(ids[i:i + CHUNK])


def _people(rows: Iterable[tuple[Any, ...]], wanted: Sequence[str],
            instant: Callable[[Any], dt.datetime]
            ) -> tuple[dict[str, UserProfile], dict[str, list[CalendarHealth]]]:
    """Profiles and calendar health from ``(uid, name, tz, hours, private, calendar name,
    role, calendar status, last success, connection status, provider)`` rows."""
    profiles: dict[str, UserProfile] = {}
    calendars: dict[str, list[CalendarHealth]] = {u: [] for u in wanted}
    for (uid, name, tzid, hours, private, cal_name, role, cal_status, success,
         conn_status, provider) in rows:
        if uid not in profiles:
            profiles[uid] = UserProfile(uid, name, tzid, dict(hours or {}), bool(private))
        if role is not None:
            calendars[uid].append(CalendarHealth(
                cal_name or "", role, cal_status or "ok",
                None if success is None else instant(success), conn_status or "ok",
                provider or ""))
    missing = [u for u in wanted if u not in profiles]
    if missing:
        raise NotFound(f"user {missing[0]!r} not found")
    return profiles, calendars


def load_people(session: Session, user_ids: Sequence[str]
                ) -> tuple[dict[str, UserProfile], dict[str, list[CalendarHealth]]]:
    """Live users by id and their primary/conflict calendars' health. Raises NotFound
    naming the first unknown (or deleted) id."""
    wanted = list(dict.fromkeys(user_ids))
    conn = session.connection()
    rows = [tuple(r) for chunk in _chunks(wanted) for r in conn.execute(_PEOPLE, {"ids": chunk})]
    return _people(rows, wanted, lambda value: value)


def load_profiles(session: Session, user_ids: Sequence[str]) -> dict[str, UserProfile]:
    """Live users by id. Raises NotFound naming the first unknown id."""
    return load_people(session, user_ids)[0]


def load_calendar_health(session: Session,
                         user_ids: Sequence[str]) -> dict[str, list[CalendarHealth]]:
    """Each user's primary and conflict calendars with their connection's status."""
    return load_people(session, user_ids)[1]


def load_busy_rows(session: Session, user_ids: Sequence[str], start: dt.datetime,
                   end: dt.datetime, details: bool = True, with_assignees: bool = False
                   ) -> tuple[dict[str, list[ScheduleEntry]], dict[str, list[ExternalEntry]]]:
    """Schedule items (cancelled ones included) and external busy occurrences overlapping
    ``[start, end)`` per user, each list sorted by start. Without ``details`` only the
    times and the fields the busy rules need are filled; ``with_assignees`` also fills
    each job's full assignee list (one more query)."""
    statement = _BUSY_DETAILED if details else _BUSY_TIMES
    return _load_rows(session, statement, user_ids, start, end, details, with_assignees,
                      _instant_reader(), None)


def _load_rows(session: Session, statement: CompoundSelect[Any], user_ids: Sequence[str],
               start: dt.datetime, end: dt.datetime, details: bool, with_assignees: bool,
               instant: Callable[[Any], dt.datetime], people: list[tuple[Any, ...]] | None
               ) -> tuple[dict[str, list[ScheduleEntry]], dict[str, list[ExternalEntry]]]:
    items: dict[str, list[ScheduleEntry]] = {u: [] for u in user_ids}
    events: dict[str, list[ExternalEntry]] = {u: [] for u in user_ids}
    params = {"start": start, "end": end, "lookback_from": start - LOOKBACK}
    conn = session.connection()
    item_rows: list[Any] = []
    for chunk in _chunks(list(user_ids)):
        for row in conn.execute(statement, {"ids": chunk, **params}):
            (src, uid, row_id, kind, ext_id, s, e, status, all_day, busy, response,
             private) = row[:12]
            if src == "item":
                item_rows.append(row)
                continue
            if src == "person":
                assert people is not None
                people.append((uid, row[12], row[13], row[21], private, row[22], kind,
                               status, s, busy, response))
                continue
            more: dict[str, Any] = {}
            if details:
                (title, _, _, location, _, _, _, description, organizer, attendees,
                 cal_name) = row[12:]
                more = {"calendar_name": cal_name or "", "summary": title,
                        "description": description, "location": location,
                        "organizer": organizer, "attendees": tuple(attendees or ()),
                        "remote_id": ext_id}
            events[uid].append(ExternalEntry(
                owner_id=uid, start=instant(s), end=instant(e), busy_status=busy or "busy",
                status=status or "confirmed", response=response,
                private_at_source=bool(private), all_day=bool(all_day), event_id=row_id,
                **more))
    team: dict[int, list[str]] = {}
    if with_assignees:
        pks = sorted({row[2] for row in item_rows if row[3] == "job"})
        for i in range(0, len(pks), CHUNK):
            for pk, uid in conn.execute(_TEAMS, {"pks": pks[i:i + CHUNK]}):
                team.setdefault(pk, []).append(uid)
    for row in item_rows:
        _, uid, pk, kind, ext_id, s, e, status, all_day = row[:9]
        more = {}
        if details:
            title, job_type, account, location, notes, reason, tzid = row[12:19]
            more = {"title": title or "", "job_type": job_type, "account": account,
                    "location": location, "notes": notes, "reason": reason, "tzid": tzid}
        items[uid].append(ScheduleEntry(
            kind=kind, id=ext_id, user_id=uid, start=instant(s), end=instant(e),
            status=status, all_day=bool(all_day),
            assignees=tuple(sorted(team.get(pk, [uid]))), **more))
    for entries in items.values():
        entries.sort(key=lambda x: (x.start, x.end, x.id))
    for occurrences in events.values():
        occurrences.sort(key=lambda x: (x.start, x.end, x.event_id or 0))
    return items, events


def load_busy_times(session: Session, user_ids: Sequence[str], start: dt.datetime,
                    end: dt.datetime) -> dict[str, list[Interval]]:
    """Per user, the spans of the items and external occurrences that make them busy
    inside ``[start, end)`` (the busy rules of :mod:`calsync.availability.busy` applied;
    not clipped, not merged, working hours not included). What a slot search needs,
    without building an entry per row."""
    out: dict[str, list[Interval]] = {u: [] for u in user_ids}
    params = {"start": start, "end": end, "lookback_from": start - LOOKBACK}
    instant = _instant_reader()
    conn = session.connection()
    for chunk in _chunks(list(user_ids)):
        for (src, uid, _, _, _, s, e, status, _, busy, response,
             _) in conn.execute(_BUSY_TIMES, {"ids": chunk, **params}):
            if (schedule_status_is_busy(status) if src == "item"
                    else external_fields_are_busy(busy or "busy", status, response)):
                out[uid].append((instant(s), instant(e)))
    return out


def load_schedule(session: Session, user_ids: Sequence[str], start: dt.datetime,
                  end: dt.datetime, with_assignees: bool = False
                  ) -> dict[str, list[ScheduleEntry]]:
    """Schedule items overlapping ``[start, end)`` per user (cancelled ones included)."""
    return load_busy_rows(session, user_ids, start, end, True, with_assignees)[0]


def load_external(session: Session, user_ids: Sequence[str], start: dt.datetime,
                  end: dt.datetime) -> dict[str, list[ExternalEntry]]:
    """External busy occurrences overlapping ``[start, end)`` per user, with details."""
    return load_busy_rows(session, user_ids, start, end, True)[1]


def load_busy_inputs(session: Session, user_ids: Sequence[str], start: dt.datetime,
                     end: dt.datetime, with_assignees: bool = False, details: bool = True
                     ) -> dict[str, UserBusyInput]:
    """Everything the busy model needs for ``user_ids`` over ``[start, end)``, in the order
    given (two statements). Raises NotFound for an unknown or deleted user."""
    ids = list(dict.fromkeys(user_ids))
    if details:  # people and busy rows in one statement
        people: list[tuple[Any, ...]] = []
        instant = _instant_reader()
        items, externals = _load_rows(session, _CHECK, ids, start, end, True, with_assignees,
                                      instant, people)
        profiles, calendars = _people(people, ids, instant)
    else:
        profiles, calendars = load_people(session, ids)
        items, externals = load_busy_rows(session, ids, start, end, False, with_assignees)
    return {u: UserBusyInput(profiles[u], items[u], externals[u], tuple(calendars[u]))
            for u in ids}
