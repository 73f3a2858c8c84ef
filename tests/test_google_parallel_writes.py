"""Writes to one Google calendar from several threads (the engine's ``parallel_writes``)
through the real google-api-python-client against the emulator. ``httplib2.Http`` is not
thread-safe: no ``Http`` serves two requests at once, and an expired token is refreshed
once, not by every thread that finds it expired."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httplib2

from calsync.sync.connector import Window, load_connector_factory
from calsync_google import GoogleConnector
from tests.emulators.google import GoogleEmulator, google_emulator_fixture, signed_in_context
from tests.test_google_connector import CAL, job

UTC = dt.timezone.utc
WINDOW = Window(dt.datetime(2026, 11, 1, tzinfo=UTC), dt.datetime(2027, 11, 1, tzinfo=UTC))

google_emulator = google_emulator_fixture()


class RecordingHttp(httplib2.Http):  # type: ignore[misc]
    """An ``Http`` noting (itself, method, uri) of every request and each request that
    came while it was still busy with another; the first two event inserts wait for each
    other, so two writes are surely in flight together."""

    def __init__(self, log: list[tuple[int, str, str]], overlaps: list[str],
                 together: threading.Barrier) -> None:
        super().__init__(timeout=30)
        self.log, self.overlaps, self.together = log, overlaps, together
        self.busy = False

    def request(self, uri: str, method: str = "GET", *args: Any, **kwargs: Any) -> Any:
        self.log.append((id(self), method, uri))
        if self.busy:
            self.overlaps.append(uri)
        self.busy = True
        try:
            if method == "POST" and uri.split("?")[0].endswith("/events"):
                try:
                    self.together.wait(timeout=5)
                except threading.BrokenBarrierError:
                    pass  # the later inserts: no one left to wait for
            return super().request(uri, method, *args, **kwargs)
        finally:
            self.busy = False


def connect(em: GoogleEmulator, http: Any, expired: bool = False) -> GoogleConnector:
    ctx = dataclasses.replace(signed_in_context(em, CAL, expired=expired,
                                                sleep=lambda _s: None), http=http)
    connector = load_connector_factory("google").connect(ctx)
    assert isinstance(connector, GoogleConnector)
    return connector


def test_each_thread_writes_with_its_own_http_and_refreshes_once(
        google_emulator: GoogleEmulator) -> None:
    log: list[tuple[int, str, str]] = []
    overlaps: list[str] = []
    together = threading.Barrier(2)
    conn = connect(google_emulator, lambda: RecordingHttp(log, overlaps, together),
                   expired=True)
    assert conn.parallel_writes
    keys = [f"job-p{i}" for i in range(8)]
    with ThreadPoolExecutor(4) as pool:  # as the engine runs them (write_bound 4)
        made = list(pool.map(lambda k: conn.create(CAL, job(k)), keys))
    assert sorted(ev.calsync_key or "" for ev in made) == keys
    assert overlaps == []  # no Http served two requests at once...
    assert 2 <= len({http for http, _m, _u in log}) <= 4  # ...though two ran together
    token_uri = conn.settings.google.token_uri
    assert [uri for _h, _m, uri in log if uri == token_uri] == [token_uri]
    listed = conn.changes(CAL, None, WINDOW)
    assert sorted(ev.calsync_key or "" for ev in listed.changed) == keys
    conn.close()


def test_one_injected_http_keeps_writes_one_at_a_time(google_emulator: GoogleEmulator) -> None:
    conn = connect(google_emulator, RecordingHttp([], [], threading.Barrier(1)))
    assert not conn.parallel_writes  # a single Http object cannot serve several threads
    conn.close()
