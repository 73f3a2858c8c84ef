"""Upserts of users and schedule items, idempotent by id, and the JSON import.

An item's ``content_hash`` covers what a calendar shows; when it changes, ``sequence``
grows, the cached fragment goes stale and every affected user's feed is marked dirty.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from calsync.audit import audit
from calsync.db.models import ApiToken, ItemAssignee, ScheduleItem, User, utcnow
from calsync.db.session import Database
from calsync.errors import ValidationError
from calsync.feeds.dirty import mark_feeds_dirty
from calsync.schedule.records import (
    PARSERS,
    ItemRecord,
    UserRecord,
    parse_user,
    record_name,
)
from calsync.timezones import UTC, zone

Outcome = Literal["created", "updated", "unchanged", "deleted", "missing"]
SECTIONS = {"jobs": "job", "time_off": "time_off", "blocks": "block"}
KIND_SECTIONS = {v: k for k, v in SECTIONS.items()}


def item_content_hash(item: ScheduleItem) -> str:
    """Hash of what a calendar shows of ``item`` (not assignees, not bookkeeping)."""
    doc = [item.kind, item.title, item.job_type, item.account, item.location, item.notes,
           item.reason, item.status, item.all_day, item.start_at.isoformat(),
           item.end_at.isoformat(), str(item.start_date), str(item.end_date), item.tzid]
    return hashlib.sha256(json.dumps(doc, ensure_ascii=False).encode()).hexdigest()


def user_content_hash(u: User) -> str:
    doc = [u.name, u.email, u.timezone, u.private_mode, u.working_hours, u.deleted_at is None]
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def upsert_user(session: Session, rec: UserRecord, actor: str = "system",
                now: dt.datetime | None = None) -> Outcome:
    now = now or utcnow()
    user = session.get(User, rec.id)
    if rec.deleted:
        if user is None or user.deleted_at is not None:
            return "missing"
        user.deleted_at = now
        user.updated_at = now
        # What let the user in dies with them: their feed link (404 from now on; a new one
        # is a new version if they come back) and their API tokens.
        user.feed_enabled = False
        tokens = list(session.scalars(select(ApiToken.id).where(
            ApiToken.user_id == rec.id, ApiToken.revoked_at.is_(None))))
        if tokens:
            session.execute(update(ApiToken).where(ApiToken.id.in_(tokens))
                            .values(revoked_at=now))
        audit(session, actor, "user.delete", "user", rec.id, {"tokens_revoked": tokens},
              at=now)
        return "deleted"
    if user is None:
        user = User(id=rec.id, name=rec.name, email=rec.email, timezone=rec.timezone,
                    private_mode=rec.private_mode, working_hours=rec.working_hours,
                    created_at=now, updated_at=now)
        session.add(user)
        session.flush()
        mark_feeds_dirty(session, [rec.id])
        audit(session, actor, "user.create", "user", rec.id, at=now)
        return "created"
    before = user_content_hash(user)
    tz_changed = user.timezone != rec.timezone or user.name != rec.name
    user.name, user.email, user.timezone = rec.name, rec.email, rec.timezone
    user.private_mode, user.working_hours = rec.private_mode, rec.working_hours
    user.deleted_at = None
    if user_content_hash(user) == before:
        return "unchanged"
    user.updated_at = now
    if tz_changed:
        mark_feeds_dirty(session, [rec.id])
    audit(session, actor, "user.update", "user", rec.id, at=now)
    return "updated"


def _resolve_users(session: Session, rec: ItemRecord, record: str) -> list[User]:
    users = []
    field_name = "assignees" if rec.kind == "job" else "user"
    for uid in rec.user_ids:
        user = session.get(User, uid)
        if user is None or user.deleted_at is not None:
            raise ValidationError(record, field_name, f"unknown user {uid!r}")
        users.append(user)
    return users


def upsert_item(session: Session, rec: ItemRecord, actor: str = "system",
                now: dt.datetime | None = None, record: str | None = None) -> Outcome:
    """Create, update or delete one item. Raises ValidationError (nothing written)."""
    now = now or utcnow()
    record = record or f"{rec.kind} (id={rec.id!r})"
    item = session.scalar(select(ScheduleItem).where(
        ScheduleItem.kind == rec.kind, ScheduleItem.ext_id == rec.id))
    if rec.deleted:
        return delete_item(session, item, actor, now)
    users = _resolve_users(session, rec, record)
    tzid = rec.tzid or users[0].timezone
    start_at, end_at = rec.start_at, rec.end_at
    if rec.all_day:
        assert rec.start_date and rec.end_date
        tz = zone(tzid)
        start_at = dt.datetime.combine(rec.start_date, dt.time(), tz).astimezone(UTC)
        end_at = dt.datetime.combine(rec.end_date, dt.time(), tz).astimezone(UTC)

    created = item is None
    if item is None:
        item = ScheduleItem(kind=rec.kind, ext_id=rec.id, sequence=0, created_at=now)
        session.add(item)
    old_users = set(item.user_ids) if not created else set()
    was_deleted = item.deleted_at is not None
    item.title, item.job_type, item.account = rec.title, rec.job_type, rec.account
    item.location, item.notes, item.reason = rec.location, rec.notes, rec.reason
    item.status, item.all_day, item.tzid = rec.status, rec.all_day, tzid
    item.start_at, item.end_at = start_at, end_at
    item.start_date, item.end_date = rec.start_date, rec.end_date
    item.deleted_at = None
    new_hash = item_content_hash(item)
    new_users = set(rec.user_ids)
    if not created and not was_deleted and new_hash == item.content_hash \
            and new_users == old_users:
        return "unchanged"
    if not created:
        item.sequence += 1
    item.content_hash = new_hash
    item.updated_at = now
    item.assignees = [a for a in item.assignees if a.user_id in new_users]
    for uid in sorted(new_users - old_users):
        item.assignees.append(ItemAssignee(user_id=uid))
    session.flush()
    mark_feeds_dirty(session, old_users | new_users)
    outcome: Outcome = "created" if created else "updated"
    audit(session, actor, f"{rec.kind}.{'create' if created else 'update'}", rec.kind, rec.id,
          {"sequence": item.sequence}, at=now)
    return outcome


def delete_item(session: Session, item: ScheduleItem | None, actor: str,
                now: dt.datetime) -> Outcome:
    """Soft delete (a tombstone the sync engine propagates); feeds drop it."""
    if item is None or item.deleted_at is not None:
        return "missing"
    item.deleted_at = now
    item.sequence += 1
    item.updated_at = now
    mark_feeds_dirty(session, item.user_ids)
    audit(session, actor, f"{item.kind}.delete", item.kind, item.ext_id, at=now)
    return "deleted"


@dataclass
class ImportReport:
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    errors: list[dict[str, str]] = field(default_factory=list)

    def count(self, section: str, outcome: str) -> None:
        self.counts.setdefault(section, {}).setdefault(outcome, 0)
        self.counts[section][outcome] += 1

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {"counts": self.counts, "errors": self.errors}


def import_document(db: Database, doc: Any, actor: str = "import",
                    now: dt.datetime | None = None) -> ImportReport:
    """Upsert everything in ``doc`` (DESIGN 4.3). Each record lands or fails on its own."""
    report = ImportReport()
    if not isinstance(doc, dict):
        report.errors.append({"record": "<document>", "field": "*",
                              "error": "expected a JSON object with users/jobs/time_off/blocks"})
        return report
    unknown = set(doc) - {"users", *SECTIONS}
    for key in sorted(unknown):
        report.errors.append({"record": key, "field": "*",
                              "error": "unknown section; expected users, jobs, time_off, blocks"})
    for section in ("users", *SECTIONS):
        rows = doc.get(section, [])
        if not isinstance(rows, list):
            report.errors.append({"record": section, "field": "*", "error": "expected a list"})
            continue
        for i, raw in enumerate(rows):
            name = record_name(section, i, raw)
            try:
                with db.session() as s:
                    if section == "users":
                        outcome = upsert_user(s, parse_user(raw, name), actor, now)
                    else:
                        rec = PARSERS[SECTIONS[section]](raw, name)
                        outcome = upsert_item(s, rec, actor, now, name)
            except ValidationError as exc:
                report.errors.append(exc.as_dict())
                report.count(section, "rejected")
            else:
                report.count(section, outcome)
    return report
