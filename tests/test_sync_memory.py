"""The in-memory connector on its own, and its discovery through the entry-point group."""

from __future__ import annotations

import datetime as dt

import pytest

from calsync.config import Settings
from calsync.errors import AlreadyExists, PreconditionFailed, SyncTokenInvalid, UserError
from calsync.sync import connector as connector_module
from calsync.sync.connector import ConnectContext, OutgoingEvent, Window, load_connector_factory
from calsync.sync.memory import MemoryConnector, MemoryFactory, MemoryServer

UTC = dt.timezone.utc
T = dt.datetime(2026, 11, 24, 9, tzinfo=UTC)
WINDOW = Window(dt.datetime(2026, 10, 1, tzinfo=UTC), dt.datetime(2027, 1, 1, tzinfo=UTC))


def event(key: str, summary: str = "Job") -> OutgoingEvent:
    return OutgoingEvent(key=key, uid=f"{key}@calsync", summary=summary, start=T,
                         end=T + dt.timedelta(hours=1), all_day=False, tzid="UTC")


def test_found_through_the_entry_point_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connector_module, "_registry", {})
    factory = load_connector_factory("memory")
    assert isinstance(factory, MemoryFactory)
    with pytest.raises(UserError, match="no connector for provider 'nope'.*memory"):
        load_connector_factory("nope")


def test_tokens_changes_and_deletions() -> None:
    server = MemoryServer()
    cal = server.add_calendar("c", "C")
    conn = MemoryConnector(server)
    rid = server.put_external(cal, "Lunch", T, T + dt.timedelta(hours=1))
    first = conn.changes(cal, None, WINDOW)
    assert first.full and [e.summary for e in first.changed] == ["Lunch"]
    assert conn.changes(cal, first.token, WINDOW).changed == []
    server.edit(cal, rid, summary="Late lunch")
    second = conn.changes(cal, first.token, WINDOW)
    assert not second.full and [e.summary for e in second.changed] == ["Late lunch"]
    server.remove(cal, rid)
    third = conn.changes(cal, second.token, WINDOW)
    assert third.deleted == [rid] and third.requests == 1
    server.invalidate_tokens(cal)
    with pytest.raises(SyncTokenInvalid):
        conn.changes(cal, third.token, WINDOW)
    with pytest.raises(SyncTokenInvalid):
        conn.changes(cal, "garbage", WINDOW)


def test_preconditions_and_read_only() -> None:
    server = MemoryServer()
    cal = server.add_calendar("c", "C")
    ro = server.add_calendar("ro", "Holidays", read_only=True)
    conn = MemoryConnector(server)
    made = conn.create(cal, event("job-j1"))
    with pytest.raises(AlreadyExists):
        conn.create(cal, event("job-j1"))
    found = conn.find_by_key(cal, "job-j1", WINDOW)
    assert found is not None and found.calsync_key == "job-j1"
    updated = conn.update(cal, made.remote_id, event("job-j1", "Job v2"), made.etag)
    with pytest.raises(PreconditionFailed):
        conn.update(cal, made.remote_id, event("job-j1", "stale"), made.etag)
    with pytest.raises(PreconditionFailed):
        conn.delete(cal, made.remote_id, made.etag)
    conn.delete(cal, made.remote_id, updated.etag)
    conn.delete(cal, made.remote_id, updated.etag)  # already gone: fine
    with pytest.raises(PreconditionFailed, match="read-only"):
        conn.create(ro, event("job-j2"))


def test_recurrence_expansion_in_the_window() -> None:
    server = MemoryServer()
    cal = server.add_calendar("c", "C")
    server.put_external(cal, "Standup", T, T + dt.timedelta(minutes=15),
                        rrule="FREQ=WEEKLY;COUNT=10",
                        exdates=(T + dt.timedelta(weeks=1),),
                        overrides=((T + dt.timedelta(weeks=2), T + dt.timedelta(weeks=2, hours=3),
                                    T + dt.timedelta(weeks=2, hours=4), None),))
    narrow = Window(T + dt.timedelta(days=1), T + dt.timedelta(weeks=4))
    [ev] = MemoryConnector(server).changes(cal, None, narrow).changed
    assert ev.recurring
    assert [o.start for o in ev.occurrences] == [T + dt.timedelta(weeks=2, hours=3),
                                                 T + dt.timedelta(weeks=3)]
    [ev] = MemoryConnector(server, max_occurrences=3).changes(cal, None, WINDOW).changed
    assert len(ev.occurrences) == 3


def test_verify_checks_the_password() -> None:
    server = MemoryServer(password="s3cret")
    server.add_calendar("c", "C")
    factory = MemoryFactory()
    ctx = ConnectContext(provider="memory", url=None, account="a", credentials={},
                         settings=Settings(), http=server)
    with pytest.raises(UserError, match="wrong password"):
        factory.verify(ctx)
    ctx.credentials = {"password": "s3cret"}
    _, calendars = factory.verify(ctx)
    assert [c.id for c in calendars] == ["c"]


def test_injected_failures_come_in_order() -> None:
    server = MemoryServer()
    cal = server.add_calendar("c", "C")
    conn = MemoryConnector(server)
    server.fail_next("changes", RuntimeError("one"), RuntimeError("two"))
    for msg in ("one", "two"):
        with pytest.raises(RuntimeError, match=msg):
            conn.changes(cal, None, WINDOW)
    assert conn.changes(cal, None, WINDOW).full
