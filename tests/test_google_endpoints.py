"""Google through calsync's own entry points, on SQLite and PostgreSQL: the web sign-in
(``/oauth/google/start`` + ``/callback`` with PKCE and a one-use state), the CLI device flow
(``connect_oauth``), push channels created by ``renew_push_subscriptions``, and
``POST /webhooks/google`` (handshake, bad channel token rejected, a good notification
syncs that calendar)."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httplib2
import pytest
from sqlalchemy import select

from calsync.config import Settings, load_settings
from calsync.db.models import Calendar, Connection, ExternalEvent, PushSubscription
from calsync.db.session import Database
from calsync.push import hash_secret, renew_push_subscriptions
from calsync.schedule.store import import_document
from calsync.secrets import CredentialBox
from tests.conftest import SECRET
from tests.emulators.google import GoogleEmulator, google_emulator_fixture, google_settings

CAL = "tech@example.com"
UTC = dt.timezone.utc
google_emulator = google_emulator_fixture()


@pytest.fixture
def em(google_emulator: GoogleEmulator) -> GoogleEmulator:
    google_emulator.auto_deliver = False  # the test posts the outbox to the app itself
    return google_emulator


@pytest.fixture
def settings(db: Database, em: GoogleEmulator) -> Settings:
    base = load_settings(env={"CALSYNC_SECRET_KEY": SECRET})
    base = replace(base, database=replace(base.database, url=db.url),
                   server=replace(base.server, base_url="https://calsync.example.com"))
    return google_settings(em, base)


@pytest.fixture
def user(db: Database) -> str:
    report = import_document(db, {"users": [{"id": "u1", "name": "Jane Doe",
                                             "email": CAL, "timezone": "America/Chicago"}]},
                             now=dt.datetime.now(UTC))
    assert report.ok, report.errors
    return "u1"


def consent(url: str) -> dict[str, str]:
    """Follow the authorization URL as the browser would; return the callback's query."""
    http = httplib2.Http()
    http.follow_redirects = False
    resp, _ = http.request(url, "GET")
    assert resp.status == 302, resp.status
    location = resp["location"]
    assert location.startswith("https://calsync.example.com/oauth/google/callback?")
    return {k: v[0] for k, v in parse_qs(urlparse(location).query).items()}


def test_web_sign_in_with_pkce_stores_an_encrypted_connection(
        app_client, make_token, em: GoogleEmulator, db: Database,  # type: ignore[no-untyped-def]
        settings: Settings, user: str) -> None:
    em.login_email = CAL
    em.add_calendar(CAL, "team@group.calendar.google.com", "Team", role="reader")
    admin = {"Authorization": f"Bearer {make_token('admin')}"}
    start = app_client.get("/oauth/google/start", params={"user_id": user}, headers=admin)
    assert start.status_code == 200, start.text
    url = start.json()["url"]
    query = parse_qs(urlparse(url).query)
    assert url.startswith(em.root + "/o/oauth2/v2/auth?")
    assert query["code_challenge_method"] == ["S256"] and query["access_type"] == ["offline"]
    assert query["redirect_uri"] == ["https://calsync.example.com/oauth/google/callback"]
    back = consent(url)

    tampered = app_client.get("/oauth/google/callback",
                              params={"code": back["code"], "state": back["state"] + "x"})
    assert tampered.status_code == 400 and tampered.json()["error"] == "invalid_state"
    with db.session() as s:
        assert s.scalars(select(Connection)).all() == []

    done = app_client.get("/oauth/google/callback", params=back)
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["account"] == CAL and body["provider"] == "google"
    assert {c["id"]: c["read_only"] for c in body["calendars"]} == {
        CAL: False, "team@group.calendar.google.com": True}
    with db.session() as s:
        conn = s.scalars(select(Connection)).one()
        assert conn.provider == "google" and conn.account == CAL
        assert conn.credentials is not None
        stored = CredentialBox.from_settings(settings).open(conn.credentials)
        assert stored["refresh_token"] in em.refresh_tokens
        assert stored["refresh_token"].encode() not in conn.credentials

    replay = app_client.get("/oauth/google/callback", params=back)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_state"


def test_cli_device_flow_through_connect_oauth(em: GoogleEmulator, db: Database,
                                               settings: Settings, user: str) -> None:
    from calsync.oauth_commands import connect_oauth

    em.device_interval = 0  # Google says 5 s; the test need not wait
    prompts: list[str] = []

    def prompt(message: str) -> None:
        prompts.append(message)
        code = re.search(r"enter the code (\S+)", message)
        assert code is not None
        em.approve_device(code.group(1), CAL)

    summary = connect_oauth(settings, db, "google", user, prompt, dt.datetime.now(UTC))
    assert summary["account"] == CAL and summary["created"]
    assert [c["remote_id"] for c in summary["calendars"]] == [CAL]
    with db.session() as s:
        conn = s.scalars(select(Connection)).one()
        stored = CredentialBox.from_settings(settings).open(conn.credentials or b"")
        assert stored["refresh_token"] in em.refresh_tokens


