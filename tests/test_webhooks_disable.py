"""Endpoints that keep failing are disabled (Standard Webhooks / Svix practice), against a
real receiver on 127.0.0.1 and both engines, with the deliverer's clock moved by days:
every attempt failing for ``webhooks.disable_after_days`` disables the endpoint (reason
with what to do, pending deliveries cancelled, counter and gauge); a success resets the
clock; ``POST /api/webhook-endpoints/{id}/enable`` and ``calsync webhooks enable`` start
delivering new events again."""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import select

from calsync.config import Settings
from calsync.db.models import WebhookEndpoint
from calsync.db.session import Database
from calsync.metrics import REGISTRY
from calsync.outbox.delivery import Deliverer, RetrySchedule
from calsync.outbox.endpoints import create_endpoint, list_endpoints, recent_deliveries
from calsync.outbox.events import SCHEDULE_ITEM_CHANGED, emit
from tests.conftest import SECRET
from tests.test_sync_cli import calsync
from tests.webhook_receiver import Receiver, always

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
# Retries come seconds after a failure: with the clock moved by days every pump has one due.
QUICK = RetrySchedule(delays=(1.0,) * 50, jitter=0.0)


class Clock:
    def __init__(self, at: dt.datetime) -> None:
        self.at = at
        self._lock = threading.Lock()

    def __call__(self) -> dt.datetime:
        with self._lock:
            return self.at

    def move(self, **delta: float) -> None:
        with self._lock:
            self.at += dt.timedelta(**delta)


@pytest.fixture
def receiver() -> Any:
    r = Receiver().start()
    yield r
    r.stop()


def wh_settings(settings: Settings, **webhooks: Any) -> Settings:
    values: dict[str, Any] = {"timeout_seconds": 5.0, "lease_seconds": 30,
                              "disable_after_days": 5}
    values.update(webhooks)
    return replace(settings, webhooks=replace(settings.webhooks, **values))


def register(db: Database, settings: Settings, url: str) -> tuple[str, str]:
    with db.session() as s:
        ep, secret = create_endpoint(s, settings, url, ["*"], "", T0)
        return ep.public_id, secret


def emit_one(db: Database, at: dt.datetime, n: int, key: str = "item:block:same") -> None:
    with db.session() as s:
        emit(s, SCHEDULE_ITEM_CHANGED, {"n": n}, at, order_key=key)


def health(db: Database, public_id: str) -> dict[str, Any]:
    with db.read_session() as s:
        return next(e for e in list_endpoints(s) if e["id"] == public_id)["health"]


def statuses(db: Database, public_id: str) -> list[str]:
    with db.read_session() as s:
        return sorted(d["status"] for d in recent_deliveries(s, public_id, 500))


def disabled_count(reason: str) -> float:
    return REGISTRY.get_sample_value("calsync_webhook_endpoints_disabled_total",
                                     {"reason": reason}) or 0.0


