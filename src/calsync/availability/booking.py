"""Atomic bookings: take a database lock, check every assignee, then insert the job.

The guarantee lives in the database transaction, not in process memory, so it holds
across any number of API processes:

- SQLite: ``Database.session`` opens
  ``BEGIN IMMEDIATE``: one writer at a time across processes; the check reads the latest
  committed state.
- PostgreSQL: inside the transaction the assignees' ``users`` rows are locked with
  ``SELECT ... FOR UPDATE`` in sorted id order (no deadlocks between bookings that share
  people); a second booking of the same person waits, then its check (READ COMMITTED: a
  fresh snapshot per statement) sees the first one's job.

A booking is refused (:class:`BookingRefused`, HTTP 409) when any assignee is busy or
stale, unless ``force`` is set; a forced booking over conflicts writes an audit entry
``booking.force`` naming who forced it and over what (conflicts as the booker saw them,
i.e. masked). A booking creates a new job: an id that already names a live job is
refused with ``already_exists`` (change existing jobs with ``PUT /api/jobs/{id}``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from calsync.audit import audit
from calsync.availability.check import check_availability
from calsync.db.models import ScheduleItem, User
from calsync.db.session import Database
from calsync.errors import AlreadyExists, BookingConflict, NotFound, ValidationError
from calsync.outbox.events import BOOKING_CREATED, booking_data, emit, item_order_key
from calsync.privacy import Viewer
from calsync.schedule.records import ItemRecord, parse_job
from calsync.schedule.store import upsert_item
from calsync.timezones import UTC, zone


class BookingRefused(BookingConflict):
    """Some assignee is busy or stale. ``reason`` is ``stale`` when any assignee's
    calendars are stale (fail closed), else ``busy``; ``conflicts`` holds the per-user
    check results."""

    def __init__(self, message: str, reason: str, conflicts: list[dict[str, Any]]) -> None:
        super().__init__(message, conflicts=conflicts)
        self.reason = reason


@dataclass(frozen=True)
class BookingRequest:
    job: ItemRecord
    force: bool
    record: str


@dataclass(frozen=True)
class BookingOutcome:
    job: dict[str, Any]
    forced: bool
    results: list[dict[str, Any]]


def parse_booking(raw: Any) -> BookingRequest:
    """A job body (DESIGN 4.3) plus an optional ``"force": true``."""
    rid = raw.get("id") if isinstance(raw, dict) else None
    record = f"booking (id={rid!r})" if rid is not None else "booking"
    if not isinstance(raw, dict):
        raise ValidationError(record, "*", "expected a JSON object (a job)")
    force = raw.get("force", False)
    if not isinstance(force, bool):
        raise ValidationError(record, "force", f"expected true or false, got {force!r}")
    if raw.get("deleted"):
        raise ValidationError(record, "deleted", "a booking cannot delete a job; "
                              "use DELETE /api/jobs/{id}")
    job = parse_job({k: v for k, v in raw.items() if k != "force"}, record)
    if job.status != "scheduled":
        raise ValidationError(record, "status", f"a booking is 'scheduled', not {job.status!r}")
    return BookingRequest(job, force, record)


def _instants(session: Session, job: ItemRecord) -> tuple[dt.datetime, dt.datetime]:
    """The job's UTC span; all-day jobs are placed in their timezone (or the first
    assignee's), as the schedule store does."""
    if not job.all_day:
        return job.start_at, job.end_at
    assert job.start_date and job.end_date
    tzid = job.tzid
    if tzid is None:
        user = session.get(User, job.user_ids[0])
        tzid = user.timezone if user is not None else "UTC"
    tz = zone(tzid)
    return (dt.datetime.combine(job.start_date, dt.time(), tz).astimezone(UTC),
            dt.datetime.combine(job.end_date, dt.time(), tz).astimezone(UTC))


def _lock_assignees(session: Session, dialect: str, user_ids: tuple[str, ...]) -> None:
    if dialect == "postgresql":
        session.execute(select(User.id).where(User.id.in_(sorted(user_ids)))
                        .order_by(User.id).with_for_update()).all()


def job_document(item: ScheduleItem) -> dict[str, Any]:
    return {"id": item.ext_id, "title": item.title, "job_type": item.job_type,
            "account": item.account, "location": item.location, "notes": item.notes,
            "start": item.start_at.isoformat(), "end": item.end_at.isoformat(),
            "all_day": item.all_day, "timezone": item.tzid, "status": item.status,
            "assignees": item.user_ids, "sequence": item.sequence}


def book(db: Database, request: BookingRequest, viewer: Viewer, actor: str, now: dt.datetime,
         stale_after: dt.timedelta) -> BookingOutcome:
    """Check and insert atomically. Raises BookingRefused (409), AlreadyExists (409) or
    ValidationError (422, e.g. an unknown assignee); nothing is written then."""
    job = request.job
    with db.session() as s:
        _lock_assignees(s, db.dialect, job.user_ids)
        live = s.scalar(select(ScheduleItem.pk).where(
            ScheduleItem.kind == "job", ScheduleItem.ext_id == job.id,
            ScheduleItem.deleted_at.is_(None)))
        if live is not None:
            raise AlreadyExists(f"job {job.id!r} already exists; change it with "
                                f"PUT /api/jobs/{job.id}")
        start, end = _instants(s, job)
        try:
            results = check_availability(s, job.user_ids, start, end, viewer, now, stale_after)
        except NotFound as exc:
            raise ValidationError(request.record, "assignees", exc.message) from None
        refused = [r for r in results if not r["available"]]
        if refused and not request.force:
            stale = [r["user_id"] for r in refused if r["stale"]]
            busy = [r["user_id"] for r in refused if r["conflicts"]]
            parts = []
            if busy:
                parts.append(f"busy: {', '.join(busy)}")
            if stale:
                parts.append(f"calendars not synced (stale): {', '.join(stale)}")
            raise BookingRefused(f"cannot book job {job.id!r}; " + "; ".join(parts)
                                 + " (send \"force\": true to book anyway)",
                                 "stale" if stale else "busy", results)
        upsert_item(s, job, actor, now, request.record)
        if refused:
            audit(s, actor, "booking.force", "job", job.id,
                  {"over": [{"user_id": r["user_id"], "stale_calendars": r["stale_calendars"],
                             "conflicts": r["conflicts"]} for r in refused]}, at=now)
        item = s.scalar(select(ScheduleItem).where(ScheduleItem.kind == "job",
                                                   ScheduleItem.ext_id == job.id))
        assert item is not None
        doc = job_document(item)
        emit(s, BOOKING_CREATED, booking_data(doc, bool(refused), results), now,
             order_key=item_order_key("job", job.id))  # in the booking's transaction
    return BookingOutcome(doc, bool(refused), results)
