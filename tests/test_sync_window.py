"""The sync window slides; what was fetched for it must follow (field test: a weekly
appointment with no end stopped blocking at the edge of the first window).

Run over every contract backend (memory, Radicale, Xandikos, the Graph and Google
emulators): nothing changes on the server, calsync's clock moves on by months, and the
occurrences and events that only now fall inside the window are busy. CalDAV (and memory)
re-expand the stored series from their sources without a request; Graph and Google, whose
delta link / sync token stays bound to the first range, are listed in full again once the
window slid ``sync.window_resync_days``."""

from __future__ import annotations

import datetime as dt

from dateutil.relativedelta import relativedelta

from tests.contract.backend import ExternalSpec
from tests.contract.conftest import (  # noqa: F401 - fixtures used by name
    SyncHarness,
    backend,
    contract_settings,
    harness,
)

UTC = dt.timezone.utc


def test_occurrences_and_events_entering_the_window_become_busy(harness: SyncHarness) -> None:  # noqa: F811
    h = harness
    cal = h.backend.make_calendar("Personal")
    h.connect(cal)
    first = (h.now + dt.timedelta(days=1)).replace(hour=15, minute=0, second=0)
    h.backend.put_external(cal, ExternalSpec("Weekly lesson", first,
                                             first + dt.timedelta(hours=1),
                                             rrule="FREQ=WEEKLY"))
    far = (h.now + relativedelta(months=13)).replace(hour=10, minute=0, second=0)
    h.backend.put_external(cal, ExternalSpec("Far appointment", far,
                                             far + dt.timedelta(hours=2)))
    result = h.sync()
    assert result.status == "ok", result.error
    window_end = h.now + relativedelta(months=h.settings.sync.future_months)
    weekly = h.busy(cal, "Weekly lesson")
    assert weekly and max(s for s, _ in weekly) < window_end
    assert h.busy(cal, "Far appointment") == []

    later = h.now + relativedelta(months=3)
    result = h.sync(now=later)
    assert result.status == "ok", result.error
    new_end = later + relativedelta(months=h.settings.sync.future_months)
    weekly = h.busy(cal, "Weekly lesson")
    entered = [s for s, _ in weekly if window_end + dt.timedelta(days=7) < s < new_end]
    assert len(entered) >= 10, weekly[-3:]  # ~3 months of weekly occurrences arrived
    assert all(e - s == dt.timedelta(hours=1) for s, e in weekly)
    assert h.busy(cal, "Far appointment") == [(far.astimezone(UTC),
                                               (far + dt.timedelta(hours=2)).astimezone(UTC))]

    # and a quiet day later nothing is listed in full again
    result = h.sync(now=later + dt.timedelta(days=1))
    assert result.status == "ok", result.error
    assert not any(c.full for c in result.calendars)


def test_zero_length_all_day_events_block_one_day(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """RFC 5545 3.6.1: an all-day event whose DTEND equals its DTSTART (seen in real files)
    lasts one day, when first pulled and when re-expanded as the window slides."""
    from calsync.db.session import Database
    from tests.contract.backend_memory import MemoryBackend
    from tests.contract.conftest import SyncHarness as Harness

    db = Database(f"sqlite:///{tmp_path / 'w.db'}")
    db.upgrade()
    from dataclasses import replace

    from calsync.config import load_settings
    from tests.conftest import SECRET

    base = load_settings(env={"CALSYNC_SECRET_KEY": SECRET})
    settings = replace(base, database=replace(base.database, url=db.url))
    mem = MemoryBackend(tmp_path)
    try:
        h = Harness(mem, db, settings)
        cal = mem.make_calendar("Personal")
        h.connect(cal)
        day = (h.now + dt.timedelta(days=3)).date()
        mem.put_external(cal, ExternalSpec("Holiday", day, day, all_day=True))
        assert h.sync().status == "ok"
        [(start, end)] = h.busy(cal, "Holiday")
        assert end - start == dt.timedelta(days=1)
        assert h.sync(now=h.now + dt.timedelta(days=2)).status == "ok"  # re-expanded
        [(start, end)] = h.busy(cal, "Holiday")
        assert end - start == dt.timedelta(days=1)
    finally:
        mem.close()
        db.dispose()