def attempt(deliverer: Deliverer) -> None:
    """Send what is due at the deliverer's clock and wait for the answers (a later event
    of a subject waits behind the first: due, yet not claimed, so run_until_idle would
    wait for it)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        started = deliverer.pump()
        while deliverer.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        if not started:
            return
    raise TimeoutError("deliveries still in flight")


def test_an_endpoint_failing_every_attempt_for_the_window_is_disabled(
        db: Database, settings: Settings, receiver: Receiver, app_client: Any,
        make_token: Any) -> None:
    ep, receiver.secret = register(db, settings, receiver.url)
    receiver.behaviour = always(500)
    clock = Clock(T0)
    emit_one(db, T0, 0)
    emit_one(db, T0, 1)  # the same subject: waits behind the first, stays pending
    before = disabled_count("failing")
    deliverer = Deliverer(wh_settings(settings), db, schedule=QUICK, clock=clock)
    try:
        attempt(deliverer)
        h = health(db, ep)
        assert h["failing_since"] == T0.isoformat() and not h["disabled"]
        for _ in range(4):   # failing on days 1-4: still enabled
            clock.move(days=1)
            attempt(deliverer)
        h = health(db, ep)
        assert not h["disabled"] and h["failures_in_a_row"] == 5 and h["pending"] == 2
        assert h["failing_since"] == T0.isoformat()
        clock.move(days=1, seconds=1)  # five days and a second of nothing but failures
        attempt(deliverer)
        h = health(db, ep)
        assert h["disabled"] and h["pending"] == 0
        assert h["disabled_at"] == (T0 + dt.timedelta(days=5, seconds=1)).isoformat()
        reason = h["disabled_reason"]
        assert f"since {T0.isoformat()}" in reason and "5.0 days" in reason
        assert f"calsync webhooks enable {ep}" in reason and "fix the receiver" in reason
        assert statuses(db, ep) == ["cancelled", "failed"]
        assert disabled_count("failing") == before + 1
        assert len(receiver.received) == 6
        # nothing more is sent or queued for it
        emit_one(db, clock(), 2, key="item:block:other")
        clock.move(hours=1)
        attempt(deliverer)
        assert len(receiver.received) == 6 and len(statuses(db, ep)) == 2
    finally:
        deliverer.close()
    admin = {"Authorization": f"Bearer {make_token('admin')}"}
    metrics = app_client.get("/metrics", headers=admin).text
    assert 'calsync_webhook_endpoints{state="disabled"} 1.0' in metrics
    listed = app_client.get("/api/webhook-endpoints", headers=admin).json()["endpoints"]
    assert listed[0]["health"]["disabled_reason"] == reason


def test_a_success_resets_the_clock_and_enable_delivers_new_events_again(
        db: Database, settings: Settings, receiver: Receiver, app_client: Any,
        make_token: Any) -> None:
    ep, receiver.secret = register(db, settings, receiver.url)
    clock = Clock(T0)
    deliverer = Deliverer(wh_settings(settings), db, schedule=QUICK, clock=clock)
    admin = {"Authorization": f"Bearer {make_token('admin')}"}
    try:
        receiver.behaviour = always(503)
        emit_one(db, T0, 0)
        attempt(deliverer)
        clock.move(days=4)
        receiver.behaviour = always(200)  # back after four days
        attempt(deliverer)
        h = health(db, ep)
        assert h["failing_since"] is None and h["failures_in_a_row"] == 0
        receiver.behaviour = always(503)  # failing again from day 4
        clock.move(hours=1)
        emit_one(db, clock(), 1)
        attempt(deliverer)
        restarted = clock()
        clock.move(days=4)                # day 8: failing for 4 days, not 8
        attempt(deliverer)
        h = health(db, ep)
        assert not h["disabled"] and h["failing_since"] == restarted.isoformat()
        clock.move(days=1, seconds=1)     # five days since the last success
        attempt(deliverer)
        assert health(db, ep)["disabled"]

        emit_one(db, clock(), 2, key="item:block:while-disabled")  # never sent
        clock.move(minutes=1)
        attempt(deliverer)
        receiver.behaviour = always(204)
        resp = app_client.post(f"/api/webhook-endpoints/{ep}/enable", headers=admin)
        assert resp.status_code == 200, resp.text
        h = resp.json()["health"]
        assert not h["disabled"] and h["disabled_reason"] is None
        assert h["failing_since"] is None and h["failures_in_a_row"] == 0
        again = app_client.post(f"/api/webhook-endpoints/{ep}/enable", headers=admin)
        assert again.status_code == 200 and not again.json()["health"]["disabled"]
        emit_one(db, clock(), 3, key="item:block:after")
        attempt(deliverer)
    finally:
        deliverer.close()
    delivered = [r.data["n"] for r in receiver.received if r.answered == 204]
    assert delivered == [3]  # only the event after enabling; the cancelled one stays so
    assert 2 not in [r.data["n"] for r in receiver.received]
    dispatcher = {"Authorization": f"Bearer {make_token('dispatcher')}"}
    assert app_client.post(f"/api/webhook-endpoints/{ep}/enable",
                           headers=dispatcher).status_code == 403
    assert app_client.post("/api/webhook-endpoints/ep_nope/enable",
                           headers=admin).status_code == 404


def test_410_still_disables_at_once_and_says_how_to_enable(
        db: Database, settings: Settings, receiver: Receiver) -> None:
    ep, receiver.secret = register(db, settings, receiver.url)
    receiver.behaviour = always(410)
    emit_one(db, T0, 0)
    before = disabled_count("gone")
    deliverer = Deliverer(wh_settings(settings), db, schedule=QUICK, clock=Clock(T0))
    try:
        attempt(deliverer)
    finally:
        deliverer.close()
    h = health(db, ep)
    assert h["disabled"] and "410 Gone" in h["disabled_reason"]
    assert f"calsync webhooks enable {ep}" in h["disabled_reason"]
    assert disabled_count("gone") == before + 1


def test_cli_list_shows_disabled_and_enable_turns_it_back_on(
        cli_env: Database, receiver: Receiver, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from calsync.config import load_settings

    settings = load_settings(env={"CALSYNC_SECRET_KEY": SECRET})
    ep, receiver.secret = register(cli_env, settings, receiver.url)
    receiver.behaviour = always(500)
    clock = Clock(T0)
    emit_one(cli_env, T0, 0)
    deliverer = Deliverer(wh_settings(settings, disable_after_days=1), cli_env,
                          schedule=QUICK, clock=clock)
    try:
        attempt(deliverer)
        code, out, _ = calsync(monkeypatch, capsys, "webhooks", "list")
        assert code == 0 and f"failing since {T0.isoformat()}" in out and "enabled" in out
        clock.move(days=1)
        attempt(deliverer)
    finally:
        deliverer.close()
    code, out, _ = calsync(monkeypatch, capsys, "webhooks", "list")
    assert code == 0 and "DISABLED (every attempt failed since" in out
    assert f"calsync webhooks enable {ep}" in out
    code, out, err = calsync(monkeypatch, capsys, "webhooks", "enable", ep)
    assert code == 0, err
    assert out.strip() == f"endpoint {ep} enabled: new events are delivered to it again"
    code, out, _ = calsync(monkeypatch, capsys, "webhooks", "enable", ep)
    assert code == 0 and "enabled already" in out
    code, out, _ = calsync(monkeypatch, capsys, "webhooks", "list")
    assert "DISABLED" not in out and "failing since" not in out
    with cli_env.read_session() as s:
        row = s.scalars(select(WebhookEndpoint)).one()
        assert row.disabled_at is None and row.failing_since is None
    code, out, err = calsync(monkeypatch, capsys, "webhooks", "enable", "ep_nope")
    assert code != 0 and err.startswith("calsync: ") and err.count("\n") == 1
