"""PATCH /api/users/{id} on SQLite and PostgreSQL: a user changes their own time zone,
working hours and private mode (and nothing else, and nobody else's); an admin changes any
field of anyone; a dispatcher nothing; unknown fields and bad values are 422 naming the
field; the feed is re-rendered when the time zone changes."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from calsync.db.models import AuditEntry, FeedCache, User
from calsync.db.session import Database


def _users(db: Database) -> None:
    with db.session() as s:
        for uid in ("u1", "u2"):
            s.add(User(id=uid, name=f"Name {uid}", email=f"{uid}@example.com",
                       timezone="UTC", working_hours={"mon": [["09:00", "17:00"]]}))


def patch(client: TestClient, token: str, body: Any, user: str = "u1") -> Any:
    return client.patch(f"/api/users/{user}", json=body,
                        headers={"Authorization": f"Bearer {token}"})


def test_a_user_changes_their_own_settings(app_client: TestClient, db: Database,
                                           make_token: Any) -> None:
    _users(db)
    token = make_token("user", "u1")
    hours = {"mon": [["13:00", "17:00"], ["08:00", "12:00"]], "tue": []}
    resp = patch(app_client, token, {"timezone": "America/Chicago", "working_hours": hours,
                                     "private_mode": False})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["timezone"] == "America/Chicago" and body["private_mode"] is False
    assert body["working_hours"] == {"mon": [["08:00", "12:00"], ["13:00", "17:00"]],
                                     "tue": []}
    assert body["name"] == "Name u1" and body["email"] == "u1@example.com"  # kept
    got = app_client.get("/api/users/u1", headers={"Authorization": f"Bearer {token}"})
    assert got.json() == body
    with db.read_session() as s:
        cache = s.get(FeedCache, "u1")
        assert cache is not None and cache.dirty  # the feed's zone changed
        assert [a.action for a in s.query(AuditEntry).filter_by(target_id="u1")] \
            == ["user.update"]
    again = patch(app_client, token, {"private_mode": True})
    assert again.status_code == 200 and again.json()["private_mode"] is True
    assert again.json()["timezone"] == "America/Chicago"


def test_roles(app_client: TestClient, db: Database, make_token: Any) -> None:
    _users(db)
    own = make_token("user", "u1")
    name = patch(app_client, own, {"name": "Someone else"})
    assert name.status_code == 403 and "name" in name.json()["detail"]
    assert patch(app_client, own, {"private_mode": False}, user="u2").status_code == 403
    assert patch(app_client, make_token("dispatcher"), {"private_mode": False}
                 ).status_code == 403
    assert app_client.patch("/api/users/u1", json={"private_mode": False}).status_code == 401
    admin = make_token("admin")
    resp = patch(app_client, admin, {"name": "Anna Smith", "email": None}, user="u2")
    assert resp.status_code == 200 and resp.json()["name"] == "Anna Smith"
    assert resp.json()["email"] is None
    assert patch(app_client, admin, {"name": "X"}, user="nobody").status_code == 404
    with db.read_session() as s:
        u1 = s.get(User, "u1")
        assert u1 is not None and u1.name == "Name u1" and u1.private_mode is True


def test_bad_fields_are_named(app_client: TestClient, db: Database, make_token: Any) -> None:
    _users(db)
    token = make_token("user", "u1")
    unknown = patch(app_client, token, {"private_mod": False})
    assert unknown.status_code == 422 and "private_mod" in unknown.text
    zone = patch(app_client, token, {"timezone": "Mars/Olympus"})
    assert zone.status_code == 422 and zone.json()["detail"]["field"] == "timezone"
    hours = patch(app_client, token, {"working_hours": {"mon": [["17:00", "09:00"]]}})
    assert hours.status_code == 422 and "working_hours.mon" in hours.text
    day = patch(app_client, token, {"working_hours": {"funday": []}})
    assert day.status_code == 422 and "funday" in day.text
    null = patch(app_client, token, {"timezone": None})
    assert null.status_code == 422 and null.json()["detail"]["field"] == "timezone"
    typed = patch(app_client, token, {"private_mode": "no"})
    assert typed.status_code == 422 and "private_mode" in typed.text
    with db.read_session() as s:
        u1 = s.get(User, "u1")
        assert u1 is not None and u1.timezone == "UTC" and u1.private_mode is True
