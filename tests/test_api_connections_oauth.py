"""Outlook sign-in started through the self-service API comes back to a page
(``return_to``), on SQLite and PostgreSQL, through the Graph emulator and the real msal
code: same-origin paths and listed origins are accepted, others refused with 422; after
the callback the browser is redirected there with the new connection's id, or with an
error code when the sign-in failed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from calsync.api.app import create_app
from calsync.config import Settings
from calsync.db.models import Connection, OAuthState, User
from calsync.db.session import Database
from tests.emulators.graph import GraphEmulator, registered_outlook

EMAIL = "anna@contoso.com"
PLATFORM = "https://platform.example.com"


@pytest.fixture
def em() -> Iterator[GraphEmulator]:
    with GraphEmulator() as emulator:
        emulator.add_mailbox(EMAIL, (("Calendar", True),))
        with registered_outlook(emulator):
            yield emulator


@pytest.fixture
def client(settings: Settings, db: Database, em: GraphEmulator) -> Iterator[TestClient]:
    with db.session() as s:
        s.add(User(id="u1", name="Anna", email=EMAIL, timezone="UTC", working_hours={}))
    configured = em.configure(settings)
    configured = replace(configured, server=replace(
        configured.server, allowed_return_origins=(PLATFORM,)))
    with TestClient(create_app(configured, db), follow_redirects=False) as c:
        yield c


def start(client: TestClient, token: str, return_to: str) -> httpx.Response:
    return client.post("/api/users/u1/connections/oauth", headers={
        "Authorization": f"Bearer {token}"}, json={"provider": "outlook",
                                                   "return_to": return_to})


def sign_in(em: GraphEmulator, url: str) -> dict[str, str]:
    with httpx.Client(verify=em.ssl_context(), trust_env=False) as browser:
        page = browser.get(url)
    assert page.status_code == 200
    return dict(re.findall(r'name="(\w+)" value="([^"]*)"', page.text))


def test_sign_in_returns_to_a_platform_page_with_the_connection(
        client: TestClient, em: GraphEmulator, db: Database, make_token: Any) -> None:
    page = f"{PLATFORM}/settings/calendar?tab=connections"
    resp = start(client, make_token("user", "u1"), page)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"authorize_url", "expires_at"}
    with db.read_session() as s:
        assert s.scalars(select(OAuthState)).one().return_to == page
    back = client.post("/oauth/outlook/callback", data=sign_in(em, body["authorize_url"]))
    assert back.status_code == 303, back.text
    target = urlsplit(back.headers["location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{PLATFORM}/settings/calendar"
    query = parse_qs(target.query)
    with db.read_session() as s:
        conn = s.scalars(select(Connection)).one()
        assert query == {"tab": ["connections"], "connection": [conn.public_id],
                         "provider": ["outlook"]}
        assert conn.provider == "outlook" and conn.account == EMAIL


def test_a_path_returns_to_calsync_itself(client: TestClient, em: GraphEmulator,
                                          settings: Settings, make_token: Any) -> None:
    resp = start(client, make_token("admin"), "/app/settings")
    assert resp.status_code == 200
    back = client.post("/oauth/outlook/callback",
                       data=sign_in(em, resp.json()["authorize_url"]))
    assert back.status_code == 303
    assert back.headers["location"].startswith(f"{settings.server.base_url}/app/settings?")


def test_other_origins_are_refused(client: TestClient, db: Database, make_token: Any) -> None:
    token = make_token("user", "u1")
    for bad in ("https://evil.example.net/steal", "//evil.example.net/x",
                "javascript:alert(1)", f"{PLATFORM}.evil.example.net/"):
        resp = start(client, token, bad)
        assert resp.status_code == 422, bad
        assert resp.json()["detail"]["field"] == "return_to"
    with db.read_session() as s:
        assert s.scalars(select(OAuthState)).all() == []


def test_a_refused_sign_in_comes_back_with_the_error(client: TestClient, db: Database,
                                                     make_token: Any) -> None:
    resp = start(client, make_token("user", "u1"), f"{PLATFORM}/settings")
    state = parse_qs(urlsplit(resp.json()["authorize_url"]).query)["state"][0]
    back = client.get("/oauth/outlook/callback",
                      params={"state": state, "error": "access_denied",
                              "error_description": "The user declined"})
    assert back.status_code == 303
    assert parse_qs(urlsplit(back.headers["location"]).query)["error"] == ["sign_in_failed"]
    with db.read_session() as s:
        assert s.scalars(select(Connection)).all() == []
