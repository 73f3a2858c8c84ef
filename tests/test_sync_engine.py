"""The engine's storage side on SQLite and PostgreSQL: the contract scenarios run with the
in-memory provider on the ``db`` fixture (the contract suite itself runs on SQLite)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from calsync.config import Settings
from calsync.db.session import Database
from tests.contract import test_contract as contract
from tests.contract.backend_memory import MemoryBackend
from tests.contract.conftest import SyncHarness

SCENARIOS: dict[str, Callable[[SyncHarness], Any]] = {
    "initial": contract.test_initial_sync_writes_items_and_imports_external_events,
    "noop": contract.test_no_op_sync_changes_nothing_and_costs_one_request,
    "job-edit-reverted": contract.test_remote_edit_of_a_job_is_reverted_and_audited,
    "job-delete-reverted": contract.test_remote_delete_of_a_job_is_reverted_and_audited,
    "time-off-edit-pulled": partial(contract.test_remote_edit_of_user_owned_item_updates_it,
                                    key="time-off-t1", kind="time_off", ext_id="t1"),
    "block-delete-pulled": partial(contract.test_remote_delete_of_user_owned_item_deletes_it,
                                   key="block-b1", kind="block", ext_id="b1"),
    "local-edit-delete": contract.test_local_edit_and_delete_propagate,
    "cancelled-job": contract.test_cancelled_job_loses_its_remote_copy,
    "conflict-newest": partial(contract.test_conflicting_edits_follow_the_policy,
                               policy="newest_wins", local_newer=False, winner="remote"),
    "recurring-external": contract.test_recurring_external_event_with_exdate_and_override,
    "external-edit-delete": contract.test_external_edit_and_delete_update_busy_blocks,
    "conflict-calendar": contract.test_conflict_calendar_is_pull_only,
    "token-expired": contract.test_invalid_sync_token_means_full_resync,
    "crash-adopt": contract.test_crash_between_remote_create_and_link_leaves_no_duplicate,
    "guard": partial(contract.test_calendar_suddenly_empty_is_guarded_until_confirmed,
                     pull="incremental"),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_engine_scenario(scenario: str, db: Database, settings: Settings,
                         tmp_path: Path) -> None:
    backend = MemoryBackend(tmp_path)
    try:
        SCENARIOS[scenario](SyncHarness(backend, db, settings))
    finally:
        backend.close()


def test_lost_precondition_rereads_and_replans(db: Database, settings: Settings,
                                               tmp_path: Path) -> None:
    """The user edits a copy between our pull and our update: the etag check refuses the
    write, the calendar is read in full at the next run, and the job is reverted then."""
    import datetime as dt

    from calsync.sync.connector import OutgoingEvent, RemoteEvent

    backend = MemoryBackend(tmp_path)
    h = SyncHarness(backend, db, settings)
    cal = contract.setup_synced(h)
    inner = h.connector()
    job_copy = h.copies(cal)["job-j1"]

    class RacingUser:
        def update(self, calendar_id: str, remote_id: str, event: OutgoingEvent,
                   etag: str | None) -> RemoteEvent:
            backend.edit_remote(calendar_id, remote_id, summary="Edited meanwhile")
            return inner.update(calendar_id, remote_id, event, etag)

        def __getattr__(self, name: str) -> Any:
            return getattr(inner, name)

    doc = contract.schedule(h)
    doc["jobs"][0]["account"] = "Beta LLC"
    later = h.now + dt.timedelta(minutes=1)
    h.items(doc, now=later)
    result = h.sync(now=later, connector=RacingUser())  # type: ignore[arg-type]
    assert result.status == "ok", result.error
    assert result.calendars[0].counts.get("precondition_failed") == 1
    assert h.copies(cal)["job-j1"].summary == "Edited meanwhile"
    assert h.calendar(cal).sync_token is None  # read everything next time
    again = h.sync(now=later)
    assert again.calendars[0].full
    assert h.copies(cal)["job-j1"].summary == "Install: Beta LLC"
    assert h.copies(cal)["job-j1"].remote_id == job_copy.remote_id
    backend.close()
