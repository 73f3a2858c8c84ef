"""API tokens: ``calsync token list|revoke``, ``GET /api/tokens``, ``DELETE /api/tokens/{id}``,
and a user's tokens and feed dying with the user (API delete and import ``"deleted"``)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from calsync.cli import cli
from calsync.db.models import ApiToken
from calsync.db.session import Database
from calsync.schedule.store import import_document
from tests.conftest import SECRET

USER = {"id": "u1", "name": "Jane Doe", "timezone": "America/Chicago"}
LISTED_KEYS = {"id", "name", "role", "user_id", "prefix", "created_at", "last_used_at",
               "revoked_at"}


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def run(db: Database, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CALSYNC_CONFIG", raising=False)
    env = {"CALSYNC_DATABASE_URL": db.url, "CALSYNC_SECRET_KEY": SECRET}
    runner = CliRunner()

    def _run(*args: str) -> Any:
        return runner.invoke(cli, list(args), env=env, catch_exceptions=True)

    return _run


def _hashes(db: Database) -> list[str]:
    with db.session() as s:
        return list(s.scalars(select(ApiToken.token_hash)))


def test_admin_lists_tokens_without_secrets_and_revokes_one(app_client: Any, make_token: Any,
                                                            db: Database) -> None:
    admin = make_token("admin", name="platform")
    dispatcher = make_token("dispatcher", name="dispatch")
    assert app_client.put("/api/users/u1", json=USER, headers=_auth(admin)).status_code == 201
    tech = make_token("user", "u1", name="jane-phone")

    r = app_client.get("/api/tokens", headers=_auth(admin))
    assert r.status_code == 200, r.text
    tokens = r.json()["tokens"]
    assert [(t["name"], t["role"], t["user_id"]) for t in tokens] == [
        ("platform", "admin", None), ("dispatch", "dispatcher", None),
        ("jane-phone", "user", "u1")]
    assert all(set(t) == LISTED_KEYS for t in tokens)
    assert tokens[0]["last_used_at"] is not None  # the admin's own request just now
    assert [t["prefix"] for t in tokens] == [admin[:8], dispatcher[:8], tech[:8]]
    for secret in (admin, dispatcher, tech, *_hashes(db)):
        assert secret not in r.text

    assert app_client.get("/api/tokens", headers=_auth(dispatcher)).status_code == 403
    assert app_client.get("/api/tokens", headers=_auth(tech)).status_code == 403
    dispatcher_id = tokens[1]["id"]
    assert app_client.delete(f"/api/tokens/{dispatcher_id}",
                             headers=_auth(tech)).status_code == 403

    r = app_client.delete(f"/api/tokens/{dispatcher_id}", headers=_auth(admin))
    assert r.status_code == 200, r.text
    assert r.json()["revoked_at"] is not None and r.json()["name"] == "dispatch"
    assert dispatcher not in r.text
    r = app_client.get("/api/users/u1", headers=_auth(dispatcher))
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    r = app_client.delete("/api/tokens/999999", headers=_auth(admin))
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_deleting_a_user_over_the_api_revokes_their_tokens_and_feed(
        app_client: Any, make_token: Any) -> None:
    admin = _auth(make_token("admin"))
    assert app_client.put("/api/users/u1", json=USER, headers=admin).status_code == 201
    assert app_client.put("/api/users/u2", json={**USER, "id": "u2"},
                          headers=admin).status_code == 201
    tech = make_token("user", "u1")
    other = make_token("user", "u2")
    feed = urlsplit(app_client.post("/api/users/u1/feed", headers=admin).json()["url"]).path
    assert app_client.get(feed).status_code == 200
    assert app_client.get("/api/users/u1", headers=_auth(tech)).status_code == 200

    assert app_client.delete("/api/users/u1", headers=admin).json()["result"] == "deleted"
    assert app_client.get("/api/users/u1", headers=_auth(tech)).status_code == 401
    assert app_client.get(feed).status_code == 404
    assert app_client.get("/api/users/u2", headers=_auth(other)).status_code == 200
    listed = {t["user_id"]: t for t in app_client.get("/api/tokens",
                                                      headers=admin).json()["tokens"]}
    assert listed["u1"]["revoked_at"] is not None and listed["u2"]["revoked_at"] is None

    # Coming back does not bring the old token or the old link back to life.
    assert app_client.put("/api/users/u1", json=USER, headers=admin).status_code == 200
    assert app_client.get("/api/users/u1", headers=_auth(tech)).status_code == 401
    assert app_client.get(feed).status_code == 404
    new_feed = urlsplit(app_client.post("/api/users/u1/feed",
                                        headers=admin).json()["url"]).path
    assert new_feed != feed and app_client.get(new_feed).status_code == 200


def test_import_deleted_user_revokes_their_tokens_and_feed(app_client: Any, make_token: Any,
                                                           db: Database) -> None:
    assert import_document(db, {"users": [USER]}).ok
    tech = make_token("user", "u1")
    admin = _auth(make_token("admin"))
    feed = urlsplit(app_client.post("/api/users/u1/feed", headers=admin).json()["url"]).path
    assert app_client.get(feed).status_code == 200

    report = import_document(db, {"users": [{"id": "u1", "deleted": True}]})
    assert report.counts["users"] == {"deleted": 1}
    assert app_client.get("/api/users/u1", headers=_auth(tech)).status_code == 401
    assert app_client.get(feed).status_code == 404
    with db.session() as s:
        assert s.scalars(select(ApiToken).where(ApiToken.user_id == "u1")).one().revoked_at


def test_a_token_of_a_user_deleted_before_revocation_existed_is_refused(
        app_client: Any, make_token: Any, db: Database) -> None:
    """Databases from before this release hold live tokens of deleted users."""
    from calsync.db.models import User, utcnow

    assert import_document(db, {"users": [USER]}).ok
    tech = make_token("user", "u1")
    with db.session() as s:
        user = s.get(User, "u1")
        assert user is not None
        user.deleted_at = utcnow()  # as the old code did: tokens left alone
    assert app_client.get("/api/users/u1", headers=_auth(tech)).status_code == 401


def test_cli_token_create_list_revoke(run: Any, app_client: Any, db: Database) -> None:
    assert import_document(db, {"users": [USER]}).ok
    r = run("token", "create", "--name", "platform", "--role", "admin")
    assert r.exit_code == 0, r.output
    admin = r.output.strip()
    r = run("token", "create", "--name", "jane", "--role", "user", "--user", "u1")
    tech = r.output.strip()
    assert app_client.get("/api/users/u1", headers=_auth(tech)).status_code == 200

    r = run("token", "list", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [(t["name"], t["role"], t["user_id"]) for t in rows] == [
        ("platform", "admin", None), ("jane", "user", "u1")]
    assert all(set(t) == LISTED_KEYS for t in rows)
    assert rows[1]["last_used_at"] is not None
    r = run("token", "list")
    assert r.exit_code == 0 and "jane" in r.output and "user u1" in r.output
    for secret in (admin, tech, *_hashes(db)):
        assert secret not in r.output

    jane_id = rows[1]["id"]
    r = run("token", "revoke", str(jane_id))
    assert r.exit_code == 0 and f"token {jane_id} (jane) revoked" in r.output
    assert app_client.get("/api/users/u1", headers=_auth(tech)).status_code == 401
    assert app_client.get("/api/users/u1", headers=_auth(admin)).status_code == 200
    r = run("token", "list")
    assert "REVOKED" in r.output.splitlines()[1] and "REVOKED" not in r.output.splitlines()[0]
    r = run("token", "revoke", "424242")
    assert r.exit_code != 0 and "API token 424242 not found" in str(r.exception)


def test_cli_token_create_refuses_a_deleted_user(run: Any, db: Database) -> None:
    assert import_document(db, {"users": [USER]}).ok
    assert import_document(db, {"users": [{"id": "u1", "deleted": True}]}).ok
    r = run("token", "create", "--name", "jane", "--role", "user", "--user", "u1")
    assert r.exit_code != 0 and "user 'u1' not found" in str(r.exception)
