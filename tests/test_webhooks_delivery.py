"""Delivery to a real receiver on 127.0.0.1 that verifies every request with the
``standardwebhooks`` library: signatures, retries with backoff (a 500 then 200, a receiver
that hangs past the timeout, one that is down for a while), 410 disabling the endpoint,
the retry schedule, per-subject order, the per-endpoint concurrency limit, a slow endpoint
never holding up another, and two workers on PostgreSQL never sending one event at once."""

from __future__ import annotations

import datetime as dt
import random
import socket
import threading
import time
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import select

from calsync.config import DatabaseSettings, Settings, load_settings
from calsync.db.models import WebhookDelivery, WebhookEndpoint
from calsync.db.session import Database
from calsync.outbox.delivery import DEFAULT_DELAYS, Deliverer, RetrySchedule
from calsync.outbox.endpoints import create_endpoint, list_endpoints, recent_deliveries
from calsync.outbox.events import SCHEDULE_ITEM_CHANGED, emit
from tests.conftest import SECRET, make_db
from tests.webhook_receiver import Received, Receiver, always

UTC = dt.timezone.utc
FAST = RetrySchedule(delays=(0.05, 0.05, 0.05, 0.05), jitter=0.0)


def fast_settings(settings: Settings, **webhooks: Any) -> Settings:
    values: dict[str, Any] = {"timeout_seconds": 5.0, "lease_seconds": 5}
    values.update(webhooks)
    return replace(settings, webhooks=replace(settings.webhooks, **values))


def _now() -> dt.datetime:
    return dt.datetime.now(UTC)


def register(db: Database, settings: Settings, url: str, events: list[str] | None = None
             ) -> tuple[str, str]:
    with db.session() as s:
        ep, secret = create_endpoint(s, settings, url, events or ["*"], "", _now())
        return ep.public_id, secret


def emit_many(db: Database, n: int, key: str | None = None, start: int = 0) -> None:
    with db.session() as s:
        for i in range(start, start + n):
            emit(s, SCHEDULE_ITEM_CHANGED, {"n": i}, _now(),
                 order_key=key if key is not None else f"item:block:{i}")


def health(db: Database, public_id: str) -> dict[str, Any]:
    with db.read_session() as s:
        return next(e for e in list_endpoints(s) if e["id"] == public_id)["health"]


def deliveries(db: Database, public_id: str) -> list[dict[str, Any]]:
    with db.read_session() as s:
        return recent_deliveries(s, public_id, 500)


@pytest.fixture
def receiver() -> Any:
    r = Receiver().start()
    yield r
    r.stop()


def test_every_delivery_is_signed_per_standard_webhooks(db: Database, settings: Settings,
                                                        receiver: Receiver) -> None:
    ep, secret = register(db, settings, receiver.url)
    receiver.secret = secret
    emit_many(db, 5)
    deliverer = Deliverer(fast_settings(settings), db, schedule=FAST)
    try:
        deliverer.run_until_idle(timeout=20)
    finally:
        deliverer.close()
    assert len(receiver.received) == 5
    assert all(r.verified for r in receiver.received)
    assert sorted(r.data["n"] for r in receiver.received) == [0, 1, 2, 3, 4]
    first = receiver.received[0]
    assert first.message_id.startswith("msg_")
    assert first.headers["webhook-signature"].startswith("v1,")
    assert abs(int(first.headers["webhook-timestamp"]) - time.time()) < 60
    assert first.headers["content-type"] == "application/json"
    assert set(first.payload or {}) == {"type", "timestamp", "data"}
    h = health(db, ep)
    assert h["last_success_at"] and h["failures_in_a_row"] == 0 and h["pending"] == 0
    # a wrong secret is caught by the library: the check is real
    receiver.secret = "whsec_" + "A" * 32
    emit_many(db, 1, start=9)
    deliverer = Deliverer(fast_settings(settings), db, schedule=FAST)
    try:
        deliverer.run_until_idle(timeout=20)
    finally:
        deliverer.close()
    assert receiver.received[-1].verified is False


def test_500_then_200_is_retried_with_the_same_id(db: Database, settings: Settings,
                                                  receiver: Receiver) -> None:
    ep, receiver.secret = register(db, settings, receiver.url)
    answers = iter([500, 503])
    receiver.behaviour = lambda _r, _req: (next(answers, 200), 0.0)
    emit_many(db, 1)
    deliverer = Deliverer(fast_settings(settings), db, schedule=FAST)
    try:
        deliverer.run_until_idle(timeout=20, wait_retries=True)
    finally:
        deliverer.close()
    assert [r.answered for r in receiver.received] == [500, 503, 200]
    assert len({r.message_id for r in receiver.received}) == 1  # one webhook-id
    assert all(r.verified for r in receiver.received)
    (row,) = deliveries(db, ep)
    assert row["status"] == "delivered" and row["attempts"] == 3
    assert [a["status_code"] for a in row["attempt_log"]] == [500, 503, 200]
    assert health(db, ep)["failures_in_a_row"] == 0


