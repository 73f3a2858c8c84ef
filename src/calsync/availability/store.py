"""Loading what the busy model needs for users x range: four queries, whatever the count.

- users: ``users`` by primary key;
- schedule items: ``item_assignees`` (index user_id, item_pk) joined to ``schedule_items``,
  overlapping the range, not deleted;
- external busy blocks: ``external_busy`` (index user_id, start_at, end_at) joined to the
  event and its calendar, overlapping the range, from primary/conflict calendars only;
- calendar health: the users' primary/conflict calendars with their connection's status.

Ids are sent in chunks so an ``IN`` list stays small. Returns plain frozen records from
:mod:`calsync.availability.busy`; nothing here decides who is busy.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import BindParameter, bindparam, select
from sqlalchemy.orm import Session

from calsync.availability.busy import (
    WATCHED_ROLES,
    CalendarHealth,
    ExternalEntry,
    ScheduleEntry,
    UserBusyInput,
    UserProfile,
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
from calsync.errors import NotFound

CHUNK = 500


# Statements are built once; ids, start and end are bound per call (expanding IN lists).
_IDS: BindParameter[Any] = bindparam("ids", expanding=True)
_START: BindParameter[Any] = bindparam("start")
_END: BindParameter[Any] = bindparam("end")

_PROFILES = (select(User.id, User.name, User.timezone, User.working_hours, User.private_mode)
             .where(User.id.in_(_IDS), User.deleted_at.is_(None)))

_ITEMS = (select(ItemAssignee.user_id.label("uid"), ScheduleItem.pk, ScheduleItem.kind,
                 ScheduleItem.ext_id, ScheduleItem.start_at, ScheduleItem.end_at,
                 ScheduleItem.status, ScheduleItem.title, ScheduleItem.job_type,
                 ScheduleItem.account, ScheduleItem.location, ScheduleItem.notes,
                 ScheduleItem.reason, ScheduleItem.all_day, ScheduleItem.tzid)
          .join(ScheduleItem, ScheduleItem.pk == ItemAssignee.item_pk)
          .where(ItemAssignee.user_id.in_(_IDS), ScheduleItem.deleted_at.is_(None),
                 ScheduleItem.start_at < _END, ScheduleItem.end_at > _START))

_TEAMS = (select(ItemAssignee.item_pk, ItemAssignee.user_id)
          .where(ItemAssignee.item_pk.in_(bindparam("pks", expanding=True))))

_EXTERNAL = (select(ExternalBusy.user_id, ExternalBusy.start_at, ExternalBusy.end_at,
                    ExternalEvent.id, ExternalEvent.remote_id, ExternalEvent.summary,
                    ExternalEvent.description, ExternalEvent.location,
                    ExternalEvent.organizer, ExternalEvent.attendees,
                    ExternalEvent.busy_status, ExternalEvent.status, ExternalEvent.response,
                    ExternalEvent.private_at_source, ExternalEvent.all_day, Calendar.name)
             .join(ExternalEvent, ExternalEvent.id == ExternalBusy.event_id)
             .join(Calendar, Calendar.id == ExternalEvent.calendar_id)
             .where(ExternalBusy.user_id.in_(_IDS), ExternalBusy.start_at < _END,
                    ExternalBusy.end_at > _START, Calendar.role.in_(WATCHED_ROLES)))

_CALENDARS = (select(Connection.user_id, Calendar.name, Calendar.role, Calendar.status,
                     Calendar.last_success_at, Connection.status, Connection.provider)
              .join(Connection, Connection.id == Calendar.connection_id)
              .where(Connection.user_id.in_(_IDS), Calendar.role.in_(WATCHED_ROLES)))


def _chunks(ids: Sequence[str]) -> Iterator[list[str]]:
    for i in range(0, len(ids), CHUNK):
        yield list(ids[i:i + CHUNK])


def load_profiles(session: Session, user_ids: Sequence[str]) -> dict[str, UserProfile]:
    """Live users by id. Raises NotFound naming the first unknown id."""
    wanted = list(dict.fromkeys(user_ids))
    found: dict[str, UserProfile] = {}
    for chunk in _chunks(wanted):
        rows = session.execute(_PROFILES, {"ids": chunk})
        for uid, name, tzid, hours, private in rows:
            found[uid] = UserProfile(uid, name, tzid, dict(hours or {}), bool(private))
    missing = [u for u in wanted if u not in found]
    if missing:
        raise NotFound(f"user {missing[0]!r} not found")
    return found


def load_schedule(session: Session, user_ids: Sequence[str], start: dt.datetime,
                  end: dt.datetime, with_assignees: bool = False
                  ) -> dict[str, list[ScheduleEntry]]:
    """Schedule items overlapping ``[start, end)`` per user (cancelled ones included).
    ``with_assignees`` also fills each job's full assignee list (one more query)."""
    out: dict[str, list[ScheduleEntry]] = {u: [] for u in user_ids}
    rows: list[Any] = []
    for chunk in _chunks(list(user_ids)):
        rows.extend(session.execute(_ITEMS, {"ids": chunk, "start": start, "end": end}))
    team: dict[int, list[str]] = {}
    if with_assignees:
        pks = sorted({r.pk for r in rows if r.kind == "job"})
        for i in range(0, len(pks), CHUNK):
            for pk, uid in session.execute(_TEAMS, {"pks": pks[i:i + CHUNK]}):
                team.setdefault(pk, []).append(uid)
    for r in rows:
        out[r.uid].append(ScheduleEntry(
            kind=r.kind, id=r.ext_id, user_id=r.uid, start=r.start_at, end=r.end_at,
            status=r.status, title=r.title or "", job_type=r.job_type, account=r.account,
            location=r.location, notes=r.notes, reason=r.reason, all_day=bool(r.all_day),
            tzid=r.tzid, assignees=tuple(sorted(team.get(r.pk, [r.uid])))))
    for entries in out.values():
        entries.sort(key=lambda x: (x.start, x.end, x.id))
    return out


