"""OAuth core with the Outlook connector and the Graph emulator (real msal): the web
authorization-code + PKCE flow through /oauth/outlook/start and /callback (state checks),
the `calsync connect outlook` command, and a revoked grant -> needs_reauth via the sync
runner without a retry storm. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from calsync.api.app import create_app
from calsync.config import Settings
from calsync.db.models import Calendar, Connection, OAuthState, User
from calsync.db.session import Database
from calsync.oauth_commands import connect_oauth
from calsync.secrets import CredentialBox
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
def client(osettings: Settings, db: Database) -> Iterator[TestClient]:
    with db.session() as s:
        s.add(User(id="u1", name="Jane", email=EMAIL, timezone="America/Chicago",
                   working_hours={}))
        s.add(User(id="u2", name="Joe", email="joe@contoso.com", timezone="UTC",
                   working_hours={}))
    with TestClient(create_app(osettings, db)) as c:
        yield c


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sign_in_at_provider(em: GraphEmulator, url: str) -> dict[str, str]:
    """What the browser does: open the provider URL and take the form it posts back
    (response_mode=form_post)."""
    with httpx.Client(verify=em.ssl_context(), trust_env=False) as browser:
        resp = browser.get(url)
    assert resp.status_code == 200
    action = re.search(r'action="([^"]+)"', resp.text)
    assert action is not None and urlsplit(action.group(1)).path == "/oauth/outlook/callback"
    return dict(re.findall(r'name="(\w+)" value="([^"]*)"', resp.text))


def callback(client: TestClient, fields: dict[str, str]) -> httpx.Response:
    return client.post("/oauth/outlook/callback", data=fields)


def start(client: TestClient, token: str, user: str = "u1") -> str:
    resp = client.get("/oauth/outlook/start", params={"user_id": user}, headers=auth(token))
    assert resp.status_code == 200, resp.text
    return str(resp.json()["url"])


def test_web_sign_in_with_pkce_stores_an_encrypted_connection(
        client: TestClient, em: GraphEmulator, db: Database, osettings: Settings,
        make_token) -> None:  # type: ignore[no-untyped-def]
    url = start(client, make_token("user", "u1"))
    query = parse_qs(urlsplit(url).query)
    assert query["code_challenge_method"] == ["S256"] and query["response_mode"] == ["form_post"]
    assert query["redirect_uri"] == [f"{osettings.server.base_url}/oauth/outlook/callback"]
    assert set(query["scope"][0].split()) >= {"Calendars.ReadWrite", "User.Read",
                                              "offline_access"}
    back = sign_in_at_provider(em, url)
    with db.session() as s:
        row = s.scalar(select(OAuthState))
        assert row is not None
        assert row.state_hash == hashlib.sha256(back["state"].encode()).hexdigest()
        assert back["state"].encode() not in row.verifier  # encrypted
    resp = callback(client, back)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["account"] == EMAIL and body["user_id"] == "u1" and body["created"]
    assert em.token_requests["authorization_code"] == 1  # PKCE verified by the emulator
    with db.session() as s:
        conn = s.scalar(select(Connection))
        assert conn is not None and conn.provider == "outlook" and conn.status == "ok"
        assert b"RefreshToken" not in conn.credentials
        creds = CredentialBox.from_settings(osettings).open(conn.credentials)
        assert "RefreshToken" in creds["token_cache"]
        cals = {c.name: (c.role, c.read_only) for c in s.scalars(select(Calendar))}
        assert cals == {"Calendar": ("ignored", False), "Holidays": ("ignored", True)}
        assert s.scalar(select(OAuthState)) is None


def test_state_is_single_use(client: TestClient, em: GraphEmulator,
                             make_token) -> None:  # type: ignore[no-untyped-def]
    back = sign_in_at_provider(em, start(client, make_token("admin")))
    assert callback(client, back).status_code == 200
    again = callback(client, back)
    assert again.status_code == 400 and again.json()["error"] == "invalid_state"


def test_unknown_or_tampered_state_is_rejected(client: TestClient, em: GraphEmulator, db: Database,
                                               make_token) -> None:  # type: ignore[no-untyped-def]
    back = sign_in_at_provider(em, start(client, make_token("admin")))
    forged = callback(client, {"code": back["code"], "state": back["state"] + "x"})
    assert forged.status_code == 400 and forged.json()["error"] == "invalid_state"
    missing = client.get("/oauth/outlook/callback", params={"code": back["code"]})  # GET form
    assert missing.status_code == 400
    with db.session() as s:
        assert s.scalar(select(Connection)) is None
    assert em.token_requests["authorization_code"] == 0


def test_expired_state_is_rejected_and_consumed(client: TestClient, em: GraphEmulator,
                                                db: Database,
                                                make_token) -> None:  # type: ignore[no-untyped-def]
    back = sign_in_at_provider(em, start(client, make_token("admin")))
    with db.session() as s:
        s.execute(update(OAuthState).values(
            expires_at=dt.datetime.now(UTC) - dt.timedelta(seconds=1)))
    resp = callback(client, back)
    assert resp.status_code == 400 and "10 minutes" in resp.json()["detail"]
    with db.session() as s:
        assert s.scalar(select(OAuthState)) is None


def test_state_started_for_another_provider_is_rejected(
        client: TestClient, em: GraphEmulator, db: Database,
        make_token) -> None:  # type: ignore[no-untyped-def]
    back = sign_in_at_provider(em, start(client, make_token("admin")))
    with db.session() as s:
        s.execute(update(OAuthState).values(provider="google"))
    resp = callback(client, back)
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_state"


def test_start_needs_admin_or_the_user(client: TestClient,
                                       make_token) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/oauth/outlook/start", params={"user_id": "u1"}).status_code == 401
    other = client.get("/oauth/outlook/start", params={"user_id": "u1"},
                       headers=auth(make_token("user", "u2")))
    assert other.status_code == 403
    disp = client.get("/oauth/outlook/start", params={"user_id": "u1"},
                      headers=auth(make_token("dispatcher")))
    assert disp.status_code == 403
    nobody = client.get("/oauth/outlook/start", params={"user_id": "nobody"},
                        headers=auth(make_token("admin")))
    assert nobody.status_code == 404
    redirect = client.get("/oauth/outlook/start", params={"user_id": "u1", "redirect": "true"},
                          headers=auth(make_token("admin")), follow_redirects=False)
    assert redirect.status_code == 302 and "/oauth2/v2.0/authorize" in redirect.headers[
        "location"]


def test_provider_error_on_callback_is_a_clear_400(client: TestClient, em: GraphEmulator,
                                                   make_token) -> None:  # type: ignore[no-untyped-def]
    back = sign_in_at_provider(em, start(client, make_token("admin")))
    resp = client.get("/oauth/outlook/callback",  # the query-string variant
                      params={"state": back["state"], "error": "access_denied",
                              "error_description": "The user declined."})
    assert resp.status_code == 400 and "access_denied" in resp.json()["detail"]


# --- CLI and needs-reauth ---------------------------------------------------------------

def test_connect_outlook_command(client: TestClient, em: GraphEmulator, osettings: Settings,
                                 db: Database, tmp_path: Path) -> None:
    from calsync.cli import cli

    config = tmp_path / "calsync.toml"
    o = osettings.outlook
    config.write_text(
        f'[database]\nurl = "{db.url}"\n[security]\nsecret_key = "{osettings.security.secret_key}"\n'
        f'[outlook]\nclient_id = "{o.client_id}"\ntenant = "{o.tenant}"\n'
        f'authority_host = "{o.authority_host}"\ngraph_url = "{o.graph_url}"\n')
    result = CliRunner().invoke(cli, ["--config", str(config), "connect", "outlook", "u1",
                                      "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["account"] == EMAIL and summary["created"]
    assert "enter the code" in result.stderr
    assert sorted(c["name"] for c in summary["calendars"]) == ["Calendar", "Holidays"]
    again = CliRunner().invoke(cli, ["--config", str(config), "connect", "outlook", "u1"],
                               catch_exceptions=False)
    assert again.exit_code == 0 and "reconnected" in again.stdout
    with db.session() as s:
        assert len(list(s.scalars(select(Connection)))) == 1


def test_revoked_grant_sets_needs_reauth_and_stops(client: TestClient, em: GraphEmulator,
                                                   osettings: Settings, db: Database) -> None:
    from calsync.sync.runner import run_due_syncs, sync_connection

    now = dt.datetime(2026, 11, 23, 12, tzinfo=UTC)
    summary = connect_oauth(osettings, db, "outlook", "u1", lambda _m: None, now)
    with db.session() as s:
        s.execute(update(Calendar).where(Calendar.name == "Calendar").values(role="primary"))
    em.expire_access_tokens()
    em.revoke_refresh_tokens(EMAIL)
    result = sync_connection(osettings, db, summary["connection_id"], now,
                             sleep=lambda _s: None)
    assert result.status == "needs_reauth"
    with db.session() as s:
        conn = s.get(Connection, summary["connection_id"])
        assert conn is not None and conn.status == "needs_reauth"
        assert "calsync connect outlook" in (conn.last_error or "")
    assert em.token_requests["refresh_token"] == 1
    for minutes in (10, 20, 30):
        run_due_syncs(osettings, db, now + dt.timedelta(minutes=minutes), sleep=lambda _s: None)
    assert em.token_requests["refresh_token"] == 1
    assert em.unauthorized == 1
