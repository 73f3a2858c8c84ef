"""Outbox retention (SQLite and PostgreSQL): old events whose deliveries are all settled are
deleted with their deliveries and attempts, oldest first and in batches; pending and recent
events stay, and so does the newest numbered one; the change feed answers a cursor from
before what was deleted with 410 cursor_expired and ``oldest``; ``calsync webhooks prune``
prints what it removed; the worker schedules it daily; migration 0011 on both engines."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import event, func, inspect, select, text, update

from calsync.config import Settings
from calsync.db.models import (
    OutboxEvent,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from calsync.db.session import Database, upgrade
from calsync.outbox.changes import CursorExpired, encode_cursor, read_changes
from calsync.outbox.endpoints import create_endpoint, send_test_event
from calsync.outbox.events import SCHEDULE_ITEM_CHANGED, emit, sequence
from calsync.outbox.retention import prune
from tests.conftest import SECRET, alembic_to, make_db
from tests.test_sync_cli import calsync

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
OLD = NOW - dt.timedelta(days=40)


def emit_at(db: Database, at: dt.datetime, n: int, start: int = 0, key: str = "") -> None:
    with db.session() as s:
        for i in range(start, start + n):
            emit(s, SCHEDULE_ITEM_CHANGED, {"n": i}, at, order_key=key or f"item:block:{i}")
    with db.session() as s:
        sequence(s, at)


def seqs(db: Database) -> list[int]:
    with db.read_session() as s:
        return [int(x) for x in s.scalars(select(OutboxEvent.seq).order_by(OutboxEvent.seq))]


def count(db: Database, model: Any) -> int:
    with db.read_session() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def settle(db: Database, seq: int, status: str, attempts: int = 0) -> None:
    """Give the delivery of event ``seq`` a status and ``attempts`` attempt rows."""
    with db.session() as s:
        delivery = s.scalars(select(WebhookDelivery).where(WebhookDelivery.seq == seq)).one()
        delivery.status = status
        for _ in range(attempts):
            s.add(WebhookAttempt(delivery_id=delivery.id, endpoint_id=delivery.endpoint_id,
                                 at=OLD, status_code=500, error="answered 500"))


def add_endpoint(db: Database, settings: Settings, at: dt.datetime) -> str:
    with db.session() as s:
        ep, _ = create_endpoint(s, settings, "http://127.0.0.1:9/hook", ["*"], "", at)
        return ep.public_id


def test_prune_removes_old_settled_events_and_keeps_pending_and_recent(
        db: Database, settings: Settings) -> None:
    add_endpoint(db, settings, OLD)
    emit_at(db, OLD, 6)                      # seq 1-6, 40 days old
    emit_at(db, NOW - dt.timedelta(days=2), 1, start=6)  # seq 7, recent
    settle(db, 1, "delivered", attempts=1)
    settle(db, 2, "failed", attempts=3)
    settle(db, 3, "cancelled")
    # seq 4 stays pending (a retry still due); 5 and 6 delivered; 7 recent and delivered
    for seq in (5, 6, 7):
        settle(db, seq, "delivered", attempts=1)
    attempts_before = count(db, WebhookAttempt)

    result = prune(db, 30, NOW, batch=2)
    assert (result.events, result.deliveries, result.attempts) == (3, 3, 4)
    assert result.batches == 2 and result.horizon.pruned_through == 3
    assert seqs(db) == [4, 5, 6, 7]           # the pending event stops the run
    assert count(db, WebhookDelivery) == 4
    assert count(db, WebhookAttempt) == attempts_before - 4
    with db.read_session() as s:
        assert s.scalar(select(WebhookDelivery.status).where(WebhookDelivery.seq == 4)) \
            == "pending"

    assert prune(db, 30, NOW).events == 0      # nothing more while it is pending
    settle(db, 4, "delivered")
    result = prune(db, 30, NOW)
    assert result.events == 3 and seqs(db) == [7]  # the recent one stays
    assert count(db, WebhookAttempt) == 1
    # a shorter retention takes the recent one too, but never the newest numbered event
    # (numbering goes on from it)
    emit_at(db, NOW - dt.timedelta(days=2), 2, start=10)
    with db.session() as s:
        s.execute(update(WebhookDelivery).values(status="delivered"))
    assert prune(db, 1, NOW).events == 2 and seqs(db) == [9]
    emit_at(db, NOW, 1, start=20)
    assert seqs(db) == [9, 10]


def test_unsequenced_events_and_feed_order_survive(db: Database, settings: Settings) -> None:
    emit_at(db, OLD, 3)
    with db.session() as s:  # made long ago but not numbered yet
        emit(s, SCHEDULE_ITEM_CHANGED, {"n": 99}, OLD)
    assert prune(db, 30, NOW).events == 2
    with db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(OutboxEvent)
                        .where(OutboxEvent.seq.is_(None))) == 1
    page = read_changes(db, None, 10, NOW)
    assert [c["data"]["n"] for c in page.changes] == [2, 99]


def test_prune_works_in_separate_small_transactions(db: Database, settings: Settings) -> None:
    add_endpoint(db, settings, OLD)
    emit_at(db, OLD, 10)
    emit_at(db, NOW, 1, start=10)
    with db.session() as s:
        s.execute(update(WebhookDelivery).where(WebhookDelivery.seq <= 10)
                  .values(status="delivered"))
    commits: list[int] = []
    listener = lambda _conn: commits.append(1)  # noqa: E731
    event.listen(db.engine, "commit", listener)
    try:
        result = prune(db, 30, NOW, batch=3)
    finally:
        event.remove(db.engine, "commit", listener)
    assert result.events == 10 and result.batches == 4  # 3 + 3 + 3 + 1
    assert len(commits) >= 4                             # one transaction per batch
    assert seqs(db) == [11]


def test_change_feed_cursor_from_before_the_horizon_is_expired(
        db: Database, settings: Settings, app_client: Any, make_token: Any) -> None:
    ep = add_endpoint(db, settings, OLD)
    empty = read_changes(db, None, 10, NOW).next  # a poller that started on an empty feed
    emit_at(db, OLD, 3)                            # seq 1-3
    with db.session() as s:
        send_test_event(s, ep, OLD)                # seq 4: not in the feed
    with db.session() as s:
        sequence(s, OLD)
    emit_at(db, NOW, 2, start=3)                   # seq 5-6, recent
    with db.session() as s:
        s.execute(update(WebhookDelivery).values(status="delivered"))
    early = read_changes(db, None, 2, NOW).next    # read 0 and 1
    caught_up = read_changes(db, early, 1, NOW).next  # read 2: the last one to go
    assert prune(db, 30, NOW).horizon.pruned_through == 4

    for stale in (early, empty):
        with pytest.raises(CursorExpired) as info:
            read_changes(db, stale, 10, NOW)
        oldest = info.value.oldest
        assert oldest == encode_cursor(3)
    # at the horizon (the test event after it was never in the feed): reads as before
    assert [c["data"]["n"] for c in read_changes(db, caught_up, 10, NOW).changes] == [3, 4]
    assert [c["data"]["n"] for c in read_changes(db, oldest, 10, NOW).changes] == [3, 4]
    assert [c["data"]["n"] for c in read_changes(db, None, 10, NOW).changes] == [3, 4]
    last = read_changes(db, oldest, 10, NOW).next
    assert read_changes(db, last, 10, NOW).changes == []

    admin = {"Authorization": f"Bearer {make_token('admin')}"}
    resp = app_client.get(f"/api/changes?after={early}", headers=admin)
    assert resp.status_code == 410
    body = resp.json()
    assert body["error"] == "cursor_expired" and body["oldest"] == oldest
    assert "retention" in body["detail"]
    again = app_client.get(f"/api/changes?after={body['oldest']}", headers=admin).json()
    assert [c["data"]["n"] for c in again["changes"]] == [3, 4]
    ok = app_client.get(f"/api/changes?after={caught_up}", headers=admin)
    assert ok.status_code == 200 and len(ok.json()["changes"]) == 2
    schema = app_client.get("/openapi.json").json()
    expired = schema["paths"]["/api/changes"]["get"]["responses"]["410"]
    assert "oldest" in expired["content"]["application/json"]["schema"]["properties"]


def test_worker_schedules_the_prune_daily(db: Database, settings: Settings) -> None:
    from calsync.worker import build_scheduler, prune_outbox_job

    scheduler = build_scheduler(settings, db, blocking=False)
    job = scheduler.get_job("webhooks.prune")
    assert job is not None and isinstance(job.trigger, CronTrigger)
    assert str(job.trigger.fields[5]) == "3" and str(job.trigger.fields[6]) == "30"  # 03:30
    emit_at(db, OLD, 2)
    emit_at(db, NOW, 1, start=2)
    result = prune_outbox_job(settings, db, clock=lambda: NOW)
    assert result.events == 2 and seqs(db) == [3]


def test_cli_prune_prints_what_it_removed(cli_env: Database, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from calsync.config import load_settings

    settings = load_settings(env={"CALSYNC_SECRET_KEY": SECRET})
    now = dt.datetime.now(UTC)
    add_endpoint(cli_env, settings, now - dt.timedelta(days=50))
    emit_at(cli_env, now - dt.timedelta(days=45), 3)
    emit_at(cli_env, now - dt.timedelta(days=10), 1, start=3)
    for seq in (1, 2, 3, 4):
        settle(cli_env, seq, "delivered", attempts=1 if seq < 3 else 0)
    code, out, err = calsync(monkeypatch, capsys, "webhooks", "prune")
    assert code == 0, err
    assert out.strip() == ("removed 3 events, 3 deliveries and 2 attempts older than 30 "
                           "days (events up to number 3 are gone)")
    (tmp_path / "calsync.toml").write_text("[webhooks]\nretention_days = 7\n")
    emit_at(cli_env, now, 1, start=4)
    code, out, err = calsync(monkeypatch, capsys, "webhooks", "prune", "--json")
    assert code == 0, err
    assert json.loads(out) == {"events": 1, "deliveries": 1, "attempts": 0, "batches": 1,
                               "pruned_through_seq": 4, "retention_days": 7}
    (tmp_path / "calsync.toml").write_text("[webhooks]\nretention_days = 0\n")
    code, out, err = calsync(monkeypatch, capsys, "webhooks", "prune")
    assert code != 0 and "webhooks.retention_days" in err and "Traceback" not in err


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migration_0011_adds_and_drops_the_horizon_and_failing_since(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    db = make_db(kind, tmp_path, request)
    try:
        alembic_to(db, "downgrade", "0010")
        insp = inspect(db.engine)
        assert not insp.has_table("outbox_horizon")
        assert "failing_since" not in {c["name"] for c in insp.get_columns("webhook_endpoints")}
        with db.engine.begin() as conn:
            for n, failures in (("a", 3), ("b", 0)):
                conn.execute(text(
                    "INSERT INTO webhook_endpoints (public_id, url, description, events, "
                    "secret, created_at, last_failure_at, failures_in_a_row, start_seq) "
                    "VALUES (:p, 'http://x/h', '', '[]', :s, :t, :t, :f, 0)"),
                    {"p": f"ep_{n}", "s": b"x", "t": OLD, "f": failures})
        upgrade(db.engine)
        insp = inspect(db.engine)
        assert insp.has_table("outbox_horizon")
        assert "ix_webhook_attempts_delivery" in {
            i["name"] for i in insp.get_indexes("webhook_attempts")}
        with db.read_session() as s:
            rows = dict(s.execute(select(WebhookEndpoint.public_id,
                                         WebhookEndpoint.failing_since)).all())
        assert rows == {"ep_a": OLD, "ep_b": None}
    finally:
        upgrade(db.engine)  # the PostgreSQL test database is shared: leave it at head
        db.dispose()
