"""Writes to one CalDAV calendar in parallel (the engine's ``parallel_writes``), on real
servers. Xandikos commits each write to the collection's git index under a lock file and
answers 423 Locked to a write that arrives while another holds it (it does not wait):
such a write is sent again and the calendar's writes go one at a time from then on; a
lock that stays is a retryable ProviderUnavailable, not a failed sync. Whatever the
server, the token kept after parallel writes covers them: a later change is seen by a
process that remembers nothing of those writes."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from calsync.config import Settings
from calsync.errors import ProviderUnavailable
from calsync.sync.connector import ConnectContext, Window, load_connector_factory
from calsync_caldav.connector import CaldavConnector, WriteLedger
from calsync_caldav.writegate import WriteGate
from tests.caldav_servers import (  # noqa: F401 - fixtures used by name
    DavServer,
    dav_server,
    xandikos_server,
)
from tests.test_caldav_connector import job

UTC = dt.timezone.utc
WINDOW = Window(dt.datetime(2026, 10, 1, tzinfo=UTC), dt.datetime(2027, 12, 1, tzinfo=UTC))


class ReleasingTransport(httpx.BaseTransport):
    """Passes requests through; once the server has answered 423, removes ``lock`` (the
    other writer is done) and notes every request's method and status."""

    def __init__(self, lock: Path | None = None) -> None:
        self.inner = httpx.HTTPTransport()
        self.lock = lock
        self.seen: list[tuple[str, int]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        resp = self.inner.handle_request(request)
        self.seen.append((request.method, resp.status_code))
        if resp.status_code == 423 and self.lock is not None:
            self.lock.unlink(missing_ok=True)
        return resp

    def close(self) -> None:
        self.inner.close()


def connector(server: DavServer, transport: httpx.BaseTransport | None = None,
              gate: WriteGate | None = None) -> CaldavConnector:
    http = httpx.Client(transport=transport, timeout=30) if transport is not None else None
    ctx = ConnectContext(provider="caldav", url=server.base_url, account=server.username,
                         credentials={"username": server.username, "password": "secret"},
                         settings=Settings(), http=http)
    conn = load_connector_factory("caldav").connect(ctx)
    assert isinstance(conn, CaldavConnector)
    conn.ledger = WriteLedger()  # a process of its own
    conn.gate = gate if gate is not None else WriteGate(sleep=lambda s: None)
    return conn


def index_lock(server: DavServer, calendar_url: str) -> Path:
    """The lock file Xandikos holds while it commits a write to this calendar."""
    slug = calendar_url.rstrip("/").rsplit("/", 1)[-1]
    index = server.folder / "data" / "user" / "calendars" / slug / ".git" / "index"
    assert index.exists(), index
    return index.with_name("index.lock")


def test_a_write_refused_as_locked_is_sent_again(xandikos_server: DavServer) -> None:
    cal = xandikos_server.make_calendar()
    lock = index_lock(xandikos_server, cal)
    transport = ReleasingTransport(lock)
    waits: list[float] = []
    conn = connector(xandikos_server, transport, WriteGate(sleep=waits.append))
    lock.write_bytes(b"")  # another write is being committed
    made = conn.create(cal, job("job-j1"))
    assert ("PUT", 423) in transport.seen and not lock.exists()
    assert xandikos_server.get(f"{cal}job-j1.ics").status_code == 200
    assert made.etag and waits and sum(waits) < 5
    key = conn._ledger_key(cal)
    assert conn.gate.one_at_a_time(key)  # learnt: this calendar takes one write at a time
    conn.delete(cal, made.remote_id, made.etag)
    assert xandikos_server.get(f"{cal}job-j1.ics").status_code == 404


def test_a_calendar_that_stays_locked_is_retried_later(xandikos_server: DavServer) -> None:
    cal = xandikos_server.make_calendar()
    lock = index_lock(xandikos_server, cal)
    waits: list[float] = []
    conn = connector(xandikos_server, ReleasingTransport(), WriteGate(sleep=waits.append))
    lock.write_bytes(b"")  # held by someone else, and not released
    try:
        with pytest.raises(ProviderUnavailable) as raised:
            conn.create(cal, job("job-j1"))
    finally:
        lock.unlink()
    assert "423" in str(raised.value) and "Gate code" not in str(raised.value)
    assert 0 < sum(waits) < 5
    assert xandikos_server.get(f"{cal}job-j1.ics").status_code == 404


def test_parallel_writes_then_a_later_delete_is_seen_by_another_process(
        dav_server: DavServer) -> None:
    cal = dav_server.make_calendar()
    conn = connector(dav_server)
    keys = [f"job-p{i:02d}" for i in range(16)]
    pulled = conn.changes(cal, None, WINDOW)
    with ThreadPoolExecutor(4) as pool:  # as the engine runs them (write_bound 4)
        made = dict(zip(keys, pool.map(lambda k: conn.create(cal, job(k)), keys)))
    kept = conn.token_after_writes(cal, pulled.token)
    assert kept is not None

    second = connector(dav_server)  # the next run, in another process
    again = second.changes(cal, kept, WINDOW)
    assert again.changed == [] and again.deleted == []
    updates, deletes = keys[:8], keys[8:]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda k: second.update(cal, made[k].remote_id,
                                              job(k, summary="Install: Beta LLC"),
                                              made[k].etag), updates))
        list(pool.map(lambda k: second.delete(cal, made[k].remote_id, made[k].etag),
                      deletes))
    kept = second.token_after_writes(cal, again.token)
    assert kept is not None

    assert dav_server.delete(f"{cal}job-p00.ics").status_code in (200, 204)  # the user
    third = connector(dav_server)
    seen = third.changes(cal, kept, WINDOW)
    assert seen.changed == []
    assert [h.rsplit("/", 1)[-1] for h in seen.deleted] == ["job-p00.ics"]
    listed = third.changes(cal, None, WINDOW)
    assert sorted(ev.calsync_key or "" for ev in listed.changed) == keys[1:8]