def test_a_receiver_hanging_past_the_timeout_is_retried(db: Database, settings: Settings,
                                                        receiver: Receiver) -> None:
    ep, receiver.secret = register(db, settings, receiver.url)
    calls = {"n": 0}

    def hang_once(_r: Receiver, _req: Received) -> tuple[int, float]:
        calls["n"] += 1
        return (200, 2.0) if calls["n"] == 1 else (200, 0.0)

    receiver.behaviour = hang_once
    emit_many(db, 1)
    deliverer = Deliverer(fast_settings(settings, timeout_seconds=0.3), db, schedule=FAST)
    try:
        deliverer.run_until_idle(timeout=20, wait_retries=True)
    finally:
        deliverer.close()
    (row,) = deliveries(db, ep)
    assert row["status"] == "delivered"
    first, second = row["attempt_log"]
    assert first["status_code"] is None and "timeout" in first["error"]
    assert first["duration_ms"] < 2000  # gave up before the hanging answer came
    assert second["status_code"] == 200


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_receiver_down_for_a_while_gets_everything_once_back(db: Database,
                                                               settings: Settings) -> None:
    port = _free_port()
    ep, secret = register(db, settings, f"http://127.0.0.1:{port}/hook")
    emit_many(db, 3)
    schedule = RetrySchedule(delays=(0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0), jitter=0.2,
                             rng=random.Random(7))
    deliverer = Deliverer(fast_settings(settings), db, schedule=schedule)
    receiver = Receiver(secret=secret, port=port)
    try:
        deadline = time.monotonic() + 10
        while health(db, ep)["failures_in_a_row"] < 6 and time.monotonic() < deadline:
            deliverer.pump()
            time.sleep(0.02)
        down = health(db, ep)
        assert down["failures_in_a_row"] >= 6 and down["last_success_at"] is None
        assert not down["disabled"] and down["pending"] == 3
        errors = {a["error"] for d in deliveries(db, ep) for a in d["attempt_log"]}
        assert errors and all(e.startswith("could not connect") for e in errors)
        receiver.start()  # back on the same port
        deliverer.run_until_idle(timeout=20, wait_retries=True)
    finally:
        deliverer.close()
        receiver.stop()
    assert sorted(r.data["n"] for r in receiver.received) == [0, 1, 2]
    assert all(r.verified for r in receiver.received)
    up = health(db, ep)
    assert up["failures_in_a_row"] == 0 and up["last_success_at"] and up["pending"] == 0


def test_410_disables_the_endpoint_and_a_test_event_enables_it(
        db: Database, settings: Settings, receiver: Receiver, app_client: Any,
        make_token: Any) -> None:
    ep, receiver.secret = register(db, settings, receiver.url)
    receiver.behaviour = always(410)
    emit_many(db, 3, key="item:block:same")  # one subject: the first blocks the others
    deliverer = Deliverer(fast_settings(settings), db, schedule=FAST)
    try:
        deliverer.run_until_idle(timeout=20, wait_retries=True)
        assert len(receiver.received) == 1
        h = health(db, ep)
        assert h["disabled"] and "410" in h["disabled_reason"] and h["pending"] == 0
        assert sorted(d["status"] for d in deliveries(db, ep)) == \
            ["cancelled", "cancelled", "failed"]
        emit_many(db, 2, start=10)  # not even queued for a disabled endpoint
        deliverer.run_until_idle(timeout=20, wait_retries=True)
        assert len(receiver.received) == 1 and len(deliveries(db, ep)) == 3
        # the receiver is back: a test event enables the endpoint again
        receiver.behaviour = always(204)
        admin = {"Authorization": f"Bearer {make_token('admin')}"}
        assert app_client.post(f"/api/webhook-endpoints/{ep}/test",
                               headers=admin).status_code == 202
        emit_many(db, 1, start=20)
        deliverer.run_until_idle(timeout=20, wait_retries=True)
    finally:
        deliverer.close()
    types = [r.type for r in receiver.received[1:]]
    assert sorted(types) == ["schedule_item.changed", "webhook.test"]
    assert not health(db, ep)["disabled"]


def test_the_default_schedule_retries_for_more_than_a_day_then_gives_up(
        db: Database, settings: Settings, receiver: Receiver) -> None:
    schedule = RetrySchedule(rng=random.Random(1))
    assert schedule.total_seconds >= 24 * 3600  # even with every jitter at its low end
    delays = [schedule.delay(n) for n in range(1, len(DEFAULT_DELAYS) + 1)]
    assert all(d is not None for d in delays)
    assert delays == sorted(delays) or max(delays) <= DEFAULT_DELAYS[-1] * 1.1
    assert schedule.delay(len(DEFAULT_DELAYS) + 1) is None
    jittered = {round(RetrySchedule(rng=random.Random(seed)).delay(2) or 0) for seed in
                range(10)}
    assert len(jittered) > 1 and all(270 <= d <= 330 for d in jittered)
    # a receiver failing forever: given up after the schedule, on a moved clock
    ep, receiver.secret = register(db, settings, receiver.url)
    receiver.behaviour = always(500)
    emit_many(db, 1)
    clock = {"now": _now()}
    deliverer = Deliverer(fast_settings(settings), db, schedule=RetrySchedule(jitter=0.0),
                          clock=lambda: clock["now"])
    try:
        for _ in range(len(DEFAULT_DELAYS) + 1):
            deliverer.run_until_idle(timeout=10)
            clock["now"] += dt.timedelta(hours=11)
    finally:
        deliverer.close()
    (row,) = deliveries(db, ep)
    assert row["status"] == "failed" and row["attempts"] == len(DEFAULT_DELAYS) + 1
    assert len(receiver.received) == len(DEFAULT_DELAYS) + 1
    assert health(db, ep)["failures_in_a_row"] == len(DEFAULT_DELAYS) + 1


