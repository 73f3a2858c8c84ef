"""The connector contract suite: the same sync scenarios against every registered backend.

Each test drives the real engine (``sync_connection``) with a connector built by the
provider's factory, acts as the user through the backend, and checks both the remote
calendar and the database.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import select

from calsync.db.models import AuditEntry, Calendar, FeedCache, Link
from calsync.sync.connector import Connector, OutgoingEvent, RemoteEvent
from tests.contract.backend import ExternalSpec
from tests.contract.backends import READ_ONLY_BACKENDS
from tests.contract.conftest import SyncHarness

UTC = dt.timezone.utc


def at(h: SyncHarness, days: int, hour: int) -> dt.datetime:
    base = h.now.replace(hour=0, minute=0, second=0) + dt.timedelta(days=days)
    return base.replace(hour=hour)


def iso(value: dt.datetime) -> str:
    return value.isoformat()


def schedule(h: SyncHarness) -> dict[str, Any]:
    """A job, an all-day time off and a block in the coming days."""
    d5 = (h.now + dt.timedelta(days=5)).date()
    return {
        "jobs": [{"id": "j1", "title": "Fiber install", "job_type": "Install",
                  "account": "Acme Corp", "location": "1 Main St", "notes": "Gate 1234",
                  "start": iso(at(h, 1, 15)), "end": iso(at(h, 1, 17)),
                  "assignees": ["u1"], "status": "scheduled"}],
        "time_off": [{"id": "t1", "user": "u1", "start": d5.isoformat(),
                      "end": (d5 + dt.timedelta(days=2)).isoformat(), "all_day": True,
                      "reason": "Vacation"}],
        "blocks": [{"id": "b1", "user": "u1", "title": "Training",
                    "start": iso(at(h, 2, 19)), "end": iso(at(h, 2, 21))}],
    }


def setup_synced(h: SyncHarness) -> str:
    cal = h.backend.make_calendar("Work")
    h.connect(cal)
    h.items(schedule(h))
    result = h.sync()
    assert result.status == "ok", result.error
    return cal


def audits(h: SyncHarness, action: str) -> list[AuditEntry]:
    with h.db.session() as s:
        return list(s.scalars(select(AuditEntry).where(AuditEntry.action == action)))


# --- initial and no-op --------------------------------------------------------------------

def test_initial_sync_writes_items_and_imports_external_events(harness: SyncHarness) -> None:
    h = harness
    cal = h.backend.make_calendar("Work")
    h.backend.put_external(cal, ExternalSpec("Dentist", at(h, 3, 16), at(h, 3, 17)))
    h.connect(cal)
    h.items(schedule(h))
    result = h.sync()
    assert result.status == "ok", result.error
    totals = result.totals()
    assert totals["created"] == 3 and totals["imported"] == 1

    copies = h.copies(cal)
    assert set(copies) == {"job-j1", "time-off-t1", "block-b1"}
    job = copies["job-j1"]
    assert job.summary == "Install: Acme Corp"
    assert job.location == "1 Main St"
    assert isinstance(job.start, dt.datetime) and job.start.astimezone(UTC) == at(h, 1, 15)
    off = copies["time-off-t1"]
    assert off.all_day and off.summary == "Time off: Vacation"
    assert off.start == (h.now + dt.timedelta(days=5)).date()
    assert off.end == (h.now + dt.timedelta(days=7)).date()
    assert len(h.links()) == 3
    assert h.busy(cal, "Dentist") == [(at(h, 3, 16), at(h, 3, 17))]
    cal_row = h.calendar(cal)
    assert cal_row.status == "ok" and cal_row.sync_token and cal_row.sync_token.startswith("v1:")
    assert cal_row.known_items == 4 and cal_row.last_success_at == h.now


def test_no_op_sync_changes_nothing_and_costs_one_request(harness: SyncHarness) -> None:
    h = harness
    cal = setup_synced(h)
    before = {k: (e.etag, e.summary) for k, e in h.copies(cal).items()}
    result = h.sync()
    assert result.status == "ok"
    assert {k: n for k, n in result.totals().items() if n} == {}
    [cal_result] = result.calendars
    assert not cal_result.full
    if getattr(h.backend, "counts_requests", False):
        assert cal_result.requests == 1
    assert {k: (e.etag, e.summary) for k, e in h.copies(cal).items()} == before


# --- remote edits and deletes, by ownership ------------------------------------------------

def test_remote_edit_of_a_job_is_reverted_and_audited(harness: SyncHarness) -> None:
    h = harness
    cal = setup_synced(h)
    job = h.copies(cal)["job-j1"]
    h.backend.edit_remote(cal, job.remote_id, summary="Moved by me",
                          start=at(h, 1, 18), end=at(h, 1, 19))
    result = h.sync()
    assert result.status == "ok", result.error
    again = h.copies(cal)["job-j1"]
    assert again.summary == "Install: Acme Corp"
    assert isinstance(again.start, dt.datetime) and again.start.astimezone(UTC) == at(h, 1, 15)
    assert h.item("job", "j1").start_at == at(h, 1, 15)
    assert len(audits(h, "job.remote_edit_reverted")) == 1


def test_remote_delete_of_a_job_is_reverted_and_audited(harness: SyncHarness) -> None:
    h = harness
    cal = setup_synced(h)
    h.backend.delete_remote(cal, h.copies(cal)["job-j1"].remote_id)
    h.sync()
    assert "job-j1" in h.copies(cal)
    assert len(audits(h, "job.remote_delete_reverted")) == 1
    assert len(h.links()) == 3


@pytest.mark.parametrize("key,kind,ext_id", [("block-b1", "block", "b1"),
                                             ("time-off-t1", "time_off", "t1")])
def test_remote_edit_of_user_owned_item_updates_it(harness: SyncHarness, key: str, kind: str,
                                                   ext_id: str) -> None:
    h = harness
    cal = setup_synced(h)
    before = h.item(kind, ext_id)
    copy = h.copies(cal)[key]
    if kind == "block":
        h.backend.edit_remote(cal, copy.remote_id, summary="Training (room 2)",
                              start=at(h, 2, 20), end=at(h, 2, 22))
    else:
        d = (h.now + dt.timedelta(days=6)).date()
        h.backend.edit_remote(cal, copy.remote_id, summary="Time off: Family trip",
                              start=d, end=d + dt.timedelta(days=3))
    with h.db.session() as s:
        for f in s.scalars(select(FeedCache)):
            f.dirty = False
    result = h.sync()
    assert result.status == "ok", result.error
    item = h.item(kind, ext_id)
    assert item.sequence == before.sequence + 1
    assert item.content_hash != before.content_hash
    if kind == "block":
        assert item.title == "Training (room 2)"
        assert (item.start_at, item.end_at) == (at(h, 2, 20), at(h, 2, 22))
    else:
        assert item.reason == "Family trip"
        d = (h.now + dt.timedelta(days=6)).date()
        assert (item.start_date, item.end_date) == (d, d + dt.timedelta(days=3))
    with h.db.session() as s:
        assert s.get(FeedCache, "u1").dirty
    # stable afterwards: nothing flows back
    again = h.sync()
    assert {k: n for k, n in again.totals().items() if n} == {}


@pytest.mark.parametrize("key,kind,ext_id", [("block-b1", "block", "b1"),
                                             ("time-off-t1", "time_off", "t1")])
def test_remote_delete_of_user_owned_item_deletes_it(harness: SyncHarness, key: str,
                                                     kind: str, ext_id: str) -> None:
    h = harness
    cal = setup_synced(h)
    h.backend.delete_remote(cal, h.copies(cal)[key].remote_id)
    h.sync()
    assert h.item(kind, ext_id).deleted_at is not None
    assert key not in h.copies(cal)
    assert len(h.links()) == 2
    assert {k: n for k, n in h.sync().totals().items() if n} == {}


# --- local edits and deletes ---------------------------------------------------------------

def test_local_edit_and_delete_propagate(harness: SyncHarness) -> None:
    h = harness
    cal = setup_synced(h)
    doc = schedule(h)
    doc["jobs"][0]["account"] = "Beta LLC"
    doc["blocks"][0]["deleted"] = True
    later = h.now + dt.timedelta(minutes=1)
    h.items(doc, now=later)
    result = h.sync(now=later)
    assert result.totals()["updated"] == 1 and result.totals()["deleted"] == 1, result.as_dict()
    copies = h.copies(cal)
    assert copies["job-j1"].summary == "Install: Beta LLC"
    assert "block-b1" not in copies


def test_cancelled_job_loses_its_remote_copy(harness: SyncHarness) -> None:
    h = harness
    cal = setup_synced(h)
    doc = schedule(h)
    doc["jobs"][0]["status"] = "cancelled"
    h.items(doc)
    h.sync()
    assert "job-j1" not in h.copies(cal)
    assert [ln for ln in h.links() if ln.item_pk == h.item("job", "j1").pk] == []


# --- conflicts ---------------------------------------------------------------------------

@pytest.mark.parametrize("policy,local_newer,winner", [
    ("calsync_wins", False, "local"), ("remote_wins", True, "remote"),
    ("newest_wins", True, "local"), ("newest_wins", False, "remote"),
])
def test_conflicting_edits_follow_the_policy(harness: SyncHarness, policy: str,
                                             local_newer: bool, winner: str) -> None:
    h = harness
    cal = setup_synced(h)
    with h.db.session() as s:
        from calsync.db.models import Connection
        conn = s.get(Connection, h.connection_id)
        assert conn is not None
        conn.settings = {"conflict_policy": policy}
    copy = h.copies(cal)["block-b1"]
    h.backend.edit_remote(cal, copy.remote_id, summary="Remote title")
    local_time = h.now + dt.timedelta(hours=1) if local_newer else h.now - dt.timedelta(hours=1)
    doc = {"blocks": [dict(schedule(h)["blocks"][0], title="Local title")]}
    h.items(doc, now=local_time)
    result = h.sync(now=h.now + dt.timedelta(minutes=5))
    assert result.status == "ok", result.error
    expected = "Local title" if winner == "local" else "Remote title"
    assert h.copies(cal)["block-b1"].summary == expected
    assert h.item("block", "b1").title == expected
    assert {k: n for k, n in h.sync(now=h.now + dt.timedelta(minutes=6)).totals().items()
            if n} == {}


# --- external events ---------------------------------------------------------------------

def test_recurring_external_event_with_exdate_and_override(harness: SyncHarness) -> None:
    h = harness
    cal = h.backend.make_calendar("Work")
    first = at(h, 1, 14)
    spec = ExternalSpec("Standup", first, first + dt.timedelta(minutes=30),
                        rrule="FREQ=DAILY;COUNT=5",
                        exdates=(first + dt.timedelta(days=1),),
                        overrides=((first + dt.timedelta(days=3), first + dt.timedelta(days=3,
                                   hours=2), first + dt.timedelta(days=3, hours=2, minutes=30),
                                   None),))
    h.backend.put_external(cal, spec)
    h.connect(cal)
    assert h.sync().status == "ok"
    starts = [s for s, _ in h.busy(cal, "Standup")]
    assert starts == [first, first + dt.timedelta(days=2),
                      first + dt.timedelta(days=3, hours=2), first + dt.timedelta(days=4)]


def test_all_day_and_transparent_external_events(harness: SyncHarness) -> None:
    h = harness
    cal = h.backend.make_calendar("Work")
    day = (h.now + dt.timedelta(days=4)).date()
    h.backend.put_external(cal, ExternalSpec("Conference", day, day + dt.timedelta(days=1),
                                             all_day=True))
    h.backend.put_external(cal, ExternalSpec("Focus", at(h, 2, 14), at(h, 2, 15),
                                             transparent=True, private=True))
    h.connect(cal)
    assert h.sync().status == "ok"
    [(start, end)] = h.busy(cal, "Conference")
    noon = dt.datetime.combine(day, dt.time(12), UTC)
    assert start <= noon < end and end - start == dt.timedelta(days=1)
    rows = h.externals(cal)
    assert rows["Conference"].all_day
    assert rows["Focus"].busy_status == "free" and rows["Focus"].private_at_source


def test_external_edit_and_delete_update_busy_blocks(harness: SyncHarness) -> None:
    h = harness
    cal = h.backend.make_calendar("Work")
    rid = h.backend.put_external(cal, ExternalSpec("Lunch", at(h, 1, 17), at(h, 1, 18)))
    h.connect(cal)
    h.sync()
    h.backend.edit_remote(cal, rid, start=at(h, 1, 18), end=at(h, 1, 19))
    h.sync()
    assert h.busy(cal, "Lunch") == [(at(h, 1, 18), at(h, 1, 19))]
    h.backend.delete_remote(cal, rid)
    h.sync()
    assert h.externals(cal) == {}
    # never written back: the calendar holds exactly what the user left there
    assert h.remote(cal) == []


def test_every_remote_change_after_a_restart_is_pulled_incrementally(
        harness: SyncHarness) -> None:
    """Each sync in its own process, as ``calsync sync`` runs: creates, edits and deletes
    of calsync's copies and of external events, made after calsync's own writes, all reach
    the next incremental pull (Xandikos answers state differences: a copy created after
    the stored token and deleted since is listed only if the token covers the writes)."""
    h = harness
    cal = h.backend.make_calendar("Work")
    lunch = h.backend.put_external(cal, ExternalSpec("Lunch", at(h, 1, 17), at(h, 1, 18)))
    gym = h.backend.put_external(cal, ExternalSpec("Gym", at(h, 2, 12), at(h, 2, 13)))
    h.connect(cal)
    h.items(schedule(h))
    assert h.sync().status == "ok"
    h.restart()
    copies = h.copies(cal)
    h.backend.delete_remote(cal, copies["block-b1"].remote_id)
    h.backend.delete_remote(cal, copies["job-j1"].remote_id)
    d = (h.now + dt.timedelta(days=6)).date()
    h.backend.edit_remote(cal, copies["time-off-t1"].remote_id, summary="Time off: Family trip",
                          start=d, end=d + dt.timedelta(days=3))
    h.backend.delete_remote(cal, lunch)
    h.backend.edit_remote(cal, gym, start=at(h, 2, 13), end=at(h, 2, 14))
    h.backend.put_external(cal, ExternalSpec("Dentist", at(h, 3, 16), at(h, 3, 17)))
    result = h.sync()
    assert result.status == "ok", result.error
    assert not result.calendars[0].full
    assert h.item("block", "b1").deleted_at is not None  # user-owned: the delete propagates
    assert h.item("time_off", "t1").reason == "Family trip"
    assert len(audits(h, "job.remote_delete_reverted")) == 1  # dispatch-owned: restored
    assert "Lunch" not in h.externals(cal)
    assert h.busy(cal, "Gym") == [(at(h, 2, 13), at(h, 2, 14))]
    assert h.busy(cal, "Dentist") == [(at(h, 3, 16), at(h, 3, 17))]
    assert set(h.copies(cal)) == {"job-j1", "time-off-t1"}
    h.restart()
    again = h.sync()
    assert again.status == "ok" and not again.calendars[0].full
    assert {k: n for k, n in again.totals().items() if n} == {}
    h.restart()
    h.backend.delete_remote(cal, h.copies(cal)["job-j1"].remote_id)  # the restored copy
    h.sync()
    assert len(audits(h, "job.remote_delete_reverted")) == 2
    assert set(h.copies(cal)) == {"job-j1", "time-off-t1"}


def test_conflict_calendar_is_pull_only(harness: SyncHarness) -> None:
    h = harness
    work = h.backend.make_calendar("Work")
    family = h.backend.make_calendar("Family")
    h.backend.put_external(family, ExternalSpec("School run", at(h, 1, 13), at(h, 1, 14)))
    h.connect(work, conflict=(family,))
    h.items(schedule(h))
    assert h.sync().status == "ok"
    assert h.busy(family, "School run") == [(at(h, 1, 13), at(h, 1, 14))]
    assert [e.summary for e in h.remote(family)] == ["School run"]
    assert set(h.copies(work)) == {"job-j1", "time-off-t1", "block-b1"}


# --- tokens, crashes, guard --------------------------------------------------------------

def test_invalid_sync_token_means_full_resync(harness: SyncHarness) -> None:
    h = harness
    cal = setup_synced(h)
    rid = h.backend.put_external(cal, ExternalSpec("Gym", at(h, 2, 12), at(h, 2, 13)))
    h.backend.invalidate_sync_token(cal)
    result = h.sync()
    assert result.status == "ok", result.error
    assert result.calendars[0].full
    assert h.busy(cal, "Gym") == [(at(h, 2, 12), at(h, 2, 13))]
    assert rid in {e.remote_id for e in h.remote(cal)}
    assert set(h.copies(cal)) == {"job-j1", "time-off-t1", "block-b1"}
    assert {k: n for k, n in h.sync().totals().items() if n} == {}


class SimulatedCrash(BaseException):
    """The process dies: nothing after this point runs."""


class CrashAfterCreate:
    """Wraps a connector: the remote create succeeds, then the process "dies"."""

    def __init__(self, inner: Connector) -> None:
        self.inner = inner
        if hasattr(inner, "create_many"):  # the engine batches creates through it
            self.create_many = self._create_many

    def create(self, calendar_id: str, event: OutgoingEvent) -> RemoteEvent:
        self.inner.create(calendar_id, event)
        raise SimulatedCrash("crash between the remote write and the link record")

    def _create_many(self, calendar_id: str, events: list[OutgoingEvent]) -> list[Any]:
        self.inner.create_many(calendar_id, events)  # type: ignore[attr-defined]
        raise SimulatedCrash("crash between the remote writes and the link records")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_crash_between_remote_create_and_link_leaves_no_duplicate(harness: SyncHarness) -> None:
    h = harness
    cal = h.backend.make_calendar("Work")
    h.connect(cal)
    h.items(schedule(h))
    inner = h.connector()
    with pytest.raises(SimulatedCrash):
        h.sync(connector=CrashAfterCreate(inner))  # type: ignore[arg-type]
    inner.close()
    assert h.links() == []
    with h.db.session() as s:  # the dead worker's lease expires
        from calsync.db.models import Connection
        conn = s.get(Connection, h.connection_id)
        assert conn is not None
        conn.lease_owner, conn.lease_until = None, None
    result = h.sync()
    assert result.status == "ok", result.error
    copies = h.copies(cal)  # asserts there is no duplicate key
    assert set(copies) == {"job-j1", "time-off-t1", "block-b1"}
    assert len(h.links()) == 3
    assert {k: n for k, n in h.sync().totals().items() if n} == {}


@pytest.mark.parametrize("pull", ["full", "incremental"])
def test_calendar_suddenly_empty_is_guarded_until_confirmed(harness: SyncHarness,
                                                            pull: str) -> None:
    h = harness
    cal = setup_synced(h)
    for ev in h.remote(cal):
        h.backend.delete_remote(cal, ev.remote_id)
    if pull == "full":
        h.backend.invalidate_sync_token(cal)
    result = h.sync()
    assert result.status == "error" and "lists none" in (result.error or "")
    row = h.calendar(cal)
    assert row.status == "guarded" and row.last_error
    # nothing was mirrored: the user's time off and block are still there
    assert h.item("time_off", "t1").deleted_at is None
    assert h.item("block", "b1").deleted_at is None
    assert len(h.links()) == 3
    assert h.sync().calendars[0].status == "guarded"  # stays paused
    with h.db.session() as s:
        c = s.get(Calendar, h.calendars[cal])
        assert c is not None
        c.empty_confirmed = True
    result = h.sync()
    assert result.status == "ok", result.error
    assert h.item("block", "b1").deleted_at is not None  # the user really deleted it
    assert set(h.copies(cal)) == {"job-j1"}  # jobs are dispatch-owned: restored
    with h.db.session() as s:
        assert len(list(s.scalars(select(Link)))) == 1


# --- the connector's own promises (used by the engine's adoption and preconditions) --------

def outgoing_copy(h: SyncHarness, key: str, summary: str) -> OutgoingEvent:
    start = at(h, 4, 15)
    return OutgoingEvent(key=key, uid=f"{key}@calsync", summary=summary, start=start,
                         end=start + dt.timedelta(hours=1), all_day=False, tzid="UTC")


def test_create_is_idempotent_and_the_copy_is_found_by_key(harness: SyncHarness) -> None:
    from calsync.errors import AlreadyExists
    from calsync.sync.engine import sync_window

    h = harness
    cal = h.backend.make_calendar("Work")
    conn = h.connector()
    try:
        made = conn.create(cal, outgoing_copy(h, "block-idem", "First"))
        assert made.calsync_key == "block-idem"
        try:  # a second create either refuses or returns the same copy, never a second one
            again = conn.create(cal, outgoing_copy(h, "block-idem", "First"))
        except AlreadyExists:
            pass
        else:
            assert again.remote_id == made.remote_id
        found = conn.find_by_key(cal, "block-idem", sync_window(h.settings, h.now))
        assert found is not None and found.remote_id == made.remote_id
        assert found.summary == "First"
        assert conn.find_by_key(cal, "block-nothing", sync_window(h.settings, h.now)) is None
    finally:
        conn.close()
    assert [e.calsync_key for e in h.remote(cal)] == ["block-idem"]


def test_stale_etag_is_a_precondition_failure(harness: SyncHarness) -> None:
    from calsync.errors import PreconditionFailed

    h = harness
    if not getattr(h.backend, "supports_etag_preconditions", True):
        pytest.skip("the provider has no conditional writes")
    cal = h.backend.make_calendar("Work")
    conn = h.connector()
    try:
        made = conn.create(cal, outgoing_copy(h, "block-etag", "First"))
        h.backend.edit_remote(cal, made.remote_id, summary="Edited by the user")
        with pytest.raises(PreconditionFailed):
            conn.update(cal, made.remote_id, outgoing_copy(h, "block-etag", "Ours"), made.etag)
        with pytest.raises(PreconditionFailed):
            conn.delete(cal, made.remote_id, made.etag)
    finally:
        conn.close()
    assert [e.summary for e in h.remote(cal)] == ["Edited by the user"]


@pytest.mark.parametrize("backend", READ_ONLY_BACKENDS, indirect=True)
def test_read_only_calendar_is_never_written(harness: SyncHarness) -> None:
    h = harness
    assert h.backend.supports_read_only  # type: ignore[attr-defined]
    cal = h.backend.make_read_only_calendar("Holidays")  # type: ignore[attr-defined]
    h.backend.put_external(cal, ExternalSpec("Holiday", at(h, 3, 0), at(h, 4, 0)))
    h.connect(cal)
    with h.db.session() as s:  # marked read-only as list_calendars reports it
        c = s.get(Calendar, h.calendars[cal])
        assert c is not None
        c.read_only = True
    h.items(schedule(h))
    result = h.sync()
    assert result.status == "ok", result.error
    assert h.copies(cal) == {}
    assert h.busy(cal, "Holiday") == [(at(h, 3, 0), at(h, 4, 0))]
