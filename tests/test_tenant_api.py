"""``GET /api/tenants`` and ``DELETE /api/tenants/{id}``: an organisation with its domains
and its users' health (admin and dispatcher read; only admin removes; never a secret), on
SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, inspect, select, text

from calsync.config import Settings
from calsync.db.models import Connection, Tenant
from calsync.db.session import Database, upgrade
from calsync.errors import ProviderError
from calsync.schedule.store import import_document
from calsync.sync.connector import RemoteCalendar
from calsync.sync.tenants import onboard, save_tenant
from tests.conftest import alembic_to, make_db

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)


def discover(conn: Connection) -> list[RemoteCalendar]:
    """Calendars as the tenant's access lists them; one mailbox refused by its policy."""
    if conn.account.startswith("b@"):
        raise ProviderError("Microsoft 365 refused app-only access to the mailbox of "
                            "b@contoso.com: an Exchange admin must add it to the policy")
    return [RemoteCalendar(id=f"cal-{conn.account}", name="Calendar")]


def test_admin_lists_organisations_with_their_users_health_and_removes_one(
        settings: Settings, db: Database, app_client: Any, make_token: Any) -> None:
    users = [{"id": u, "name": u, "email": f"{u}@contoso.com", "timezone": "UTC"}
             for u in ("a", "b", "c", "d")]
    assert import_document(db, {"users": users}).ok
    with db.session() as s:  # d signed in to their own mailbox before: they keep that
        s.add(Connection(user_id="d", provider="outlook", account="d@contoso.com",
                         settings={}))
    tid, _ = save_tenant(settings, db, "outlook", "contoso-tenant-id",
                         {"mode": "app_only", "client_secret": "s3cret-value-xyz"},
                         ["contoso.com"], NOW)
    report = onboard(settings, db, tid, NOW, discover)
    assert len(report.connected) == 2 and set(report.refused) == {"b"}
    assert report.own == ["d"]

    for role in ("admin", "dispatcher"):
        resp = app_client.get("/api/tenants",
                              headers={"Authorization": f"Bearer {make_token(role)}"})
        assert resp.status_code == 200, resp.text
        [tenant] = resp.json()["tenants"]
        assert tenant["domains"] == ["contoso.com"] and tenant["users"] == 3
        assert tenant["health"] == {"ok": 2, "error": 1}
        [bad] = [c for c in tenant["connections"] if c["status"] == "error"]
        assert bad["user_id"] == "b" and "Exchange admin" in bad["last_error"]
        assert "s3cret-value-xyz" not in resp.text
    user = make_token("user", "a")
    assert app_client.get("/api/tenants",
                          headers={"Authorization": f"Bearer {user}"}).status_code == 403
    dispatcher = make_token("dispatcher")
    assert app_client.delete(f"/api/tenants/{tenant['id']}", headers={
        "Authorization": f"Bearer {dispatcher}"}).status_code == 403
    assert app_client.delete("/api/tenants/org_nope", headers={
        "Authorization": f"Bearer {make_token('admin')}"}).status_code == 404
    resp = app_client.delete(f"/api/tenants/{tenant['id']}",
                             headers={"Authorization": f"Bearer {make_token('admin')}"})
    assert resp.status_code == 204
    with db.read_session() as s:
        assert [c.user_id for c in s.scalars(select(Connection))] == ["d"]


def test_a_user_who_disconnects_their_organisation_connection_stays_out(
        settings: Settings, db: Database, app_client: Any, make_token: Any) -> None:
    users = [{"id": u, "name": u, "email": f"{u}@contoso.com", "timezone": "UTC"}
             for u in ("a", "c")]
    assert import_document(db, {"users": users}).ok
    tid, _ = save_tenant(settings, db, "outlook", "contoso-tenant-id",
                         {"mode": "app_only", "client_secret": "s3cret-value-xyz"},
                         ["contoso.com"], NOW)
    assert sorted(onboard(settings, db, tid, NOW, discover).connected) == ["a", "c"]
    with db.read_session() as s:
        mine = s.scalar(select(Connection.public_id).where(Connection.user_id == "a"))
    resp = app_client.delete(f"/api/connections/{mine}",
                             headers={"Authorization": f"Bearer {make_token('user', 'a')}"})
    assert resp.status_code == 200, resp.text

    again = onboard(settings, db, tid, NOW, discover)
    assert again.connected == [] and again.left_out == ["a"] and again.already == 1
    [tenant] = app_client.get("/api/tenants", headers={
        "Authorization": f"Bearer {make_token('admin')}"}).json()["tenants"]
    assert tenant["left_out"] == ["a"] and tenant["users"] == 1


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migration_0013_adds_left_out_with_an_empty_list_for_existing_tenants(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    db = make_db(kind, tmp_path, request)
    try:
        alembic_to(db, "downgrade", "0012")
        assert "left_out" not in {c["name"] for c in inspect(db.engine).get_columns("tenants")}
        with db.engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO tenants (public_id, provider, name, domains, credentials, status, "
                "created_at, updated_at) VALUES ('org_x', 'outlook', 't', '[]', :c, 'ok', :t, :t)"),
                {"c": b"x", "t": NOW})
        upgrade(db.engine)
        with db.read_session() as s:
            assert s.scalar(select(Tenant.left_out)) == []
    finally:
        upgrade(db.engine)
        db.dispose()
