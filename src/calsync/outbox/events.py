"""Events for the platform and the transactional outbox.

:func:`emit` adds one :class:`~calsync.db.models.OutboxEvent` to the caller's session, so
the event commits or rolls back with the change it reports. Nothing is sent here.

Payloads (``{"type", "timestamp", "data"}``) are built only by the ``*_data`` functions of
this module, each from calsync's own records, never from an external event: a
schedule item as the import/API shape shows it (DESIGN 4.3), a job by id, a connection
by its public id. Conflicts named in a ``booking.created`` event go through
:func:`calsync.privacy.mask_for_viewer` for a non-owner (the platform): kind and times only.

:func:`sequence` runs after commit (the delivery worker and the change feed call it): it
numbers the committed events that have no ``seq`` yet in commit order, under one lock
(a PostgreSQL advisory lock; SQLite's write lock), and adds one delivery per matching
endpoint. A number is given only to committed events and always above every number given
before, so a cursor over ``seq`` never skips an event that committed late.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session

from calsync.db.models import OutboxEvent, ScheduleItem, WebhookDelivery, WebhookEndpoint
from calsync.privacy import Operator, mask_for_viewer

SCHEDULE_ITEM_CHANGED = "schedule_item.changed"
SCHEDULE_ITEM_DELETED = "schedule_item.deleted"
JOB_REVERTED = "job.reverted"
CONNECTION_STATUS_CHANGED = "connection.status_changed"
BOOKING_CREATED = "booking.created"
WEBHOOK_TEST = "webhook.test"
EVENT_TYPES = (SCHEDULE_ITEM_CHANGED, SCHEDULE_ITEM_DELETED, JOB_REVERTED,
               CONNECTION_STATUS_CHANGED, BOOKING_CREATED)

# The platform is no event's owner: it sees what any non-owner sees.
PLATFORM = Operator("platform")
_SEQUENCER_LOCK = 0x63616C73  # "cals": pg_advisory_xact_lock key of the sequencer
SEQUENCE_BATCH = 1000


def _iso(value: dt.datetime | dt.date | None) -> str | None:
    return value.isoformat() if value is not None else None


def schedule_item_data(item: ScheduleItem, source: str) -> dict[str, Any]:
    """A time off or block as the API takes it (DESIGN 4.3), plus ``kind`` and ``source``
    (the public id of the calendar where the user changed it)."""
    user = item.user_ids[0] if item.user_ids else None
    data: dict[str, Any] = {"kind": item.kind, "id": item.ext_id, "user": user}
    if item.all_day:
        data.update(start=_iso(item.start_date), end=_iso(item.end_date), all_day=True)
    else:
        data.update(start=_iso(item.start_at), end=_iso(item.end_at), all_day=False)
    if item.kind == "time_off":
        data["reason"] = item.reason
    else:
        data["title"] = item.title
    data.update(timezone=item.tzid, sequence=item.sequence,
                deleted=item.deleted_at is not None, source=source)
    return data


def job_reverted_data(item: ScheduleItem, what: str, source: str, user_id: str
                      ) -> dict[str, Any]:
    """A job whose copy was edited (``what="edit"``) or deleted (``"delete"``) in a user's
    calendar and put back. The remote edit itself is not reported (it is gone)."""
    return {"kind": "job", "id": item.ext_id, "user": user_id, "change": what,
            "source": source, "start": _iso(item.start_at), "end": _iso(item.end_at),
            "sequence": item.sequence}


def connection_status_data(*, connection: str, user_id: str, provider: str, account: str,
                           old_status: str, new_status: str, action: str,
                           settings_url: str | None) -> dict[str, Any]:
    """A connection whose health changed, with what the user must do about it. The sync's
    error text is not included: it names the user's calendars, which the platform (a
    non-owner) does not see."""
    return {"connection": connection, "user": user_id, "provider": provider,
            "account": account, "old_status": old_status, "new_status": new_status,
            "action": action, "settings_url": settings_url}


def booking_data(job: dict[str, Any], forced: bool, results: list[dict[str, Any]]
                 ) -> dict[str, Any]:
    """A booking through the API: the job as the API answered it, ``forced``, and, when
    forced, whom it was forced over (conflicts masked for the platform: kind and times)."""
    over = []
    for r in results:
        if r.get("available", True):
            continue
        conflicts = [mask_for_viewer({**c, "private_mode": True}, PLATFORM)
                     if c.get("kind") == "external" else c for c in r.get("conflicts", [])]
        over.append({"user_id": r.get("user_id"), "stale": bool(r.get("stale")),
                     "conflicts": [{"kind": c.get("kind"), "start": c.get("start"),
                                    "end": c.get("end")} for c in conflicts]})
    return {"job": job, "forced": forced, "forced_over": over}


def emit(session: Session, type: str, data: dict[str, Any], now: dt.datetime, *,
         order_key: str = "", endpoint_id: int | None = None) -> OutboxEvent:
    """Add the event to ``session`` (the change's own transaction). ``order_key`` names
    the subject: events of one subject reach each endpoint in order."""
    if type not in EVENT_TYPES and type != WEBHOOK_TEST:
        raise ValueError(f"unknown event type {type!r}")
    event = OutboxEvent(type=type, order_key=order_key[:200], endpoint_id=endpoint_id,
                        created_at=now,
                        payload={"type": type, "timestamp": now.isoformat(), "data": data})
    session.add(event)
    session.flush()
    return event


def endpoint_wants(endpoint: WebhookEndpoint, type: str) -> bool:
    wanted = endpoint.events or ["*"]
    return "*" in wanted or type in wanted


def has_unsequenced(session: Session) -> bool:
    return session.scalar(select(OutboxEvent.id).where(OutboxEvent.seq.is_(None))
                          .limit(1)) is not None


def sequence(session: Session, now: dt.datetime, batch: int = SEQUENCE_BATCH) -> int:
    """Number committed events in commit order and add their deliveries; returns how many
    were numbered. Call in a write session of its own (it takes the sequencer lock)."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SEQUENCER_LOCK})
    events = list(session.scalars(select(OutboxEvent).where(OutboxEvent.seq.is_(None))
                                  .order_by(OutboxEvent.id).limit(batch)))
    if not events:
        return 0
    last = session.scalar(select(func.max(OutboxEvent.seq))) or 0
    endpoints = list(session.scalars(select(WebhookEndpoint)
                                     .where(WebhookEndpoint.disabled_at.is_(None))))
    deliveries: list[dict[str, Any]] = []
    for event in events:
        last += 1
        event.seq = last
        for ep in endpoints:
            if event.endpoint_id is not None:
                wanted = ep.id == event.endpoint_id
            else:
                wanted = ep.start_seq <= last and endpoint_wants(ep, event.type)
            if wanted:
                deliveries.append({"event_id": event.id, "endpoint_id": ep.id, "seq": last,
                                   "order_key": event.order_key, "status": "pending",
                                   "attempts": 0, "next_attempt_at": now, "created_at": now})
    session.flush()
    if deliveries:
        session.execute(insert(WebhookDelivery), deliveries)
    return len(events)


def current_seq(session: Session) -> int:
    return session.scalar(select(func.max(OutboxEvent.seq))) or 0


# --- emitting from the places where changes happen ------------------------------------

USER_OWNED_KINDS = ("time_off", "block")


def item_order_key(kind: str, ext_id: str) -> str:
    return f"item:{kind}:{ext_id}"


def emit_item_change(session: Session, item: ScheduleItem, source: str, now: dt.datetime
                     ) -> OutboxEvent | None:
    """``schedule_item.changed`` / ``.deleted`` for a user-owned item changed in the user's
    calendar (``source``: that calendar's public id); nothing for other kinds."""
    if item.kind not in USER_OWNED_KINDS:
        return None
    kind = SCHEDULE_ITEM_DELETED if item.deleted_at is not None else SCHEDULE_ITEM_CHANGED
    return emit(session, kind, schedule_item_data(item, source), now,
                order_key=item_order_key(item.kind, item.ext_id))


def emit_job_reverted(session: Session, item: ScheduleItem, what: str, source: str,
                      user_id: str, now: dt.datetime) -> OutboxEvent | None:
    """``job.reverted``: a job's copy edited or deleted in a calendar was put back."""
    if item.kind != "job":
        return None
    return emit(session, JOB_REVERTED, job_reverted_data(item, what, source, user_id), now,
                order_key=item_order_key("job", item.ext_id))


def reconnect_action(provider: str, account: str, new_status: str) -> str:
    """What the user must do, in words for the person (the platform shows it)."""
    name = {"outlook": "Outlook", "google": "Google", "icloud": "iCloud",
            "caldav": "CalDAV"}.get(provider, provider)
    who = f" {account}" if account else ""
    if new_status == "needs_reauth":
        return (f"Reconnect your {name} account{who} in your calendar settings: calsync can "
                f"no longer sign in to it, so your calendar and availability are not kept "
                f"up to date until you do.")
    if new_status == "error":
        return (f"Syncing your {name} account{who} failed; calsync retries on its own. If "
                f"it keeps failing, check the calendars chosen in your calendar settings.")
    return "Nothing: the connection works again."


def settings_page_url(base_url: str) -> str | None:
    """The technician's settings page, when this build serves the web pages."""
    import importlib.util

    if importlib.util.find_spec("calsync.web") is None:
        return None
    return base_url.rstrip("/") + "/app/settings"


def emit_connection_status(session: Session, *, connection: str, user_id: str,
                           provider: str, account: str, old_status: str, new_status: str,
                           detail: str | None, base_url: str, now: dt.datetime
                           ) -> OutboxEvent | None:
    """``connection.status_changed`` when the status really changed. ``detail`` (the sync's
    error) is taken for the callers' convenience and not sent (see
    :func:`connection_status_data`)."""
    del detail
    if old_status == new_status:
        return None
    data = connection_status_data(
        connection=connection, user_id=user_id, provider=provider, account=account,
        old_status=old_status, new_status=new_status,
        action=reconnect_action(provider, account, new_status),
        settings_url=settings_page_url(base_url))
    return emit(session, CONNECTION_STATUS_CHANGED, data, now,
                order_key=f"connection:{connection}")
