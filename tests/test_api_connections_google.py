"""Disconnecting a Google connection through the self-service API, on SQLite and
PostgreSQL, against the Google emulator driven by google-api-python-client: the stored
sign-in is revoked at Google (its refresh token stops working), and with
``remove_copies=true`` calsync's copies are deleted from the primary calendar while the
user's own events stay."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from calsync.api.app import create_app
from calsync.config import Settings
from calsync.db.models import Connection, ExternalBusy, User
from calsync.db.session import Database
from calsync.sync.connections import save_connection
from calsync.sync.connector import load_connector_factory
from calsync.sync.runner import run_due_syncs
from tests.emulators.google import (
    GoogleEmulator,
    google_emulator_fixture,
    google_settings,
    signed_in_context,
)

CAL = "tech@example.com"
UTC = dt.timezone.utc
google_emulator = google_emulator_fixture()


@pytest.fixture
def gsettings(settings: Settings, google_emulator: GoogleEmulator) -> Settings:
    return google_settings(google_emulator, settings)


@pytest.fixture
def client(gsettings: Settings, db: Database) -> Iterator[TestClient]:
    with db.session() as s:
        s.add(User(id="u1", name="Jane", email=CAL, timezone="UTC", working_hours={}))
    with TestClient(create_app(gsettings, db)) as c:
        yield c


def _connected(em: GoogleEmulator, settings: Settings, db: Database) -> str:
    ctx, calendars = load_connector_factory("google").verify(
        signed_in_context(em, CAL, settings))
    conn_id, _ = save_connection(settings, db, "u1", ctx, calendars, dt.datetime.now(UTC))
    with db.read_session() as s:
        conn = s.get(Connection, conn_id)
        assert conn is not None
        return conn.public_id


def test_disconnect_revokes_and_removes_copies(client: TestClient, db: Database,
                                              gsettings: Settings,
                                              google_emulator: GoogleEmulator,
                                              make_token: Any) -> None:
    em = google_emulator
    public_id = _connected(em, gsettings, db)
    token = {"Authorization": f"Bearer {make_token('user', 'u1')}"}
    [cal] = client.get("/api/users/u1/connections", headers=token).json()[
        "connections"][0]["calendars"]
    assert client.put("/api/users/u1/calendars", headers=token,
                      json={"primary": cal["id"], "conflict": []}).status_code == 200
    start = dt.datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + \
        dt.timedelta(days=2)
    job = {"title": "Install", "job_type": "Install", "account": "Acme",
           "start": start.isoformat(), "end": (start + dt.timedelta(hours=1)).isoformat(),
           "assignees": ["u1"]}
    admin = {"Authorization": f"Bearer {make_token('admin')}"}
    assert client.put("/api/jobs/j1", json=job, headers=admin).status_code == 201
    own = em.put_busy(CAL, start + dt.timedelta(hours=3), start + dt.timedelta(hours=4),
                      "Lunch with Sam")
    assert [r.status for r in run_due_syncs(gsettings, db, dt.datetime.now(UTC))] == ["ok"]
    live = {k for k, ev in em.calendars[CAL].events.items() if ev.get("status") != "cancelled"}
    assert len(live) == 2 and own["id"] in live
    with db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(ExternalBusy)) == 1
    refresh_token = next(iter(em.refresh_tokens))

    resp = client.delete(f"/api/connections/{public_id}", headers=token,
                         params={"remove_copies": "true"})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"id": public_id, "removed": True, "copies_removed": 1,
                           "revoked": True}
    live = {k for k, ev in em.calendars[CAL].events.items() if ev.get("status") != "cancelled"}
    assert live == {own["id"]}
    assert refresh_token not in em.refresh_tokens
    with db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Connection)) == 0
        assert s.scalar(select(func.count()).select_from(ExternalBusy)) == 0


def test_disconnect_of_an_already_revoked_sign_in_still_disconnects(
        client: TestClient, db: Database, gsettings: Settings,
        google_emulator: GoogleEmulator, make_token: Any) -> None:
    public_id = _connected(google_emulator, gsettings, db)
    for rt in list(google_emulator.refresh_tokens):
        google_emulator.revoke(rt)
    resp = client.delete(f"/api/connections/{public_id}",
                         headers={"Authorization": f"Bearer {make_token('admin')}"})
    assert resp.status_code == 200 and resp.json()["revoked"] is False
    with db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Connection)) == 0
