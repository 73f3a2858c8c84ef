"""One retry layer at the Graph edge: a throttled request is sent at most
``sync.max_retries + 1`` times, waits stay under ``sync.retry_max_seconds`` in all, and a
``Retry-After`` beyond that cap is not slept on (Throttled with the provider's retry_after is
raised after one request, for the runner to reschedule the calendar); ``$batch`` items follow
the same caps. Through the real msal/httpx against the Graph emulator's 429/503 modes."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator

import pytest

from calsync.config import Settings, load_settings
from calsync.errors import ProviderUnavailable, Throttled
from calsync.sync.connector import OutgoingEvent, Window
from calsync_outlook.connector import OutlookConnector
from tests.conftest import SECRET
from tests.emulators.graph import GraphEmulator, signed_in_connector

UTC = dt.timezone.utc
USER = "jane@contoso.com"
WINDOW = Window(dt.datetime(2026, 11, 1, tzinfo=UTC), dt.datetime(2027, 3, 1, tzinfo=UTC))


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def em() -> Iterator[GraphEmulator]:
    with GraphEmulator() as emulator:
        emulator.add_mailbox(USER)
        yield emulator


def connect(em: GraphEmulator, sleeps: Sleeps, max_retries: int = 4,
            retry_max_seconds: float = 60.0) -> Iterator[OutlookConnector]:
    base = em.configure(load_settings(env={"CALSYNC_SECRET_KEY": SECRET}))
    settings: Settings = dataclasses.replace(base, sync=dataclasses.replace(
        base.sync, max_retries=max_retries, retry_max_seconds=retry_max_seconds))
    with signed_in_connector(em, settings, sleeps) as c:
        yield c


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def connector(em: GraphEmulator, sleeps: Sleeps) -> Iterator[OutlookConnector]:
    yield from connect(em, sleeps)


def job(key: str) -> OutgoingEvent:
    return OutgoingEvent(key=key, uid=f"{key}@calsync", summary="Install",
                         start=dt.datetime(2026, 11, 24, 15, tzinfo=UTC),
                         end=dt.datetime(2026, 11, 24, 17, tzinfo=UTC), all_day=False,
                         tzid="America/Chicago")


@pytest.mark.parametrize("max_retries", [0, 2, 4])
@pytest.mark.parametrize("status", [429, 503])
def test_a_throttled_call_is_sent_at_most_max_retries_plus_one_times(
        em: GraphEmulator, sleeps: Sleeps, max_retries: int, status: int) -> None:
    for c in connect(em, sleeps, max_retries=max_retries):
        em.throttle(100, retry_after=1, status=status)
        before = em.http_requests
        with pytest.raises(Throttled) as info:
            c.changes(em.calendar_id(USER), None, WINDOW)
        assert em.http_requests - before == max_retries + 1
        assert sleeps == [1.0] * max_retries and info.value.retry_after == 1.0


def test_server_errors_without_retry_after_are_capped_the_same_way(
        em: GraphEmulator, sleeps: Sleeps) -> None:
    for c in connect(em, sleeps, max_retries=3):
        em.fail(100, status=502)
        before = em.http_requests
        with pytest.raises(ProviderUnavailable):
            c.list_calendars()
        assert em.http_requests - before == 4 and len(sleeps) == 3


def test_an_hour_long_retry_after_is_raised_after_one_request_not_slept(
        em: GraphEmulator, connector: OutlookConnector, sleeps: Sleeps) -> None:
    em.throttle(1, retry_after=3600)
    before = em.http_requests
    with pytest.raises(Throttled) as info:
        connector.changes(em.calendar_id(USER), None, WINDOW)
    assert info.value.retry_after == 3600.0
    assert em.http_requests - before == 1 and sleeps == []
    assert connector.changes(em.calendar_id(USER), None, WINDOW).token  # later: fine


def test_waits_stop_at_the_total_cap(em: GraphEmulator, sleeps: Sleeps) -> None:
    for c in connect(em, sleeps, max_retries=10, retry_max_seconds=60):
        em.throttle(100, retry_after=25)
        before = em.http_requests
        with pytest.raises(Throttled) as info:
            c.list_calendars()
        assert sleeps == [25.0, 25.0]  # a third wait would pass 60 s in all
        assert em.http_requests - before == 3 and info.value.retry_after == 25.0


def test_batch_items_with_a_long_retry_after_are_throttled_not_slept(
        em: GraphEmulator, connector: OutlookConnector, sleeps: Sleeps) -> None:
    cal = em.calendar_id(USER)
    em.throttle_batch_items(2, retry_after=3600)
    results = connector.create_many(cal, [job(f"job-{i}") for i in range(5)])
    throttled = [r for r in results if isinstance(r, Throttled)]
    assert len(throttled) == 2 and all(t.retry_after == 3600.0 for t in throttled)
    assert sleeps == [] and em.batch_sizes == [5]
    assert len(em.events_in(USER, cal)) == 3


def test_batch_items_throttled_on_every_attempt_stop_at_max_retries(
        em: GraphEmulator, sleeps: Sleeps) -> None:
    for c in connect(em, sleeps, max_retries=2):
        cal = em.calendar_id(USER)
        em.throttle_batch_items(100, retry_after=1)
        results = c.create_many(cal, [job("job-a"), job("job-b")])
        assert all(isinstance(r, Throttled) for r in results)
        assert em.batch_sizes == [2, 2, 2] and sleeps == [1.0, 1.0]
