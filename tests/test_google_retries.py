"""One retry layer at the Google API edge: a throttled request is sent at most
``sync.max_retries + 1`` times, waits stay under ``sync.retry_max_seconds`` in all, and a
``Retry-After`` beyond that cap is not slept on (Throttled with the provider's retry_after is
raised after one request, for the runner to reschedule the calendar). Through the real
google-api-python-client against the emulator's 429/403/503 modes."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from calsync.config import Settings
from calsync.errors import ProviderUnavailable, Throttled
from calsync.sync.connector import Window, load_connector_factory
from calsync_google import GoogleConnector
from tests.emulators.google import (
    GoogleEmulator,
    google_emulator_fixture,
    google_settings,
    signed_in_context,
)

UTC = dt.timezone.utc
CAL = "tech@example.com"
WINDOW = Window(dt.datetime(2026, 11, 1, tzinfo=UTC), dt.datetime(2027, 11, 1, tzinfo=UTC))

google_emulator = google_emulator_fixture()


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def connect(em: GoogleEmulator, sleeps: Sleeps, max_retries: int = 4,
            retry_max_seconds: float = 60.0) -> GoogleConnector:
    base: Settings = google_settings(em)
    settings = dataclasses.replace(base, sync=dataclasses.replace(
        base.sync, max_retries=max_retries, retry_max_seconds=retry_max_seconds))
    ctx = signed_in_context(em, CAL, settings=settings, sleep=sleeps, random=lambda: 0.5)
    connector = load_connector_factory("google").connect(ctx)
    assert isinstance(connector, GoogleConnector)
    return connector


@pytest.fixture
def em(google_emulator: GoogleEmulator) -> GoogleEmulator:
    return google_emulator


@pytest.mark.parametrize("max_retries", [0, 2, 4])
@pytest.mark.parametrize(("status", "reason", "retry_after"), [
    (429, "rateLimitExceeded", "1"), (403, "userRateLimitExceeded", None),
    (503, "backendError", "1")])
def test_a_throttled_call_is_sent_at_most_max_retries_plus_one_times(
        em: GoogleEmulator, max_retries: int, status: int, reason: str,
        retry_after: str | None) -> None:
    sleeps = Sleeps()
    c = connect(em, sleeps, max_retries=max_retries)
    em.fail_next(status, reason, retry_after=retry_after, count=100)
    before = em.counts["api"]
    with pytest.raises(Throttled) as info:
        c.changes(CAL, None, WINDOW)
    assert em.counts["api"] - before == max_retries + 1
    assert len(sleeps) == max_retries and info.value.retry_after is not None


def test_server_errors_are_capped_the_same_way(em: GoogleEmulator) -> None:
    sleeps = Sleeps()
    c = connect(em, sleeps, max_retries=3)
    em.fail_next(500, "backendError", count=100)
    before = em.counts["api"]
    with pytest.raises(ProviderUnavailable):
        c.list_calendars()
    assert em.counts["api"] - before == 4 and len(sleeps) == 3


def test_an_hour_long_retry_after_is_raised_after_one_request_not_slept(
        em: GoogleEmulator) -> None:
    sleeps = Sleeps()
    c = connect(em, sleeps)
    em.fail_next(429, "rateLimitExceeded", retry_after="3600")
    before = em.counts["api"]
    with pytest.raises(Throttled) as info:
        c.changes(CAL, None, WINDOW)
    assert info.value.retry_after == 3600.0
    assert em.counts["api"] - before == 1 and sleeps == []
    assert c.changes(CAL, None, WINDOW).token  # the next run goes through


def test_waits_stop_at_the_total_cap(em: GoogleEmulator) -> None:
    sleeps = Sleeps()
    c = connect(em, sleeps, max_retries=10, retry_max_seconds=60)
    em.fail_next(429, "rateLimitExceeded", retry_after="25", count=100)
    before = em.counts["api"]
    with pytest.raises(Throttled) as info:
        c.list_calendars()
    assert sleeps == [25.0, 25.0]  # a third wait would pass 60 s in all
    assert em.counts["api"] - before == 3 and info.value.retry_after == 25.0


def test_a_throttled_page_is_retried_alone_not_the_whole_listing(em: GoogleEmulator) -> None:
    for day in range(1, 6):
        em.put_event(CAL, {"summary": f"e{day}",
                           "start": {"dateTime": f"2026-11-{day:02d}T09:00:00-06:00"},
                           "end": {"dateTime": f"2026-11-{day:02d}T10:00:00-06:00"}})
    em.page_sizes = [2]
    sleeps = Sleeps()
    c = connect(em, sleeps)
    calls: list[Any] = []
    original = c.runner._attempt

    def spy(*args: Any) -> Any:
        calls.append(args[1])
        if len(calls) == 2:
            em.fail_next(429, "rateLimitExceeded", retry_after="2")
        return original(*args)

    c.runner._attempt = spy  # type: ignore[method-assign]
    full = c.changes(CAL, None, WINDOW)
    assert len(full.changed) == 5 and sleeps == [2.0]
    assert full.requests == 4  # 3 pages + the one throttled retry
