"""Partial updates of a user (``PATCH /api/users/{id}``, the settings page).

Fields: ``name``, ``email``, ``timezone``, ``working_hours``, ``private_mode``. An admin may
change any of them for anyone; a user may change their own ``timezone``, ``working_hours``
and ``private_mode`` (not their name or e-mail, which the platform owns); a dispatcher may
change nothing. Values are checked exactly as in imports and ``PUT /api/users/{id}``.
"""

from __future__ import annotations

import datetime as dt
import difflib
from typing import Any

from sqlalchemy.orm import Session

from calsync.db.models import User
from calsync.errors import Forbidden, ValidationError
from calsync.schedule.records import parse_user
from calsync.schedule.store import upsert_user
from calsync.selfservice.access import Viewer, live_user, require_change

PATCHABLE = ("name", "email", "timezone", "working_hours", "private_mode")
SELF_SERVICE = frozenset({"timezone", "working_hours", "private_mode"})


def user_view(user: User) -> dict[str, Any]:
    """What ``GET /api/users/{id}`` shows of a user."""
    fetched = user.feed_last_fetched_at
    return {"id": user.id, "name": user.name, "email": user.email,
            "timezone": user.timezone, "private_mode": user.private_mode,
            "working_hours": user.working_hours, "feed_enabled": user.feed_enabled,
            "feed_last_fetched_at": fetched.isoformat() if fetched else None}


def patch_user(s: Session, user_id: str, viewer: Viewer, changes: Any,
               now: dt.datetime) -> dict[str, Any]:
    """Apply ``changes`` (a dict of some of :data:`PATCHABLE`) to ``user_id`` inside the
    caller's write transaction; returns :func:`user_view` after the change. Raises
    Forbidden (another user, a dispatcher, or a field the viewer's role may not change),
    NotFound, ValidationError (422) naming an unknown field or a bad value."""
    record = f"user (id={user_id!r})"
    require_change(viewer, user_id)
    if not isinstance(changes, dict):
        raise ValidationError(record, "*", "expected a JSON object of fields to change")
    for key in sorted(changes, key=str):
        if key not in PATCHABLE:
            close = difflib.get_close_matches(str(key), PATCHABLE, n=1)
            hint = f"did you mean {close[0]!r}?" if close else \
                f"fields that can be changed: {', '.join(PATCHABLE)}"
            raise ValidationError(record, str(key), f"unknown field; {hint}")
    for key, value in changes.items():
        if value is None and key != "email":
            raise ValidationError(record, key, "must not be null (leave the field out to "
                                               "keep it)")
    if viewer.role != "admin":
        refused = sorted(set(changes) - SELF_SERVICE)
        if refused:
            raise Forbidden(f"a user may change their own {', '.join(sorted(SELF_SERVICE))}, "
                            f"not {', '.join(refused)}")
    user = live_user(s, user_id)
    merged: dict[str, Any] = {"id": user.id, "name": user.name, "email": user.email,
                              "timezone": user.timezone, "working_hours": user.working_hours,
                              "private_mode": user.private_mode}
    merged.update(changes)
    upsert_user(s, parse_user(merged, record), viewer.actor, now)
    s.flush()
    return user_view(user)
