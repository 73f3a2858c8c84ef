"""Loading what the busy model needs for users x range: one statement, whatever the count.

- people: the users by primary key, outer-joined to their primary/conflict calendars and
  each calendar's connection status (one row per watched calendar, or one without);
- busy rows: schedule items through ``item_assignees`` and external occurrences from
  ``external_busy``;

all in one ``UNION ALL`` for a check (a slot search reads people, then spans). The
statements are in :mod:`calsync.availability.statements` and run on the driver
(:class:`calsync.availability.reads.Prepared`); rows are turned into records here.

Details (titles, notes, attendees...) are read only when asked: checks and schedules
show conflicts, a slot search needs times and the fields the busy rules read. Ids are
sent in chunks so one statement stays bounded. Returns plain frozen records from
:mod:`calsync.availability.busy`; nothing here decides who is busy.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy.orm import Session

from calsync.availability import statements
from calsync.availability.busy import (
    CalendarHealth,
    ExternalEntry,
    Interval,
    MicroInterval,
    ScheduleEntry,
    UserBusyInput,
    UserProfile,
    external_fields_are_busy,
    micros,
    schedule_status_is_busy,
)
from calsync.availability.reads import Prepared, read_engine, reading
from calsync.availability.statements import LOOKBACK, SHORT_SPAN
from calsync.errors import NotFound
from calsync.timezones import UTC

__all__ = ["LOOKBACK", "SHORT_SPAN", "SearchInputs", "load_busy_inputs", "load_busy_rows",
           "load_busy_times", "load_calendar_health", "load_external", "load_people",
           "load_profiles", "load_schedule", "load_search_inputs", "read_engine",
           "reading"]

CHUNK = 500
_PEOPLE = Prepared(statements.PEOPLE)
_BUSY_DETAILED = Prepared(statements.BUSY_DETAILED)
_CHECK = Prepared(statements.CHECK)
_BUSY_TIMES = Prepared(statements.BUSY_TIMES)
_SEARCH = Prepared(statements.SEARCH)


def _utc(value: Any) -> dt.datetime:
    """A driver's instant as aware UTC, as :class:`calsync.db.models.UTCDateTime` reads
    it: SQLite gives naive UTC text, PostgreSQL aware datetimes."""
    if isinstance(value, str):
        return dt.datetime.fromisoformat(value).replace(tzinfo=UTC)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
    return value.astimezone(UTC)  # type: ignore[no-any-return]


def _instant_reader() -> Callable[[Any], dt.datetime]:
    """:func:`_utc`, once per distinct value (the rows of one range repeat few)."""
    memo: dict[Any, dt.datetime] = {}

    def read(value: Any) -> dt.datetime:
        got = memo.get(value)
        if got is None:
            got = memo[value] = _utc(value)
        return got

    return read


def _micros_reader() -> Callable[[Any], int]:
    """A driver's instant as microseconds since the epoch, once per distinct value."""
    memo: dict[Any, int] = {}

    def read(value: Any) -> int:
        got = memo.get(value)
        if got is None:
            got = memo[value] = micros(_utc(value))
        return got

    return read


def _json(value: Any) -> Any:
    """A JSON column as the driver gives it: text on SQLite, decoded on PostgreSQL."""
    return json.loads(value) if isinstance(value, str) else value


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
            profiles[uid] = UserProfile(uid, name, tzid, dict(_json(hours) or {}),
                                        bool(private))
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
    rows = [r for chunk in _chunks(wanted) for r in _PEOPLE.rows(session, {"ids": chunk})]
    return _people(rows, wanted, _instant_reader())


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


