"""The role matrix of the self-service API (DESIGN 4.5), on SQLite and PostgreSQL: a user
token acts on its own user only (403 for anyone else's, the same for every route), a
dispatcher reads connection health but changes nothing (403), an admin does everything,
no token is 401."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from calsync.api.app import create_app
from calsync.config import Settings
from calsync.db.models import User
from calsync.db.session import Database
from tests.api_connections_support import PasswordRadicale
from tests.emulators.graph import GraphEmulator, registered_outlook


@pytest.fixture
def client(settings: Settings, db: Database) -> Iterator[TestClient]:
    with db.session() as s:
        for uid in ("u1", "u2"):
            s.add(User(id=uid, name=uid, timezone="UTC", working_hours={}))
    with GraphEmulator() as em, registered_outlook(em), \
            TestClient(create_app(em.configure(settings), db)) as c:
        yield c


def test_role_matrix(client: TestClient, radicale: PasswordRadicale, make_token: Any) -> None:
    acct = radicale.account("Work")
    body = {"provider": "caldav", "url": radicale.base_url, "username": acct.username,
            "password": acct.password}
    admin = {"Authorization": f"Bearer {make_token('admin')}"}
    made = client.post("/api/users/u1/connections", json=body, headers=admin)
    assert made.status_code == 201, made.text
    con = made.json()["id"]
    cal = made.json()["calendars"][0]["id"]
    calendars = {"primary": cal, "conflict": []}
    oauth = {"provider": "outlook", "return_to": "/app/settings"}
    routes: list[tuple[str, str, Any]] = [
        ("GET", "/api/users/u1/connections", None),
        ("GET", "/api/users/u1/calendars", None),
        ("GET", f"/api/connections/{con}", None),
        ("POST", "/api/users/u1/connections", body),
        ("POST", "/api/users/u1/connections/oauth", oauth),
        ("PUT", "/api/users/u1/calendars", calendars),
        ("POST", f"/api/connections/{con}/refresh", None),
        ("POST", f"/api/connections/{con}/sync", None),
        ("PATCH", "/api/users/u1", {"private_mode": False}),
        ("DELETE", f"/api/connections/{con}", None),
    ]
    reads = {"GET"}

    def call(method: str, path: str, payload: Any, token: str | None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return client.request(method, path, json=payload, headers=headers).status_code

    other_user = make_token("user", "u2")
    dispatcher = make_token("dispatcher")
    for method, path, payload in routes:
        assert call(method, path, payload, None) == 401, (method, path)
        assert call(method, path, payload, other_user) == 403, (method, path)
        expected = 200 if method in reads else 403
        assert call(method, path, payload, dispatcher) == expected, (method, path)

    own = make_token("user", "u1")
    for method, path, payload in routes:
        status = call(method, path, payload, own)
        assert status in (200, 201, 202), (method, path, status)
    # Gone now: a missing connection is 404 for anyone allowed to ask.
    assert call("GET", f"/api/connections/{con}", None, own) == 404
    assert call("DELETE", f"/api/connections/{con}", None, make_token("admin")) == 404