def _connected(db: Database, settings: Settings, em: GoogleEmulator, user: str) -> int:
    tokens = em.grant(CAL)
    creds = {"token": tokens["access_token"], "refresh_token": tokens["refresh_token"],
             "expiry": (dt.datetime.now(UTC) + dt.timedelta(minutes=50)).isoformat()}
    with db.session() as s:
        conn = Connection(user_id=user, provider="google", account=CAL,
                          credentials=CredentialBox.from_settings(settings).seal(creds))
        s.add(conn)
        s.flush()
        cal = Calendar(connection_id=conn.id, remote_id=CAL, name=CAL, role="primary")
        s.add(cal)
        s.flush()
        return cal.id


def _post(app_client, message: dict, **override: str):  # type: ignore[no-untyped-def]
    headers = {**message["headers"], **override}
    return app_client.post("/webhooks/google", headers=headers, content=b"")


def test_push_channel_handshake_bad_token_and_notification_sync(
        app_client, em: GoogleEmulator, db: Database,  # type: ignore[no-untyped-def]
        settings: Settings, user: str) -> None:
    cal_id = _connected(db, settings, em, user)
    now = dt.datetime.now(UTC)
    counts = renew_push_subscriptions(settings, db, now)
    assert counts["created"] == 1, counts
    with db.session() as s:
        sub = s.scalars(select(PushSubscription)).one()
        remote_id, resource_id, secret_hash = sub.remote_id, sub.resource_id, sub.secret_hash
        assert sub.calendar_id == cal_id and sub.provider == "google"
        assert dt.timedelta(days=6) < sub.expires_at - now <= dt.timedelta(days=7, minutes=1)
    channel = em.channels[remote_id]
    assert channel["address"] == "https://calsync.example.com/webhooks/google"
    assert channel["resourceId"] == resource_id
    assert hash_secret(channel["token"]) == secret_hash  # only the hash is stored

    handshake = em.outbox[-1]
    assert handshake["headers"]["X-Goog-Resource-State"] == "sync"
    assert _post(app_client, handshake).status_code in (200, 202)
    with db.session() as s:
        assert s.scalars(select(ExternalEvent)).all() == []

    soon = now + dt.timedelta(days=1)
    em.put_event(CAL, {"summary": "Dentist",
                       "start": {"dateTime": soon.isoformat()},
                       "end": {"dateTime": (soon + dt.timedelta(hours=1)).isoformat()}})
    change = em.outbox[-1]
    assert change["headers"]["X-Goog-Resource-State"] == "exists"

    forged = _post(app_client, change, **{"X-Goog-Channel-Token": "not-the-secret"})
    assert forged.status_code in (401, 403)
    with db.session() as s:
        assert s.scalars(select(ExternalEvent)).all() == []
    unknown = _post(app_client, change, **{"X-Goog-Channel-ID": "no-such-channel"})
    assert unknown.status_code in (401, 403)

    good = _post(app_client, change)
    assert good.status_code in (200, 202)
    with db.session() as s:  # the API marked the connection due; a worker syncs it
        assert s.scalars(select(ExternalEvent)).all() == []
        cal = s.get(Calendar, cal_id)
        assert cal is not None
        conn = s.get(Connection, cal.connection_id)
        assert conn is not None and conn.next_sync_at is not None
        assert conn.next_sync_at <= dt.datetime.now(UTC)
    from calsync.sync.runner import run_due_syncs

    [result] = run_due_syncs(settings, db, dt.datetime.now(UTC), sleep=lambda _s: None)
    assert result.status == "ok", result.error
    with db.session() as s:
        events = s.scalars(select(ExternalEvent).where(ExternalEvent.calendar_id == cal_id)
                           ).all()
        assert [e.summary for e in events] == ["Dentist"]


def test_renewal_replaces_a_channel_close_to_expiry(em: GoogleEmulator, db: Database,
                                                    settings: Settings, user: str) -> None:
    _connected(db, settings, em, user)
    now = dt.datetime.now(UTC)
    assert renew_push_subscriptions(settings, db, now)["created"] == 1
    first = next(iter(em.channels))
    assert renew_push_subscriptions(settings, db, now)["created"] == 0  # not due yet
    later = now + dt.timedelta(days=6, hours=13)  # within the renewal margin
    counts = renew_push_subscriptions(settings, db, later)
    assert counts["renewed"] == 1, counts
    assert first not in em.channels and len(em.channels) == 1  # old one stopped
    with db.session() as s:
        assert s.scalars(select(PushSubscription)).one().remote_id == next(iter(em.channels))


