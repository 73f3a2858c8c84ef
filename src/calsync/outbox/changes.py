"""The change feed: the platform's events by polling, in the order they were numbered.

A cursor is opaque to clients (``chg_`` + URL-safe base64 of ``v1:<seq>``): it names a
position in ``outbox_events.seq``, which is stored, so cursors survive restarts and work
on every worker. Before reading, events committed since the last numbering are numbered
(:func:`calsync.outbox.events.sequence`), so a poll sees every committed event and a later
poll never sees an event below its cursor. Test events (sent to one endpoint) are not in it.

Retention (:mod:`calsync.outbox.retention`) deletes old events. A cursor at or after the
last deleted change (the horizon) reads as before; a cursor from before it would miss
deleted changes, so reading from it raises :class:`CursorExpired` (the API answers
``410 Gone`` with ``oldest``, the cursor to start again from; as Google Calendar answers
an expired sync token). Without a cursor, the feed starts at the oldest change kept.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from calsync.db.models import OutboxEvent
from calsync.db.session import Database
from calsync.errors import CalsyncError, ValidationError
from calsync.outbox.events import has_unsequenced, sequence
from calsync.outbox.retention import read_horizon

CURSOR_PREFIX = "chg_"
CURSOR_VERSION = "v1"
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


class CursorExpired(CalsyncError):
    """The cursor is from before the retention horizon: changes after it were deleted."""

    code = "cursor_expired"
    http_status = 410

    def __init__(self, oldest: str) -> None:
        super().__init__("this cursor is older than the change feed keeps (changes after it "
                         "were deleted by retention, webhooks.retention_days): resynchronise "
                         "what you keep from the API, then read on from \"oldest\"",
                         oldest=oldest)
        self.oldest = oldest

    def as_dict(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.message, "oldest": self.oldest}


def encode_cursor(seq: int) -> str:
    raw = f"{CURSOR_VERSION}:{seq}".encode("ascii")
    return CURSOR_PREFIX + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    """The position after which to read; 0 (the start) for no cursor."""
    if cursor is None or cursor == "":
        return 0
    bad = ValidationError("changes", "after", "not a cursor from this feed (use the "
                          "\"next\" value of an earlier answer, or leave it out to start "
                          "from the beginning)")
    if not cursor.startswith(CURSOR_PREFIX) or len(cursor) > 64:
        raise bad
    body = cursor[len(CURSOR_PREFIX):]
    try:
        text = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad from None
    version, _, seq = text.partition(":")
    if version != CURSOR_VERSION or not seq.isdigit():
        raise bad
    return int(seq)


def parse_limit(raw: str | int | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    try:
        limit = int(raw)
    except (TypeError, ValueError):
        raise ValidationError("changes", "limit", f"expected a whole number, got "
                              f"{str(raw)[:40]!r}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationError("changes", "limit", f"expected 1 to {MAX_LIMIT}, got {limit}")
    return limit


@dataclass(frozen=True)
class ChangePage:
    changes: list[dict[str, Any]]
    next: str

    def as_dict(self) -> dict[str, Any]:
        return {"changes": self.changes, "next": self.next}


def change_entry(event: OutboxEvent) -> dict[str, Any]:
    """One change: the event's id (the webhook-id of its deliveries) and its payload."""
    return {"id": event.public_id, **event.payload}


def read_changes(db: Database, after: str | None, limit: int, now: dt.datetime
                 ) -> ChangePage:
    """Events after the cursor ``after``, at most ``limit``; ``next`` is the cursor to
    pass next time (the same one when there was nothing new). Raises
    :class:`CursorExpired` for a cursor from before the retention horizon."""
    position = decode_cursor(after)
    with db.read_session() as s:
        unsequenced = has_unsequenced(s)
    if unsequenced:
        with db.session() as s:
            sequence(s, now)
    with db.read_session() as s:
        events = list(s.scalars(select(OutboxEvent)
                                .where(OutboxEvent.seq > position,
                                       OutboxEvent.endpoint_id.is_(None))
                                .order_by(OutboxEvent.seq).limit(limit)))
        changes = [change_entry(e) for e in events]
        last = events[-1].seq if events else None
        # Read after the events: a horizon that moved past the cursor while they were read
        # may have taken some of them, so the answer is "expired", never a silent gap.
        horizon = read_horizon(s).feed_pruned_through
    if after and position < horizon:  # a cursor given, even that of an empty feed
        raise CursorExpired(encode_cursor(horizon))
    return ChangePage(changes, encode_cursor(last if last is not None else position))