def test_one_subjects_events_arrive_in_order_despite_failures(
        db: Database, settings: Settings, receiver: Receiver) -> None:
    ep, receiver.secret = register(db, settings, receiver.url)
    failed: set[int] = set()

    def flaky(_r: Receiver, req: Received) -> tuple[int, float]:
        n = req.data["n"]
        if n % 3 == 0 and n not in failed:  # every third event fails once
            failed.add(n)
            return 500, 0.0
        return 200, 0.01

    receiver.behaviour = flaky
    with db.session() as s:
        for i in range(12):
            emit(s, SCHEDULE_ITEM_CHANGED, {"n": i, "key": i % 2}, _now(),
                 order_key=f"item:block:{i % 2}")
    deliverer = Deliverer(fast_settings(settings, max_concurrency_per_endpoint=4), db,
                          schedule=FAST)
    try:
        deliverer.run_until_idle(timeout=30, wait_retries=True)
    finally:
        deliverer.close()
    for key in (0, 1):
        ok = [r.data["n"] for r in receiver.received if r.answered == 200
              and r.data["key"] == key]
        assert ok == sorted(ok) and len(ok) == 6  # in order, each once
        arrived = [r.data["n"] for r in receiver.received if r.data["key"] == key]
        # nothing of the subject was sent before the earlier event got its 2xx
        for i, n in enumerate(arrived):
            assert all(m <= n for m in arrived[:i])


def test_per_endpoint_concurrency_limit_and_a_slow_endpoint_holds_up_no_other(
        db: Database, settings: Settings) -> None:
    slow, fast = Receiver(behaviour=always(200, 1.0)).start(), Receiver().start()
    try:
        slow_ep, slow.secret = register(db, settings, slow.url)
        fast_ep, fast.secret = register(db, settings, fast.url)
        emit_many(db, 6)
        deliverer = Deliverer(fast_settings(settings, max_concurrency_per_endpoint=3,
                                            timeout_seconds=3.0), db, schedule=FAST,
                              threads=8)
        try:
            deliverer.run_until_idle(timeout=30)
        finally:
            deliverer.close()
        assert len(fast.received) == 6 and len(slow.received) == 6
        assert slow.max_in_flight == 3  # the limit, and it was reached: concurrency pays
        # the slow endpoint's second round (after its first answers, 1 s each) started
        # only after every delivery to the fast one had arrived
        second_round = sorted(r.at for r in slow.received)[3]
        assert max(r.at for r in fast.received) < second_round
    finally:
        slow.stop()
        fast.stop()


@pytest.fixture
def pg_db(tmp_path: Any, request: pytest.FixtureRequest) -> Any:
    database = make_db("postgresql", tmp_path, request)
    yield database
    database.dispose()


def test_two_workers_on_postgresql_never_send_one_event_at_the_same_time(
        pg_db: Database) -> None:
    db = pg_db
    settings = replace(load_settings(env={"CALSYNC_SECRET_KEY": SECRET}),
                       database=DatabaseSettings(url=db.url))
    receiver = Receiver(behaviour=always(200, 0.005)).start()
    try:
        ep, receiver.secret = register(db, settings, receiver.url)
        emit_many(db, 300)
        fast = fast_settings(settings, max_concurrency_per_endpoint=8)
        workers = [Deliverer(fast, Database(db.url), schedule=FAST, threads=4,
                             owner=f"test-worker-{i}") for i in range(2)]
        errors: list[BaseException] = []

        def run(d: Deliverer) -> None:
            try:
                d.run_until_idle(timeout=60)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(w,)) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        for w in workers:
            w.close()
            w.db.dispose()
        assert not errors
        ids = [r.message_id for r in receiver.received]
        assert len(ids) == 300 and len(set(ids)) == 300  # every event once, no crash here
        assert receiver.max_same_id_in_flight == 1
        assert receiver.max_in_flight <= 8
        with db.read_session() as s:
            by_worker = set(s.scalars(select(WebhookDelivery.lease_owner)))
            assert by_worker == {None}
            endpoint = s.scalar(select(WebhookEndpoint))
            assert endpoint is not None and endpoint.failures_in_a_row == 0
        from calsync.db.models import WebhookAttempt
        with db.read_session() as s:
            owners = set(s.scalars(select(WebhookAttempt.worker)))
        assert owners == {"test-worker-0", "test-worker-1"}  # both took part
    finally:
        receiver.stop()
