"""The webhook endpoint API and CLI: register (secret once), list with health, one,
remove, test event, recent deliveries with status codes, roles, bad input as one clear
error; metrics of deliveries by outcome and the oldest undelivered event's age."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from calsync.db.session import Database
from calsync.outbox.delivery import Deliverer, RetrySchedule
from calsync.outbox.events import SCHEDULE_ITEM_CHANGED, emit
from tests.conftest import SECRET
from tests.test_sync_cli import calsync
from tests.webhook_receiver import Receiver, always


@pytest.fixture
def receiver() -> Any:
    r = Receiver().start()
    yield r
    r.stop()


def _admin(make_token: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token('admin')}"}


def test_register_list_test_deliveries_and_remove(app_client: Any, make_token: Any,
                                                  db: Database, settings: Any,
                                                  receiver: Receiver) -> None:
    admin = _admin(make_token)
    resp = app_client.post("/api/webhook-endpoints", headers=admin, json={
        "url": receiver.url, "events": ["schedule_item.deleted", "job.reverted"],
        "description": "dispatch"})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    ep, secret = body["id"], body["secret"]
    assert ep.startswith("ep_") and secret.startswith("whsec_")
    receiver.secret = secret
    listed = app_client.get("/api/webhook-endpoints", headers=admin).json()["endpoints"]
    assert [e["id"] for e in listed] == [ep]
    assert secret not in json.dumps(listed) and "secret" not in listed[0]
    assert listed[0]["events"] == ["job.reverted", "schedule_item.deleted"]
    assert listed[0]["health"] == {"last_success_at": None, "last_failure_at": None,
                                   "failures_in_a_row": 0, "failing_since": None,
                                   "disabled": False, "disabled_at": None, "disabled_reason": None,
                                   "pending": 0}
    one = app_client.get(f"/api/webhook-endpoints/{ep}", headers=admin).json()
    assert one["description"] == "dispatch" and secret not in json.dumps(one)

    answers = iter([500])
    receiver.behaviour = lambda _r, _q: (next(answers, 200), 0.0)
    queued = app_client.post(f"/api/webhook-endpoints/{ep}/test", headers=admin)
    assert queued.status_code == 202 and queued.json()["event_id"].startswith("msg_")
    with db.session() as s:  # a type this endpoint does not want: not sent to it
        emit(s, SCHEDULE_ITEM_CHANGED, {"id": "b1"}, dt.datetime.now(dt.timezone.utc))
    deliverer = Deliverer(settings, db, schedule=RetrySchedule(delays=(0.05,), jitter=0))
    try:
        deliverer.run_until_idle(timeout=20, wait_retries=True)
    finally:
        deliverer.close()
    assert [r.type for r in receiver.received] == ["webhook.test", "webhook.test"]
    assert all(r.verified for r in receiver.received)
    (delivery,) = app_client.get(f"/api/webhook-endpoints/{ep}/deliveries",
                                 headers=admin).json()["deliveries"]
    assert delivery["type"] == "webhook.test" and delivery["status"] == "delivered"
    assert delivery["status_code"] == 200 and delivery["attempts"] == 2
    assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 200]
    health = app_client.get(f"/api/webhook-endpoints/{ep}", headers=admin).json()["health"]
    assert health["last_success_at"] and health["last_failure_at"]
    assert health["failures_in_a_row"] == 0

    metrics = app_client.get("/metrics").text
    assert 'calsync_webhook_deliveries{status="delivered"} 1.0' in metrics
    assert "calsync_outbox_oldest_undelivered_seconds 0.0" in metrics
    assert 'calsync_webhook_attempts_total{outcome="delivered"}' in metrics
    assert 'calsync_webhook_attempts_total{outcome="retry"}' in metrics

    assert app_client.delete(f"/api/webhook-endpoints/{ep}", headers=admin).status_code == 204
    assert app_client.get(f"/api/webhook-endpoints/{ep}", headers=admin).status_code == 404
    assert app_client.delete(f"/api/webhook-endpoints/{ep}", headers=admin).status_code == 404
    assert app_client.get("/api/webhook-endpoints", headers=admin).json()["endpoints"] == []


def test_oldest_undelivered_age_is_reported(app_client: Any, make_token: Any,
                                            db: Database) -> None:
    admin = _admin(make_token)
    assert app_client.post("/api/webhook-endpoints", headers=admin,
                           json={"url": "http://127.0.0.1:9/x"}).status_code == 201
    with db.session() as s:
        emit(s, SCHEDULE_ITEM_CHANGED, {"id": "b1"},
             dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=10))
    metrics = app_client.get("/metrics").text
    line = next(ln for ln in metrics.splitlines()
                if ln.startswith("calsync_outbox_oldest_undelivered_seconds "))
    assert 590 < float(line.split()[1]) < 900


@pytest.mark.parametrize("body, field", [
    ({"url": "ftp://example.com/x"}, "url"),
    ({"url": "http://"}, "url"),
    ({}, "url"),
    ({"url": "https://example.com/x", "events": ["booking.nope"]}, "events"),
    ({"url": "https://example.com/x", "events": []}, "events"),
    ({"url": "https://example.com/x", "events": "*"}, "events"),
    ({"url": "https://example.com/x", "description": 5}, "description"),
    ({"url": "https://example.com/x", "secret": "whsec_mine"}, "secret"),
    (["https://example.com/x"], "*"),
])
def test_bad_endpoint_bodies_are_one_clear_error(app_client: Any, make_token: Any,
                                                  body: Any, field: str) -> None:
    resp = app_client.post("/api/webhook-endpoints", headers=_admin(make_token), json=body)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"] == "invalid" and resp.json()["detail"]["field"] == field


def test_only_admins_manage_endpoints(app_client: Any, make_token: Any) -> None:
    dispatcher = {"Authorization": f"Bearer {make_token('dispatcher')}"}
    for method, path in (("post", "/api/webhook-endpoints"), ("get", "/api/webhook-endpoints"),
                         ("delete", "/api/webhook-endpoints/ep_x"),
                         ("post", "/api/webhook-endpoints/ep_x/test"),
                         ("post", "/api/webhook-endpoints/ep_x/enable"),
                         ("get", "/api/webhook-endpoints/ep_x/deliveries")):
        kwargs: dict[str, Any] = {"json": {"url": "https://example.com/"}} \
            if method == "post" else {}
        assert getattr(app_client, method)(path, headers=dispatcher, **kwargs).status_code \
            == 403, path
        assert getattr(app_client, method)(path, **kwargs).status_code == 401, path
    paths = app_client.get("/openapi.json").json()["paths"]
    assert {"/api/webhook-endpoints", "/api/webhook-endpoints/{endpoint_id}",
            "/api/webhook-endpoints/{endpoint_id}/test",
            "/api/webhook-endpoints/{endpoint_id}/enable",
            "/api/webhook-endpoints/{endpoint_id}/deliveries", "/api/changes"} <= set(paths)


def test_cli_add_list_test_deliveries_remove(cli_env: Database, receiver: Receiver,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = calsync(monkeypatch, capsys, "webhooks", "add", receiver.url,
                             "--events", "booking.created,job.reverted", "--json")
    assert code == 0, err
    added = json.loads(out)
    ep, receiver.secret = added["id"], added["secret"]
    code, out, err = calsync(monkeypatch, capsys, "webhooks", "list")
    assert code == 0 and ep in out and "enabled" in out and receiver.secret not in out
    code, out, err = calsync(monkeypatch, capsys, "webhooks", "test", ep)
    assert code == 0, err
    assert "delivered (HTTP 200)" in out
    assert receiver.received and receiver.received[0].verified
    code, out, _ = calsync(monkeypatch, capsys, "webhooks", "deliveries", ep)
    assert code == 0 and "webhook.test  delivered  attempts 1  codes 200" in out
    receiver.behaviour = always(503)
    code, out, err = calsync(monkeypatch, capsys, "webhooks", "test", ep)
    assert code == 1 and err.count("\n") == 1 and "HTTP 503" in err and "Traceback" not in err
    code, out, err = calsync(monkeypatch, capsys, "webhooks", "list", "--json")
    assert json.loads(out)[0]["health"]["failures_in_a_row"] == 1
    code, out, err = calsync(monkeypatch, capsys, "webhooks", "remove", ep)
    assert code == 0 and "removed" in out
    code, out, err = calsync(monkeypatch, capsys, "webhooks", "remove", ep)
    assert code != 0 and err.startswith("calsync: ") and err.count("\n") == 1
    code, out, err = calsync(monkeypatch, capsys, "webhooks", "add", "not-a-url")
    assert code != 0 and "url" in err and err.count("\n") == 1
    code, out, err = calsync(monkeypatch, capsys, "webhooks", "add", receiver.url,
                             "--events", "nope")
    assert code != 0 and "unknown event type 'nope'" in err


def test_secrets_rotate_reseals_endpoint_secrets(cli_env: Database, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from dataclasses import replace

    from calsync.config import load_settings
    from calsync.db.models import WebhookEndpoint
    from calsync.outbox.endpoints import endpoint_secret

    code, out, err = calsync(monkeypatch, capsys, "webhooks", "add",
                             "https://example.com/hook", "--json")
    assert code == 0, err
    secret = json.loads(out)["secret"]
    new_key = "a-brand-new-secret-key-0123456789"
    monkeypatch.setenv("CALSYNC_SECRET_KEY", new_key)
    (tmp_path / "calsync.toml").write_text(
        f'[security]\nprevious_secret_keys = ["{SECRET}"]\n')
    code, out, err = calsync(monkeypatch, capsys, "secrets", "rotate")
    assert code == 0, err
    only_new = replace(load_settings(env={"CALSYNC_SECRET_KEY": new_key}))
    with cli_env.read_session() as s:
        endpoint = s.scalars(select(WebhookEndpoint)).one()
        assert endpoint_secret(only_new, endpoint) == secret  # opens without the old key