def test_revoked_sign_in_sets_needs_reauth_through_the_engine(
        em: GoogleEmulator, db: Database, settings: Settings, user: str) -> None:
    from calsync.sync.runner import run_due_syncs, sync_connection

    tokens = em.grant(CAL)
    creds = {"token": tokens["access_token"], "refresh_token": tokens["refresh_token"],
             "expiry": (dt.datetime.now(UTC) - dt.timedelta(minutes=5)).isoformat()}
    with db.session() as s:
        conn = Connection(user_id=user, provider="google", account=CAL,
                          credentials=CredentialBox.from_settings(settings).seal(creds))
        s.add(conn)
        s.flush()
        s.add(Calendar(connection_id=conn.id, remote_id=CAL, name=CAL, role="primary"))
        conn_id = conn.id
    em.revoke(tokens["refresh_token"])
    sleeps: list[float] = []
    now = dt.datetime.now(UTC)
    result = sync_connection(settings, db, conn_id, now, sleep=sleeps.append)
    assert result.status == "needs_reauth", result
    assert "calsync connect google" in (result.error or "")
    assert em.counts["token:refresh_token"] == 1 and em.counts["api"] == 0 and sleeps == []
    with db.session() as s:
        stored = s.get(Connection, conn_id)
        assert stored is not None and stored.status == "needs_reauth"
    run_due_syncs(settings, db, now + dt.timedelta(hours=1), sleep=sleeps.append)
    assert em.counts["token:refresh_token"] == 1  # not tried again until reconnected


def test_calsync_connect_google_command(em: GoogleEmulator,
                                        tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from calsync.cli import cli

    em.device_interval = 0
    em.device_auto_approve = CAL
    values = em.settings_values()
    config = tmp_path / "calsync.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path}/cli.db"\n'
        f'[security]\nsecret_key = "{SECRET}"\n[google]\n'
        + "".join(f'{k} = "{v}"\n' for k, v in values.items()), encoding="utf-8")
    runner = CliRunner()
    base = ["--config", str(config)]
    assert runner.invoke(cli, [*base, "db", "upgrade"]).exit_code == 0
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"users": [{"id": "u1", "name": "Jane",
                                            "timezone": "America/Chicago"}]}))
    assert runner.invoke(cli, [*base, "import", str(users)]).exit_code == 0
    result = runner.invoke(cli, [*base, "connect", "google", "u1", "--json"])
    assert result.exit_code == 0, result.output
    assert "https://www.google.com/device" in result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["account"] == CAL and summary["provider"] == "google"
    missing = runner.invoke(cli, [*base, "connect", "google", "nobody"])
    assert missing.exit_code != 0 and "nobody" in f"{missing.output}{missing.exception}"


def _browser(em: GoogleEmulator, tamper_state: bool = False):  # type: ignore[no-untyped-def]
    """A browser on this machine: follows the authorization URL, lands on the loopback."""
    import threading

    import httpx

    def open_browser(url: str) -> None:
        def visit() -> None:
            location = httpx.get(url, follow_redirects=False).headers["location"]
            if tamper_state:
                location = re.sub(r"state=[^&]+", "state=forged", location)
            httpx.get(location, follow_redirects=False)
        threading.Thread(target=visit, daemon=True).start()

    return open_browser


def test_cli_browser_sign_in_over_a_loopback_redirect(em: GoogleEmulator, db: Database,
                                                      settings: Settings, user: str) -> None:
    from calsync.oauth_commands import connect_oauth

    em.login_email = CAL
    prompts: list[str] = []
    summary = connect_oauth(settings, db, "google", user, prompts.append,
                            dt.datetime.now(UTC), browser=True, open_browser=_browser(em),
                            signin_timeout=30)
    assert summary["account"] == CAL and summary["created"]
    url = prompts[0].split("\n", 1)[1]
    query = parse_qs(urlparse(url).query)
    assert query["redirect_uri"][0].startswith("http://127.0.0.1:")
    assert query["code_challenge_method"] == ["S256"]
    with db.session() as s:
        conn = s.scalars(select(Connection)).one()
        stored = CredentialBox.from_settings(settings).open(conn.credentials or b"")
        assert stored["refresh_token"] in em.refresh_tokens


def test_cli_browser_sign_in_rejects_a_forged_state(em: GoogleEmulator, db: Database,
                                                    settings: Settings, user: str) -> None:
    from calsync.errors import UserError
    from calsync.oauth_commands import connect_oauth

    em.login_email = CAL
    with pytest.raises(UserError, match="wrong state"):
        connect_oauth(settings, db, "google", user, lambda _m: None, dt.datetime.now(UTC),
                      browser=True, open_browser=_browser(em, tamper_state=True),
                      signin_timeout=30)
    assert em.counts["token:authorization_code"] == 0  # the code was never redeemed
    with db.session() as s:
        assert s.scalars(select(Connection)).all() == []
