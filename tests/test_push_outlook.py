"""Push with Graph change notifications: subscription with the validation handshake through
the real webhook endpoint, the stored secret hash, renewal before expiry, removal when a
calendar is no longer synced, a forged clientState rejected with nothing synced, and a
genuine notification making the connection due and waking the worker (the API process
syncs nothing itself). Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from calsync.api.app import create_app
from calsync.config import Settings
from calsync.db.models import Calendar, Connection, ExternalEvent, PushSubscription, User
from calsync.db.session import Database
from calsync.oauth_commands import connect_oauth
from calsync.push import renew_push_subscriptions
from calsync.sync.runner import run_due_syncs
from calsync.wakeups import LOCAL
from tests.emulators.graph import GraphEmulator, registered_outlook

UTC = dt.timezone.utc
EMAIL = "jane@contoso.com"


@pytest.fixture
def em() -> Iterator[GraphEmulator]:
    with GraphEmulator() as emulator:
        emulator.add_mailbox(EMAIL, (("Calendar", True), ("Holidays", False)))
        with registered_outlook(emulator):
            yield emulator


@pytest.fixture
def osettings(settings: Settings, em: GraphEmulator) -> Settings:
    return em.configure(settings)


@pytest.fixture
def client(osettings: Settings, db: Database, em: GraphEmulator) -> Iterator[TestClient]:
    with db.session() as s:
        s.add(User(id="u1", name="Jane", email=EMAIL, timezone="America/Chicago",
                   working_hours={}))
    with TestClient(create_app(osettings, db)) as c:
        def deliver(url: str, params: dict[str, str], body: bytes,
                    headers: dict[str, str]) -> tuple[int, str]:
            assert url == f"{osettings.server.base_url}/webhooks/outlook"
            resp = c.post(urlsplit(url).path, params=params, content=body, headers=headers)
            return resp.status_code, resp.text

        em.deliver = deliver
        yield c


@pytest.fixture
def connected(client: TestClient, osettings: Settings, db: Database) -> dict[str, int]:
    now = dt.datetime.now(UTC)
    summary = connect_oauth(osettings, db, "outlook", "u1", lambda _m: None, now)
    with db.session() as s:
        s.execute(update(Calendar).where(Calendar.name == "Calendar").values(role="primary"))
        cal = s.scalar(select(Calendar).where(Calendar.name == "Calendar"))
        assert cal is not None
        return {"connection": summary["connection_id"], "calendar": cal.id}


def test_validation_handshake_echoes_the_token_as_text(client: TestClient) -> None:
    resp = client.post("/webhooks/outlook", params={"validationToken": "Validation: abc 123"})
    assert resp.status_code == 200
    assert resp.text == "Validation: abc 123"
    assert resp.headers["content-type"].startswith("text/plain")


def test_subscribe_stores_only_a_hash_of_the_client_state(
        em: GraphEmulator, osettings: Settings, db: Database,
        connected: dict[str, int]) -> None:
    now = dt.datetime.now(UTC)
    counts = renew_push_subscriptions(osettings, db, now)
    assert counts["created"] == 1 and counts["failed"] == 0
    (sub,) = em.subscriptions.values()
    assert sub["changeType"] == "created,updated,deleted"
    assert sub["notificationUrl"] == f"{osettings.server.base_url}/webhooks/outlook"
    cal_remote = em.calendar_id(EMAIL)
    assert sub["resource"] == f"/me/calendars/{cal_remote}/events"
    with db.session() as s:
        row = s.scalar(select(PushSubscription))
        assert row is not None and row.calendar_id == connected["calendar"]
        assert row.remote_id == sub["id"] and row.provider == "outlook"
        assert row.secret_hash == hashlib.sha256(sub["clientState"].encode()).hexdigest()
        assert sub["clientState"] not in row.secret_hash
        assert now + dt.timedelta(days=2) < row.expires_at <= now + dt.timedelta(days=3)
    # nothing to do while the subscription is fresh
    assert renew_push_subscriptions(osettings, db, now) == {
        "created": 0, "renewed": 0, "removed": 0, "failed": 0}


def test_renewal_before_expiry_and_removal_when_not_synced(
        em: GraphEmulator, osettings: Settings, db: Database,
        connected: dict[str, int]) -> None:
    now = dt.datetime.now(UTC)
    renew_push_subscriptions(osettings, db, now)
    with db.session() as s:
        s.execute(update(PushSubscription).values(expires_at=now + dt.timedelta(hours=2)))
    assert renew_push_subscriptions(osettings, db, now)["renewed"] == 1
    assert ("PATCH", f"/subscriptions/{next(iter(em.subscriptions))}") in em.requests
    with db.session() as s:
        row = s.scalar(select(PushSubscription))
        assert row is not None and row.expires_at > now + dt.timedelta(days=2)
    with db.session() as s:
        s.execute(update(Calendar).values(role="ignored"))
    assert renew_push_subscriptions(osettings, db, now)["removed"] == 1
    assert em.subscriptions == {}
    with db.session() as s:
        assert s.scalar(select(PushSubscription)) is None


def test_failed_handshake_stores_no_subscription(
        em: GraphEmulator, osettings: Settings, db: Database,
        connected: dict[str, int]) -> None:
    em.deliver = lambda *_a: (404, "not here")
    counts = renew_push_subscriptions(osettings, db, dt.datetime.now(UTC))
    assert counts["failed"] == 1 and counts["created"] == 0
    with db.session() as s:
        assert s.scalar(select(PushSubscription)) is None


def test_bad_client_state_is_rejected_and_nothing_syncs(
        client: TestClient, em: GraphEmulator, osettings: Settings, db: Database,
        connected: dict[str, int]) -> None:
    renew_push_subscriptions(osettings, db, dt.datetime.now(UTC))
    (sub,) = em.subscriptions.values()
    forged = {"value": [{"subscriptionId": sub["id"], "clientState": "guess",
                         "changeType": "created", "resource": "Users/x/Events/y"}]}
    resp = client.post("/webhooks/outlook", content=json.dumps(forged),
                       headers={"Content-Type": "application/json"})
    assert resp.status_code == 403
    unknown = {"value": [{"subscriptionId": "nope", "clientState": sub["clientState"],
                          "changeType": "created"}]}
    resp = client.post("/webhooks/outlook", content=json.dumps(unknown),
                       headers={"Content-Type": "application/json"})
    assert resp.status_code == 403
    assert client.post("/webhooks/outlook", content=b"not json").status_code == 400
    assert not any(p.endswith("/calendarView/delta") for _m, p in em.requests)
    with db.session() as s:
        cal = s.get(Calendar, connected["calendar"])
        assert cal is not None and cal.last_sync_at is None


def test_notification_marks_the_connection_due_and_a_worker_syncs_it(
        client: TestClient, em: GraphEmulator, osettings: Settings, db: Database,
        connected: dict[str, int]) -> None:
    renew_push_subscriptions(osettings, db, dt.datetime.now(UTC))
    with db.session() as s:  # synced a moment ago: not due for a while
        s.execute(update(Connection).values(next_sync_at=dt.datetime.now(UTC)
                                            + dt.timedelta(minutes=5)))
    start = dt.datetime.now(UTC).replace(microsecond=0) + dt.timedelta(days=2)
    em.put_event(EMAIL, em.calendar_id(EMAIL), {
        "subject": "Dentist",
        "start": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
        "end": {"dateTime": (start + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S"),
                "timeZone": "UTC"}})
    LOCAL.clear()
    assert em.send_notifications() == [202]
    # the API process synced nothing: it marked the connection due and woke the worker
    assert LOCAL.is_set()
    assert not any(p.endswith("/calendarView/delta") for _m, p in em.requests)
    with db.session() as s:
        conn = s.get(Connection, connected["connection"])
        assert conn is not None and conn.next_sync_at is not None
        assert conn.next_sync_at <= dt.datetime.now(UTC)
        assert s.scalar(select(ExternalEvent)) is None
    [result] = run_due_syncs(osettings, db, dt.datetime.now(UTC), sleep=lambda _s: None)
    assert result.connection_id == connected["connection"] and result.status == "ok"
    with db.session() as s:
        events = list(s.scalars(select(ExternalEvent)))
        assert [e.summary for e in events] == ["Dentist"]
        assert events[0].calendar_id == connected["calendar"]
        cal = s.get(Calendar, connected["calendar"])
        assert cal is not None and cal.last_sync_at is not None


def test_subscription_dropped_by_graph_is_made_again(
        em: GraphEmulator, osettings: Settings, db: Database,
        connected: dict[str, int]) -> None:
    now = dt.datetime.now(UTC)
    renew_push_subscriptions(osettings, db, now)
    old_id = next(iter(em.subscriptions))
    em.subscriptions.clear()  # expired or removed on Microsoft's side
    with db.session() as s:
        s.execute(update(PushSubscription).values(expires_at=now + dt.timedelta(hours=1)))
    counts = renew_push_subscriptions(osettings, db, now)
    assert counts["renewed"] == 1 and counts["failed"] == 0
    (new_id,) = em.subscriptions
    with db.session() as s:
        rows = list(s.scalars(select(PushSubscription)))
        assert [r.remote_id for r in rows] == [new_id] and new_id != old_id
