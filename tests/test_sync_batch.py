"""The engine's bulk-create path: a connector with ``create_many`` gets the calendar's creates
in batches, and every item is still linked (or its error counted) on its own.

Driven against the Graph emulator (the real Outlook connector, real msal/httpx, $batch) and
against the memory connector given a ``create_many`` here."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from calsync.config import Settings, load_settings
from calsync.db.models import ScheduleItem
from calsync.db.session import Database
from calsync.errors import CalsyncError, NeedsReauth, Throttled
from calsync.sync import engine
from calsync.sync.connector import OutgoingEvent, RemoteEvent
from calsync.sync.memory import MemoryConnector, MemoryServer
from calsync.sync.retry import RetryPolicy
from tests.conftest import SECRET
from tests.contract.backend_graph import GraphBackend
from tests.contract.backend_memory import MemoryBackend
from tests.contract.conftest import SyncHarness

N = 45  # three $batch requests of 20, 20, 5


@pytest.fixture
def contract_settings(tmp_path: Path) -> Settings:
    base = load_settings(env={"CALSYNC_SECRET_KEY": SECRET})
    return replace(base, database=replace(base.database, url=f"sqlite:///{tmp_path}/c.db"))


def jobs_doc(h: SyncHarness, n: int = N) -> dict[str, Any]:
    base = h.now.replace(hour=0, minute=0, second=0) + dt.timedelta(days=1)
    jobs = []
    for i in range(n):
        start = base + dt.timedelta(days=i // 8, hours=8 + i % 8)
        jobs.append({"id": f"j{i}", "title": f"Install {i}", "job_type": "Install",
                     "account": "Acme Corp", "location": "1 Main St",
                     "start": start.isoformat(), "end": (start + dt.timedelta(hours=1)).isoformat(),
                     "assignees": ["u1"], "status": "scheduled"})
    return {"jobs": jobs}


def linked_keys(h: SyncHarness) -> set[str]:
    keys = set()
    for ln in h.links():
        with h.db.session() as s:
            item = s.get(ScheduleItem, ln.item_pk)
            assert item is not None
            keys.add(f"{item.kind}-{item.ext_id}")
    return keys


# --- Graph emulator ---------------------------------------------------------------------

@pytest.fixture
def graph(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[GraphBackend]:
    backend = GraphBackend(tmp_path, request)
    yield backend
    backend.close()


@pytest.fixture
def gh(graph: GraphBackend, sqlite_db: Database, contract_settings: Settings) -> SyncHarness:
    return SyncHarness(graph, sqlite_db, contract_settings)


def test_graph_initial_sync_uses_batch_requests(gh: SyncHarness, graph: GraphBackend) -> None:
    cal = graph.make_calendar("Work")
    gh.connect(cal)
    gh.items(jobs_doc(gh))
    em = graph.emulator
    before = em.http_requests
    result = gh.sync()
    assert result.status == "ok", result.error
    assert result.totals()["created"] == N
    pull = sum(c.requests for c in result.calendars)
    # $batch requests run concurrently (up to 4 per mailbox): their arrival order varies
    assert sorted(em.batch_sizes) == [5, 20, 20]
    # the creates cost ceil(N/20) HTTP requests, not N
    assert em.http_requests - before == pull + math.ceil(N / 20)
    assert len(gh.links()) == N
    copies = gh.copies(cal)  # asserts one copy per key
    assert set(copies) == {f"job-j{i}" for i in range(N)} == linked_keys(gh)
    by_item = {ln.remote_id for ln in gh.links()}
    assert by_item == {ev.remote_id for ev in copies.values()}

    again = gh.sync(now=gh.now + dt.timedelta(minutes=5))
    assert again.status == "ok", again.error
    totals = again.totals()
    assert totals["created"] == totals["updated"] == totals["deleted"] == 0
    assert sorted(em.batch_sizes) == [5, 20, 20]  # nothing sent again
    assert len(gh.copies(cal)) == N


def test_graph_copy_that_appeared_meanwhile_is_adopted(gh: SyncHarness,
                                                       graph: GraphBackend) -> None:
    """A copy written after the pull (an interrupted run) meets the batch: Graph answers
    with the older copy (transactionId), the connector reports AlreadyExists for that item,
    and the engine adopts and updates it instead of making a second one."""
    cal = graph.make_calendar("Work")
    gh.connect(cal)
    gh.items(jobs_doc(gh, 25))
    conn = gh.connector()
    real = conn.create_many  # type: ignore[attr-defined]

    def racing(calendar_id: str, events: list[OutgoingEvent]) -> list[Any]:
        stale = next(e for e in events if e.key == "job-j3")
        conn.create(calendar_id, replace(stale, summary="Stale copy"))
        out: list[Any] = real(calendar_id, events)
        return out

    conn.create_many = racing  # type: ignore[attr-defined]
    try:
        result = gh.sync(connector=conn)
    finally:
        conn.close()
    assert result.status == "ok", result.error
    totals = result.totals()
    assert totals["created"] == 24 and totals["adopted"] == 1
    copies = gh.copies(cal)  # no duplicate of job-j3
    assert len(copies) == 25
    assert copies["job-j3"].summary != "Stale copy"
    assert linked_keys(gh) == set(copies)
    assert {ln.remote_id for ln in gh.links()} == {ev.remote_id for ev in copies.values()}


def test_graph_crash_between_batch_and_links_leaves_no_duplicate(
        gh: SyncHarness, graph: GraphBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    cal = graph.make_calendar("Work")
    gh.connect(cal)
    gh.items(jobs_doc(gh, 30))
    real = engine._Executor._set_link
    calls = {"n": 0}

    def crashing(self: Any, *args: Any) -> None:
        calls["n"] += 1
        if calls["n"] > 7:
            raise RuntimeError("worker killed")
        real(self, *args)

    monkeypatch.setattr(engine._Executor, "_set_link", crashing)
    first = gh.sync()
    assert first.status == "error" and "RuntimeError" in (first.error or "")
    assert len(gh.links()) == 7
    assert len(gh.copies(cal)) == 30  # written remotely, 23 of them unlinked
    monkeypatch.setattr(engine._Executor, "_set_link", real)

    sizes = list(graph.emulator.batch_sizes)
    second = gh.sync(now=gh.now + dt.timedelta(minutes=1))
    assert second.status == "ok", second.error
    assert second.totals()["created"] == 0 and second.totals()["adopted"] == 23
    assert graph.emulator.batch_sizes == sizes  # nothing created again
    copies = gh.copies(cal)
    assert len(copies) == 30 and linked_keys(gh) == set(copies)


# --- memory connector with create_many -----------------------------------------------------

class BatchMemoryConnector(MemoryConnector):
    """The memory connector plus a create_many answering per item, with injectable
    per-item failures (``fail[key]``: raised once for that key)."""

    def __init__(self, server: MemoryServer) -> None:
        super().__init__(server, retry=RetryPolicy(sleep=lambda _s: None))
        self.batches: list[list[str]] = []
        self.fail: dict[str, CalsyncError] = {}
        self.after: list[BaseException] = []  # failures of the next single creates

    def create_many(self, calendar_id: str,
                    events: list[OutgoingEvent]) -> list[RemoteEvent | Exception]:
        self.batches.append([e.key for e in events])
        out: list[RemoteEvent | Exception] = []
        for e in events:
            failure = self.fail.pop(e.key, None)
            if failure is not None:
                out.append(failure)
                continue
            try:
                out.append(self.create(calendar_id, e))
            except CalsyncError as exc:
                out.append(exc)
        self.server.fail_next("create", *self.after)
        self.after.clear()
        return out


@pytest.fixture
def memory(tmp_path: Path) -> Iterator[MemoryBackend]:
    backend = MemoryBackend(tmp_path)
    yield backend
    backend.close()


@pytest.fixture
def mh(memory: MemoryBackend, sqlite_db: Database, contract_settings: Settings) -> SyncHarness:
    return SyncHarness(memory, sqlite_db, contract_settings)


def test_memory_creates_go_through_create_many(mh: SyncHarness, memory: MemoryBackend) -> None:
    cal = memory.make_calendar("Work")
    mh.connect(cal)
    mh.items(jobs_doc(mh, 130))
    conn = BatchMemoryConnector(memory.server)
    result = mh.sync(connector=conn)
    assert result.status == "ok", result.error
    assert result.totals()["created"] == 130
    assert [len(b) for b in conn.batches] == [engine.CREATE_CHUNK, 30]
    copies = mh.copies(cal)
    assert len(copies) == 130 and linked_keys(mh) == set(copies)

    again = mh.sync(now=mh.now + dt.timedelta(minutes=1), connector=conn)
    assert again.status == "ok"
    assert again.totals()["created"] == again.totals()["updated"] == 0
    assert len(conn.batches) == 2


def test_memory_already_exists_in_batch_is_adopted(mh: SyncHarness,
                                                   memory: MemoryBackend) -> None:
    cal = memory.make_calendar("Work")
    mh.connect(cal)
    mh.items(jobs_doc(mh, 5))
    conn = BatchMemoryConnector(memory.server)
    real = conn.create_many

    def racing(calendar_id: str, events: list[OutgoingEvent]) -> list[Any]:
        early = next(e for e in events if e.key == "job-j2")
        MemoryConnector.create(conn, calendar_id, replace(early, summary="Stale copy"))
        return real(calendar_id, events)

    conn.create_many = racing  # type: ignore[method-assign]
    result = mh.sync(connector=conn)
    assert result.status == "ok", result.error
    assert result.totals()["created"] == 4 and result.totals()["adopted"] == 1
    copies = mh.copies(cal)
    assert len(copies) == 5 and copies["job-j2"].summary != "Stale copy"
    assert linked_keys(mh) == set(copies)


def test_memory_per_item_failure_keeps_other_links(mh: SyncHarness,
                                                   memory: MemoryBackend) -> None:
    cal = memory.make_calendar("Work")
    mh.connect(cal)
    mh.items(jobs_doc(mh, 6))
    conn = BatchMemoryConnector(memory.server)
    conn.fail["job-j4"] = CalsyncError("Outlook rejected the event")
    result = mh.sync(connector=conn)
    assert result.status == "error"
    assert "CreateRemote: Outlook rejected the event" in (result.error or "")
    assert result.totals()["created"] == 5
    assert linked_keys(mh) == {f"job-j{i}" for i in range(6)} - {"job-j4"}
    assert mh.calendar(cal).status == "error"

    again = mh.sync(now=mh.now + dt.timedelta(minutes=1), connector=conn)
    assert again.status == "ok", again.error
    assert again.totals()["created"] == 1
    assert conn.batches[-1] == ["job-j4"]
    assert len(mh.copies(cal)) == 6 and len(linked_keys(mh)) == 6


def test_memory_throttled_items_are_retried_singly(mh: SyncHarness,
                                                   memory: MemoryBackend) -> None:
    cal = memory.make_calendar("Work")
    mh.connect(cal)
    mh.items(jobs_doc(mh, 4))
    conn = BatchMemoryConnector(memory.server)
    conn.fail["job-j1"] = Throttled("slow down", retry_after=2)
    conn.after.append(Throttled("still slow", retry_after=3))
    result = mh.sync(connector=conn)
    assert result.status == "ok", result.error
    assert result.waits == [3]  # the single retry went through the connector's retry layer
    assert result.totals()["created"] == 4
    assert len(conn.batches) == 1
    assert len(mh.copies(cal)) == 4 and len(linked_keys(mh)) == 4


def test_memory_reauth_in_batch_still_links_the_rest(mh: SyncHarness,
                                                     memory: MemoryBackend) -> None:
    cal = memory.make_calendar("Work")
    mh.connect(cal)
    mh.items(jobs_doc(mh, 4))
    conn = BatchMemoryConnector(memory.server)
    conn.fail["job-j0"] = NeedsReauth("token revoked")
    result = mh.sync(connector=conn)
    assert result.status == "needs_reauth"
    assert linked_keys(mh) == {"job-j1", "job-j2", "job-j3"}


def test_memory_crash_after_batch_before_links(mh: SyncHarness, memory: MemoryBackend,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cal = memory.make_calendar("Work")
    mh.connect(cal)
    mh.items(jobs_doc(mh, 10))
    conn = BatchMemoryConnector(memory.server)

    def crashing(self: Any, *args: Any) -> None:
        raise RuntimeError("worker killed")

    monkeypatch.setattr(engine._Executor, "_record_create", crashing)
    first = mh.sync(connector=conn)
    assert first.status == "error" and "RuntimeError" in (first.error or "")
    assert mh.links() == [] and len(memory.server.objects(cal)) == 10
    monkeypatch.undo()

    second = mh.sync(now=mh.now + dt.timedelta(minutes=1), connector=conn)
    assert second.status == "ok", second.error
    assert second.totals()["created"] == 0 and second.totals()["adopted"] == 10
    assert len(conn.batches) == 1
    assert len(memory.server.objects(cal)) == 10
    assert len(mh.copies(cal)) == 10 and len(linked_keys(mh)) == 10


def test_connector_without_create_many_creates_singly(mh: SyncHarness,
                                                      memory: MemoryBackend) -> None:
    cal = memory.make_calendar("Work")
    mh.connect(cal)
    mh.items(jobs_doc(mh, 3))
    memory.server.requests = 0
    result = mh.sync(connector=MemoryConnector(memory.server))
    assert result.status == "ok" and result.totals()["created"] == 3
    assert memory.server.requests == 1 + 3  # the pull, then one create each
