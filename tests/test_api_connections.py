"""Self-service API (DESIGN 4.5) on SQLite and PostgreSQL, against a real Radicale that
checks passwords (and an iCloud front door in front of it): connect with verification and
discovery, the 422 codes, listing with health, choosing calendars and the sync it queues,
refresh, sync now, disconnect with and without removing copies (checked on the server)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from calsync.api.app import create_app
from calsync.config import Settings
from calsync.db.models import Calendar, Connection, ExternalBusy, Link, User
from calsync.db.session import Database
from calsync.sync.runner import run_due_syncs
from calsync.wakeups import LOCAL
from tests.api_connections_support import (
    CaldavAccount,
    FakeIcloudRoot,
    PasswordRadicale,
)
from tests.caldav_servers import free_port

UTC = dt.timezone.utc



@pytest.fixture
def isettings(settings: Settings, icloud_root: FakeIcloudRoot) -> Settings:
    return replace(settings, icloud=replace(settings.icloud, url=icloud_root.url))


@pytest.fixture
def client(isettings: Settings, db: Database) -> Iterator[TestClient]:
    with db.session() as s:
        for uid, name in (("u1", "Anna"), ("u2", "Ben")):
            s.add(User(id=uid, name=name, email=f"{uid}@example.com", timezone="UTC",
                       working_hours={}))
    with TestClient(create_app(isettings, db)) as c:
        yield c


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def connect_caldav(client: TestClient, token: str, acct: CaldavAccount, user: str = "u1",
                   **over: Any) -> Any:
    body = {"provider": "caldav", "url": acct.server.base_url, "username": acct.username,
            "password": acct.password, **over}
    return client.post(f"/api/users/{user}/connections", json=body, headers=auth(token))


def cal_ids(conn: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["id"] for c in conn["calendars"]}


def test_connect_caldav_verifies_discovers_and_never_echoes_the_password(
        client: TestClient, db: Database, isettings: Settings, radicale: PasswordRadicale,
        make_token: Any) -> None:
    acct = radicale.account("Work", "Family")
    token = make_token("user", "u1")
    resp = connect_caldav(client, token, acct)
    assert resp.status_code == 201, resp.text
    assert acct.password not in resp.text
    conn = resp.json()
    assert conn["id"].startswith("con_") and conn["provider"] == "caldav"
    assert conn["account"] == acct.username and conn["status"] == "ok" and conn["created"]
    assert sorted(cal_ids(conn)) == ["Family", "Work"]
    assert all(c["id"].startswith("cal_") and c["role"] == "ignored" and not c["read_only"]
               for c in conn["calendars"])

    listed = client.get("/api/users/u1/connections", headers=auth(token))
    assert listed.status_code == 200
    assert acct.password not in listed.text
    [row] = listed.json()["connections"]
    assert row["id"] == conn["id"] and sorted(cal_ids(row)) == ["Family", "Work"]
    assert {"status", "last_synced_at", "read_only", "role"} <= set(row["calendars"][0])
    with db.read_session() as s:
        stored = s.scalars(select(Connection)).one()
        assert stored.credentials is not None
        assert acct.password.encode() not in stored.credentials  # sealed at rest

    again = connect_caldav(client, token, acct)  # reconnect: same connection, 200
    assert again.status_code == 200 and again.json()["id"] == conn["id"]
    assert not again.json()["created"]


def test_wrong_password_is_auth_failed_and_stores_nothing(
        client: TestClient, db: Database, radicale: PasswordRadicale, make_token: Any) -> None:
    acct = radicale.account("Work")
    resp = connect_caldav(client, make_token("admin"), acct, password="not-the-password")
    assert resp.status_code == 422
    body = resp.json()
    assert body["error"] == "auth_failed"
    assert "username and password" in body["detail"] and "not-the-password" not in resp.text
    with db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Connection)) == 0


def test_a_url_that_is_not_caldav_and_an_unreachable_server(
        client: TestClient, radicale: PasswordRadicale, not_caldav_url: str,
        make_token: Any) -> None:
    acct = radicale.account("Work")
    token = make_token("user", "u1")
    resp = connect_caldav(client, token, acct, url=not_caldav_url)
    assert resp.status_code == 422 and resp.json()["error"] == "not_caldav"
    assert "Check the server URL" in resp.json()["detail"]
    dead = f"http://127.0.0.1:{free_port()}/dav/"
    resp = connect_caldav(client, token, acct, url=dead)
    assert resp.status_code == 422 and resp.json()["error"] == "unreachable"
    assert "could not be reached" in resp.json()["detail"]
    assert acct.password not in resp.text


def test_bad_bodies_name_the_field(client: TestClient, radicale: PasswordRadicale,
                                   make_token: Any) -> None:
    acct = radicale.account()
    token = make_token("user", "u1")
    missing = client.post("/api/users/u1/connections", headers=auth(token),
                          json={"provider": "caldav", "url": acct.server.base_url,
                                "username": acct.username})
    assert missing.status_code == 422 and "password" in missing.text
    unknown = connect_caldav(client, token, acct, pasword="x")
    assert unknown.status_code == 422 and "pasword" in unknown.text
    assert acct.password not in unknown.text
    with_creds = connect_caldav(client, token, acct,
                                url=f"http://{acct.username}:pw@127.0.0.1:1/")
    assert with_creds.status_code == 422
    assert with_creds.json()["detail"]["field"] == "url"
    provider = client.post("/api/users/u1/connections", headers=auth(token),
                           json={"provider": "exchange"})
    assert provider.status_code == 422 and "provider" in provider.text
    nobody = connect_caldav(client, make_token("admin"), acct, user="nobody")
    assert nobody.status_code == 404


def test_icloud_connect_through_the_front_door(
        client: TestClient, radicale: PasswordRadicale, icloud_root: FakeIcloudRoot,
        make_token: Any) -> None:
    acct = radicale.account("Home", "Work", username=f"jane{free_port()}@icloud.example")
    icloud_root.register(acct)
    token = make_token("user", "u1")
    wrong = client.post("/api/users/u1/connections", headers=auth(token),
                        json={"provider": "icloud", "apple_id": acct.username,
                              "app_password": "wrong-wrong-wrong-wrong"})
    assert wrong.status_code == 422 and wrong.json()["error"] == "auth_failed"
    assert "app-specific password" in wrong.json()["detail"]
    assert "wrong-wrong" not in wrong.text
    resp = client.post("/api/users/u1/connections", headers=auth(token),
                       json={"provider": "icloud", "apple_id": acct.username,
                             "app_password": acct.password})
    assert resp.status_code == 201, resp.text
    conn = resp.json()
    assert conn["provider"] == "icloud" and conn["account"] == acct.username
    assert sorted(cal_ids(conn)) == ["Home", "Work"]
    assert acct.password not in resp.text


def _job(client: TestClient, admin: str, start: dt.datetime) -> None:
    body = {"title": "Fiber install", "job_type": "Install", "account": "Acme",
            "start": start.isoformat(), "end": (start + dt.timedelta(hours=2)).isoformat(),
            "assignees": ["u1"]}
    resp = client.put("/api/jobs/j1", json=body, headers=auth(admin))
    assert resp.status_code in (200, 201), resp.text


def _tomorrow_at(hour: int) -> dt.datetime:
    day = dt.datetime.now(UTC).date() + dt.timedelta(days=1)
    return dt.datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def test_put_calendars_queues_a_sync_that_the_worker_performs(
        client: TestClient, db: Database, isettings: Settings, radicale: PasswordRadicale,
        make_token: Any) -> None:
    acct = radicale.account("Work", "Family")
    admin, token = make_token("admin"), make_token("user", "u1")
    conn = connect_caldav(client, token, acct).json()
    ids = cal_ids(conn)
    start = _tomorrow_at(9)
    _job(client, admin, start)
    acct.put_event("Family", "dentist", (start + dt.timedelta(hours=4)).strftime(
        "%Y%m%dT%H%M%SZ"), (start + dt.timedelta(hours=5)).strftime("%Y%m%dT%H%M%SZ"),
        "Dentist")
    # Not due before the choice: the connection's last sync is in the future.
    with db.session() as s:
        s.scalars(select(Connection)).one().next_sync_at = dt.datetime.now(UTC) + \
            dt.timedelta(hours=1)

    before = dt.datetime.now(UTC)
    LOCAL.clear()
    resp = client.put("/api/users/u1/calendars", headers=auth(token),
                      json={"primary": ids["Work"], "conflict": [ids["Family"]]})
    assert resp.status_code == 200, resp.text
    roles = resp.json()
    assert roles["primary"] == ids["Work"] and roles["conflict"] == [ids["Family"]]
    assert {c["name"]: c["role"] for c in roles["calendars"]} == {
        "Work": "primary", "Family": "conflict"}
    assert LOCAL.is_set()  # this process's sync loop is woken
    with db.read_session() as s:
        due = s.scalars(select(Connection)).one().next_sync_at
        assert due is not None and before <= due <= dt.datetime.now(UTC)

    results = run_due_syncs(isettings, db, dt.datetime.now(UTC))
    assert [r.status for r in results] == ["ok"], [r.error for r in results]
    [href] = acct.hrefs("Work")
    copy = acct.get(href)
    assert copy.status_code == 200 and "Install: Acme" in copy.text
    with db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(ExternalBusy)
                        .where(ExternalBusy.user_id == "u1")) == 1

    listed = client.get("/api/users/u1/connections", headers=auth(make_token("dispatcher")))
    [row] = listed.json()["connections"]
    assert row["last_success_at"] is not None
    assert all(c["last_synced_at"] for c in row["calendars"])


def test_put_calendars_refuses_other_users_and_read_only_primaries(
        client: TestClient, db: Database, radicale: PasswordRadicale, make_token: Any) -> None:
    admin = make_token("admin")
    mine = cal_ids(connect_caldav(client, admin, radicale.account("Work", "Feed")).json())
    theirs = cal_ids(connect_caldav(client, admin, radicale.account("Other"), user="u2")
                     .json())
    token = make_token("user", "u1")
    other = client.put("/api/users/u1/calendars", headers=auth(token),
                       json={"primary": theirs["Other"], "conflict": []})
    assert other.status_code == 422
    assert other.json()["detail"]["field"] == "primary"
    other_conflict = client.put("/api/users/u1/calendars", headers=auth(token),
                                json={"primary": None, "conflict": [theirs["Other"]]})
    assert other_conflict.status_code == 422
    assert other_conflict.json()["detail"]["field"] == "conflict[0]"
    both = client.put("/api/users/u1/calendars", headers=auth(token),
                      json={"primary": mine["Work"], "conflict": [mine["Work"]]})
    assert both.status_code == 422
    with db.session() as s:  # the server shares it read-only with this account
        s.scalar(select(Calendar).where(Calendar.public_id == mine["Feed"])).read_only = True
    ro = client.put("/api/users/u1/calendars", headers=auth(token),
                    json={"primary": mine["Feed"], "conflict": []})
    assert ro.status_code == 422 and "read-only" in ro.text
    ok = client.put("/api/users/u1/calendars", headers=auth(token),
                    json={"primary": None, "conflict": [mine["Feed"]]})
    assert ok.status_code == 200 and ok.json()["conflict"] == [mine["Feed"]]
    with db.read_session() as s:
        roles = {c.public_id: c.role for c in s.scalars(select(Calendar))}
    assert roles == {mine["Work"]: "ignored", mine["Feed"]: "conflict",
                     theirs["Other"]: "ignored"}


def test_refresh_finds_new_calendars_and_sync_now_queues(
        client: TestClient, db: Database, radicale: PasswordRadicale, make_token: Any) -> None:
    acct = radicale.account("Work")
    token = make_token("user", "u1")
    conn = connect_caldav(client, token, acct).json()
    acct.make_calendar("Soccer")
    resp = client.post(f"/api/connections/{conn['id']}/refresh", headers=auth(token))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [c["name"] for c in body["added"]] == ["Soccer"]
    assert sorted(cal_ids(body)) == ["Soccer", "Work"]

    with db.session() as s:
        s.scalars(select(Connection)).one().next_sync_at = None
    LOCAL.clear()
    queued = client.post(f"/api/connections/{conn['id']}/sync", headers=auth(token))
    assert queued.status_code == 202 and queued.json()["queued"] is True
    assert LOCAL.is_set()
    with db.read_session() as s:
        assert s.scalars(select(Connection)).one().next_sync_at is not None

    with db.session() as s:
        s.scalars(select(Connection)).one().status = "needs_reauth"
    stuck = client.post(f"/api/connections/{conn['id']}/sync", headers=auth(token))
    assert stuck.status_code == 409 and stuck.json()["error"] == "needs_reauth"
    missing = client.post("/api/connections/con_000000000000/sync", headers=auth(token))
    assert missing.status_code == 404


def _synced_connection(client: TestClient, db: Database, settings: Settings,
                       acct: CaldavAccount, make_token: Any) -> dict[str, Any]:
    admin, token = make_token("admin"), make_token("user", "u1")
    conn = connect_caldav(client, token, acct).json()
    ids = cal_ids(conn)
    start = _tomorrow_at(9)
    _job(client, admin, start)
    acct.put_event("Family", "gym", (start + dt.timedelta(hours=6)).strftime(
        "%Y%m%dT%H%M%SZ"), (start + dt.timedelta(hours=7)).strftime("%Y%m%dT%H%M%SZ"), "Gym")
    assert client.put("/api/users/u1/calendars", headers=auth(token),
                      json={"primary": ids["Work"], "conflict": [ids["Family"]]}
                      ).status_code == 200
    results = run_due_syncs(settings, db, dt.datetime.now(UTC))
    assert [r.status for r in results] == ["ok"]
    assert len(acct.hrefs("Work")) == 1
    return conn


def _gone_locally(db: Database) -> None:
    with db.read_session() as s:
        for model in (Connection, Calendar, Link, ExternalBusy):
            assert s.scalar(select(func.count()).select_from(model)) == 0, model


def test_disconnect_keeping_copies(client: TestClient, db: Database, isettings: Settings,
                                   radicale: PasswordRadicale, make_token: Any) -> None:
    acct = radicale.account("Work", "Family")
    conn = _synced_connection(client, db, isettings, acct, make_token)
    token = make_token("user", "u1")
    resp = client.delete(f"/api/connections/{conn['id']}", headers=auth(token),
                         params={"remove_copies": "false"})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"id": conn["id"], "removed": True, "copies_removed": 0,
                           "revoked": False}
    _gone_locally(db)
    assert len(acct.hrefs("Work")) == 1  # the copy stays on the server
    assert client.get("/api/users/u1/connections",
                      headers=auth(token)).json() == {"connections": []}
    again = client.delete(f"/api/connections/{conn['id']}", headers=auth(token))
    assert again.status_code == 404


def test_disconnect_removing_copies(client: TestClient, db: Database, isettings: Settings,
                                    radicale: PasswordRadicale, make_token: Any) -> None:
    acct = radicale.account("Work", "Family")
    conn = _synced_connection(client, db, isettings, acct, make_token)
    [href] = acct.hrefs("Work")
    resp = client.delete(f"/api/connections/{conn['id']}", headers=auth(make_token("admin")),
                         params={"remove_copies": "true"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["copies_removed"] == 1
    _gone_locally(db)
    assert acct.hrefs("Work") == [] and acct.get(href).status_code == 404
    assert len(acct.hrefs("Family")) == 1  # the user's own events are not touched


def test_disconnect_waits_for_a_running_sync(client: TestClient, db: Database,
                                             radicale: PasswordRadicale,
                                             make_token: Any) -> None:
    conn = connect_caldav(client, make_token("admin"), radicale.account("Work")).json()
    with db.session() as s:
        row = s.scalars(select(Connection)).one()
        row.lease_owner = "otherhost:1:abc"
        row.lease_until = dt.datetime.now(UTC) + dt.timedelta(minutes=5)
    resp = client.delete(f"/api/connections/{conn['id']}", headers=auth(make_token("admin")))
    assert resp.status_code == 409 and resp.json()["error"] == "busy"
    with db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Connection)) == 1


def test_a_running_worker_syncs_at_once_after_put_calendars(
        client: TestClient, db: Database, isettings: Settings, radicale: PasswordRadicale,
        make_token: Any) -> None:
    """A sync loop that would next look in an hour is woken by the choice of calendars (on
    PostgreSQL through NOTIFY alone, as a worker in another process is), and the job
    appears on the server within seconds."""
    import time

    from calsync.wakeups import Wakeup
    from calsync.worker import SyncLoop

    acct = radicale.account("Work")
    token = make_token("user", "u1")
    ids = cal_ids(connect_caldav(client, token, acct).json())
    _job(client, make_token("admin"), _tomorrow_at(9))
    wakeup = Wakeup() if db.dialect == "postgresql" else LOCAL
    loop = SyncLoop(isettings, db, wakeup=wakeup, tick_seconds=3600)
    loop.start()
    try:
        deadline = time.monotonic() + 20
        while loop.rounds < 1 or (loop.listener is not None
                                  and not loop.listener.listening.is_set()):
            assert time.monotonic() < deadline, "the sync loop did not start"
            time.sleep(0.05)
        assert acct.hrefs("Work") == []
        resp = client.put("/api/users/u1/calendars", headers=auth(token),
                          json={"primary": ids["Work"], "conflict": []})
        assert resp.status_code == 200
        while not acct.hrefs("Work"):
            assert time.monotonic() < deadline, "the queued sync did not run"
            time.sleep(0.1)
    finally:
        loop.stop()
    assert loop.rounds >= 2


def test_cli_disconnect_takes_the_public_id_and_removes_copies(
        client: TestClient, db: Database, isettings: Settings, radicale: PasswordRadicale,
        make_token: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    import json

    from tests.conftest import SECRET
    from tests.test_sync_cli import calsync

    acct = radicale.account("Work", "Family")
    conn = _synced_connection(client, db, isettings, acct, make_token)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CALSYNC_CONFIG", raising=False)
    monkeypatch.setenv("CALSYNC_DATABASE_URL", db.url)
    monkeypatch.setenv("CALSYNC_SECRET_KEY", SECRET)
    code, _out, err = calsync(monkeypatch, capsys, "connections", "disconnect",
                              "con_000000000000")
    assert code != 0 and "not found" in err and "Traceback" not in err
    code, out, err = calsync(monkeypatch, capsys, "connections", "disconnect", conn["id"],
                             "--remove-copies", "--json")
    assert code == 0, err
    assert json.loads(out)["copies_removed"] == 1
    assert acct.hrefs("Work") == []
    _gone_locally(db)


def test_subscribing_to_an_ics_feed(client: TestClient, db: Database,
                                    not_caldav_url: str, make_token: Any) -> None:
    from tests.ics_feed_server import FeedServer

    feed = FeedServer()
    start = _tomorrow_at(14).strftime("%Y%m%dT%H%M%SZ")
    end = _tomorrow_at(15).strftime("%Y%m%dT%H%M%SZ")
    feed.serve("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//school//EN\r\n"
               "X-WR-CALNAME:Timetable\r\nBEGIN:VEVENT\r\nUID:lesson-1\r\n"
               f"DTSTAMP:20260101T000000Z\r\nDTSTART:{start}\r\nDTEND:{end}\r\n"
               "SUMMARY:Parents evening\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n")
    feed.start()
    try:
        token = make_token("user", "u1")
        LOCAL.clear()
        resp = client.post("/api/users/u1/connections", headers=auth(token),
                           json={"provider": "ics", "url": feed.url})
        assert resp.status_code == 201, resp.text
        conn = resp.json()
        assert conn["provider"] == "ics" and "secret-key" not in resp.text
        [cal] = conn["calendars"]
        assert cal["role"] == "conflict" and cal["read_only"] and cal["name"] == "Timetable"
        assert LOCAL.is_set()
        bad = client.post("/api/users/u1/connections", headers=auth(token),
                          json={"provider": "ics", "url": not_caldav_url})
        assert bad.status_code == 422 and bad.json()["error"] == "connect_failed"
    finally:
        feed.stop()


def test_cli_connect_says_what_to_do_in_the_same_words(
        db: Database, radicale: PasswordRadicale, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], tmp_path: Any) -> None:
    from tests.conftest import SECRET
    from tests.test_sync_cli import calsync

    with db.session() as s:
        s.add(User(id="u1", name="Anna", timezone="UTC", working_hours={}))
    acct = radicale.account("Work")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CALSYNC_CONFIG", raising=False)
    monkeypatch.setenv("CALSYNC_DATABASE_URL", db.url)
    monkeypatch.setenv("CALSYNC_SECRET_KEY", SECRET)
    code, _out, err = calsync(monkeypatch, capsys, "connect", "caldav", "u1", "--url",
                              radicale.base_url, "--username", acct.username,
                              "--password-stdin", stdin="wrong-password-123\n")
    assert code != 0 and "did not accept this username and password" in err
    assert "wrong-password-123" not in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