def _load_rows(session: Session, statement: Prepared, user_ids: Sequence[str],
               start: dt.datetime, end: dt.datetime, details: bool, with_assignees: bool,
               instant: Callable[[Any], dt.datetime], people: list[tuple[Any, ...]] | None
               ) -> tuple[dict[str, list[ScheduleEntry]], dict[str, list[ExternalEntry]]]:
    items: dict[str, list[ScheduleEntry]] = {u: [] for u in user_ids}
    events: dict[str, list[ExternalEntry]] = {u: [] for u in user_ids}
    item_rows: list[tuple[Any, ...]] = []
    for chunk in _chunks(list(user_ids)):
        for row in statement.rows(session, _range_params(chunk, start, end)):
            src = row[0]
            if src == "item":
                item_rows.append(row)
                continue
            if src == "person":
                assert people is not None
                # uid, name, tz, hours, private, calendar name, role, calendar status,
                # last success, connection status, provider
                people.append((row[1], row[12], row[13], row[21], row[11], row[22], row[3],
                               row[7], row[5], row[9], row[10]))
                continue
            (_, uid, row_id, _, ext_id, s, e, status, all_day, busy, response,
             private) = row[:12]
            more: dict[str, Any] = {}
            if details:
                more = {"calendar_name": row[22] or "", "summary": row[12],
                        "description": row[19], "location": row[15],
                        "organizer": row[20], "attendees": tuple(_json(row[21]) or ()),
                        "remote_id": ext_id}
            events[uid].append(ExternalEntry(
                owner_id=uid, start=instant(s), end=instant(e), busy_status=busy or "busy",
                status=status or "confirmed", response=response,
                private_at_source=bool(private), all_day=bool(all_day), event_id=row_id,
                **more))
    team: dict[int, list[str]] = {}
    if with_assignees:
        pks = sorted({row[2] for row in item_rows if row[3] == "job"})
        conn = session.connection()
        for i in range(0, len(pks), CHUNK):
            for pk, uid in conn.execute(statements.TEAMS, {"pks": pks[i:i + CHUNK]}):
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
    instant = _instant_reader()
    for chunk in _chunks(list(user_ids)):
        for row in _BUSY_TIMES.rows(session, _range_params(chunk, start, end)):
            if _row_is_busy(row):
                out[row[1]].append((instant(row[5]), instant(row[6])))
    return out


def _range_params(ids: list[str], start: dt.datetime, end: dt.datetime) -> dict[str, Any]:
    return {"ids": ids, "start": start, "end": end, "lookback_from": start - LOOKBACK}


def _row_is_busy(row: tuple[Any, ...]) -> bool:
    """The busy rule for an item or event row of the busy statements."""
    if row[0] == "item":
        return schedule_status_is_busy(row[7])
    return external_fields_are_busy(row[9] or "busy", row[7], row[10])


SearchInputs = tuple[dict[str, UserProfile], dict[str, list[CalendarHealth]],
                     dict[str, list[MicroInterval]]]


def load_search_inputs(session: Session, user_ids: Sequence[str], start: dt.datetime,
                       end: dt.datetime) -> SearchInputs:
    """What a slot search needs, in one statement: profiles (in the order given),
    calendar health and, per user, the busy spans of :func:`load_busy_times` in
    microseconds since the epoch. Raises NotFound for an unknown or deleted user."""
    ids = list(dict.fromkeys(user_ids))
    busy: dict[str, list[MicroInterval]] = {u: [] for u in ids}
    people: list[tuple[Any, ...]] = []
    read = _micros_reader()
    for chunk in _chunks(ids):
        for row in _SEARCH.rows(session, _range_params(chunk, start, end)):
            src = row[0]
            if src == "person":
                # uid, name, tz, hours, private, calendar name, role, calendar status,
                # last success, connection status, provider
                people.append((row[1], row[12], row[13], row[14], row[11], row[15], row[3],
                               row[7], row[5], row[9], row[10]))
            elif _row_is_busy(row):
                busy[row[1]].append((read(row[5]), read(row[6])))
    profiles, calendars = _people(people, ids, _instant_reader())
    return {u: profiles[u] for u in ids}, calendars, busy


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
