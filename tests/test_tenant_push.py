"""Push for a Microsoft 365 tenant connection: the Graph subscription is made app-only on
``/users/{email}/calendars/{id}/events`` (validation handshake through the real webhook
endpoint), and a change notification makes that user's connection due; the worker then
pulls the change through ``/users/{email}/…`` delta. SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from calsync.api.app import create_app
from calsync.config import Settings
from calsync.db.models import Connection, ExternalEvent, User
from calsync.db.session import Database
from calsync.push import renew_push_subscriptions
from calsync.sync.connect_commands import discover_through
from calsync.sync.runner import run_due_syncs
from calsync.sync.tenants import onboard, save_tenant
from calsync_outlook.app_only import forget_tenant_tokens
from tests.emulators.graph import GraphEmulator, registered_outlook

UTC = dt.timezone.utc
EMAIL = "jane@contoso.com"


@pytest.fixture
def em() -> Iterator[GraphEmulator]:
    with GraphEmulator() as emulator:
        emulator.add_mailbox(EMAIL)
        emulator.enable_app_only(secret="push-app-secret")
        with registered_outlook(emulator):
            yield emulator
    forget_tenant_tokens()


def test_tenant_connection_is_subscribed_app_only_and_a_notification_syncs_it(
        em: GraphEmulator, settings: Settings, db: Database) -> None:
    osettings = em.configure(settings)
    now = dt.datetime.now(UTC)
    with db.session() as s:
        s.add(User(id="u1", name="Jane", email=EMAIL, timezone="UTC", working_hours={}))
    tid, _ = save_tenant(osettings, db, "outlook", em.tenant, {
        "mode": "app_only", "tenant": em.tenant, "client_id": em.client_id,
        "client_secret": "push-app-secret"}, ["contoso.com"], now)
    report = onboard(osettings, db, tid, now, discover_through(osettings))
    assert report.connected == ["u1"]
    with TestClient(create_app(osettings, db)) as client:
        def deliver(url: str, params: dict[str, str], body: bytes,
                    headers: dict[str, str]) -> tuple[int, str]:
            resp = client.post(urlsplit(url).path, params=params, content=body,
                               headers=headers)
            return resp.status_code, resp.text

        em.deliver = deliver
        counts = renew_push_subscriptions(osettings, db, now)
        assert counts["created"] == 1 and counts["failed"] == 0
        (sub,) = em.subscriptions.values()
        assert sub["resource"] == f"/users/{EMAIL}/calendars/{em.calendar_id(EMAIL)}/events"
        assert run_due_syncs(osettings, db, now, sleep=lambda _s: None)[0].status == "ok"
        with db.session() as s:
            s.execute(update(Connection).values(next_sync_at=now + dt.timedelta(minutes=5)))
        start = now.replace(microsecond=0) + dt.timedelta(days=2)
        em.put_event(EMAIL, em.calendar_id(EMAIL), {
            "subject": "Dentist",
            "start": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
            "end": {"dateTime": (start + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S"),
                    "timeZone": "UTC"}})
        assert em.send_notifications() == [202]
    [result] = run_due_syncs(osettings, db, dt.datetime.now(UTC), sleep=lambda _s: None)
    assert result.status == "ok", result.error
    with db.read_session() as s:
        assert [e.summary for e in s.scalars(select(ExternalEvent))] == ["Dentist"]
    assert any(p.startswith(f"/users/{EMAIL}/") or p.startswith("/me/")
               for _m, p in em.requests)
    assert em.token_requests["client_credentials"] == 1