def load_external(session: Session, user_ids: Sequence[str], start: dt.datetime,
                  end: dt.datetime) -> dict[str, list[ExternalEntry]]:
    """External busy occurrences overlapping ``[start, end)`` per user, with details."""
    out: dict[str, list[ExternalEntry]] = {u: [] for u in user_ids}
    for chunk in _chunks(list(user_ids)):
        rows = session.execute(_EXTERNAL, {"ids": chunk, "start": start, "end": end})
        for (uid, s, e, eid, rid, summary, desc, loc, org, att, busy, status, resp, private,
             all_day, cal_name) in rows:
            out[uid].append(ExternalEntry(
                owner_id=uid, start=s, end=e, busy_status=busy or "busy",
                status=status or "confirmed", response=resp,
                private_at_source=bool(private), all_day=bool(all_day),
                calendar_name=cal_name or "", summary=summary, description=desc,
                location=loc, organizer=org, attendees=tuple(att or ()), remote_id=rid,
                event_id=eid))
    for entries in out.values():
        entries.sort(key=lambda x: (x.start, x.end, x.event_id or 0))
    return out


def load_calendar_health(session: Session,
                         user_ids: Sequence[str]) -> dict[str, list[CalendarHealth]]:
    """Each user's primary and conflict calendars with their connection's status."""
    out: dict[str, list[CalendarHealth]] = {u: [] for u in user_ids}
    for chunk in _chunks(list(user_ids)):
        rows = session.execute(_CALENDARS, {"ids": chunk})
        for uid, name, role, status, success, conn_status, provider in rows:
            out[uid].append(CalendarHealth(name or "", role, status or "ok", success,
                                           conn_status or "ok", provider or ""))
    return out


def load_busy_inputs(session: Session, user_ids: Sequence[str], start: dt.datetime,
                     end: dt.datetime, with_assignees: bool = False
                     ) -> dict[str, UserBusyInput]:
    """Everything the busy model needs for ``user_ids`` over ``[start, end)``, in the order
    given. Raises NotFound for an unknown or deleted user."""
    ids = list(dict.fromkeys(user_ids))
    profiles = load_profiles(session, ids)
    items = load_schedule(session, ids, start, end, with_assignees)
    externals = load_external(session, ids, start, end)
    calendars = load_calendar_health(session, ids)
    return {u: UserBusyInput(profiles[u], items[u], externals[u], tuple(calendars[u]))
            for u in ids}
