"""The one masking function: who sees what of an event view."""

from __future__ import annotations

import logging

import pytest

from calsync.api.auth import Principal
from calsync.privacy import OPERATOR, guard_sql_logging, is_masked_for, mask_for_viewer

VIEW = {"kind": "external", "owner_id": "u1", "private_mode": True, "private_at_source": False,
        "start": "2026-11-30T15:00:00+00:00", "end": "2026-11-30T16:00:00+00:00",
        "all_day": False, "summary": "Therapy", "description": "Room 4", "location": "Elm St",
        "organizer": "dr@example.com", "attendees": ["dr@example.com"], "source": "Home",
        "busy_status": "busy", "status": "confirmed", "response": None, "remote_id": "abc-123"}

OWNER = Principal("user", "u1", "jane")
OTHER_USER = Principal("user", "u2", "kai")
DISPATCHER = Principal("dispatcher", None, "desk")
ADMIN = Principal("admin", None, "root")

MASKED = {"kind": "external", "start": VIEW["start"], "end": VIEW["end"], "all_day": False,
          "summary": "Busy", "source": "external calendar", "masked": True}


@pytest.mark.parametrize("viewer", [OTHER_USER, DISPATCHER, ADMIN, OPERATOR])
def test_non_owners_get_busy_and_times_only(viewer) -> None:
    assert mask_for_viewer(VIEW, viewer) == MASKED


def test_owner_sees_details_without_bookkeeping() -> None:
    out = mask_for_viewer(VIEW, OWNER)
    assert out["summary"] == "Therapy" and out["location"] == "Elm St"
    assert out["remote_id"] == "abc-123" and out["masked"] is False
    assert "owner_id" not in out and "private_mode" not in out


@pytest.mark.parametrize("private_mode, private_at_source, masked", [
    (True, False, True), (True, True, True), (False, True, True), (False, False, False)])
def test_toggle_and_source_privacy(private_mode, private_at_source, masked) -> None:
    view = {**VIEW, "private_mode": private_mode, "private_at_source": private_at_source}
    assert is_masked_for(view, DISPATCHER) is masked
    assert (mask_for_viewer(view, DISPATCHER) == MASKED) is masked
    assert mask_for_viewer(view, OWNER)["summary"] == "Therapy"


def test_views_without_privacy_flags_are_masked_and_new_fields_stay_hidden() -> None:
    bare = {k: v for k, v in VIEW.items() if k not in ("private_mode", "private_at_source")}
    assert mask_for_viewer({**bare, "secret_new_field": "x"}, DISPATCHER) == MASKED
    shown = mask_for_viewer({**VIEW, "private_mode": False, "secret_new_field": "x"}, DISPATCHER)
    assert "secret_new_field" not in shown and shown["summary"] == "Therapy"


def test_calsync_items_are_not_masked() -> None:
    job = {"kind": "job", "summary": "Fiber install", "owner_id": "u1", "start": "s", "end": "e"}
    assert mask_for_viewer(job, DISPATCHER) == {"kind": "job", "summary": "Fiber install",
                                               "start": "s", "end": "e"}


def test_sql_row_logging_is_kept_quiet() -> None:
    logging.getLogger("sqlalchemy.engine").setLevel(logging.DEBUG)
    guard_sql_logging()
    assert logging.getLogger("sqlalchemy.engine").getEffectiveLevel() == logging.WARNING
