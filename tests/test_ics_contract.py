"""The shared contract suite's pull cases, and the sliding-window case of
``tests/test_sync_window.py``, over a subscribed feed (``tests/contract/backend_ics.py``).

The ``ics`` backend is pull-only (one read-only calendar, no writes, no sync token to
break), so it is not in ``BACKENDS`` (whose every case writes copies to a primary
calendar); the cases below are the suite's own functions, run unchanged over it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from calsync.config import Settings
from calsync.db.session import Database
from tests import test_sync_window as window_cases
from tests.contract import test_contract as contract_cases
from tests.contract.backend_ics import IcsBackend
from tests.contract.conftest import SyncHarness, contract_settings  # noqa: F401 - fixture

PULL_CASES: list[Callable[[SyncHarness], None]] = [
    contract_cases.test_recurring_external_event_with_exdate_and_override,
    contract_cases.test_all_day_and_transparent_external_events,
    contract_cases.test_external_edit_and_delete_update_busy_blocks,
    window_cases.test_occurrences_and_events_entering_the_window_become_busy,
]


@pytest.fixture
def ics_harness(tmp_path: Path, sqlite_db: Database,
                contract_settings: Settings) -> Iterator[SyncHarness]:  # noqa: F811
    backend = IcsBackend(tmp_path)
    try:
        yield SyncHarness(backend, sqlite_db, contract_settings)
    finally:
        backend.close()


@pytest.mark.parametrize("case", PULL_CASES, ids=[c.__name__ for c in PULL_CASES])
def test_contract_pull_case_over_a_subscribed_feed(
        case: Callable[[SyncHarness], None], ics_harness: SyncHarness) -> None:
    case(ics_harness)


def test_a_quiet_feed_costs_one_conditional_request_per_due_sync(
        ics_harness: SyncHarness) -> None:
    h = ics_harness
    backend = h.backend
    assert isinstance(backend, IcsBackend)
    cal = backend.make_calendar("Bookings")
    h.connect(cal)
    from tests.contract.backend import ExternalSpec
    from tests.contract.test_contract import at

    backend.put_external(cal, ExternalSpec("Lesson", at(h, 1, 15), at(h, 1, 16)))
    assert h.sync().status == "ok"
    backend.offset += backend.offset  # well past the 5 minutes: due again
    result = h.sync()
    assert result.status == "ok", result.error
    assert [c.requests for c in result.calendars] == [1]
    assert {k: n for k, n in result.totals().items() if n} == {}
    assert backend.server.requests[-1]["If-None-Match"] == backend.server.etag
