"""The platform API: upserts, errors as JSON, and the role matrix."""

from __future__ import annotations

import pytest

from tests.test_import import DOC


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_upserts_are_idempotent_and_report_outcome(app_client, make_token) -> None:
    admin = _auth(make_token("admin"))
    r = app_client.put("/api/users/u1", json=DOC["users"][0], headers=admin)
    assert r.status_code == 201 and r.json()["result"] == "created"
    r = app_client.put("/api/users/u1", json=DOC["users"][0], headers=admin)
    assert r.status_code == 200 and r.json()["result"] == "unchanged"
    app_client.put("/api/users/u2", json=DOC["users"][1], headers=admin)
    job = {k: v for k, v in DOC["jobs"][0].items() if k != "id"}
    assert app_client.put("/api/jobs/j1", json=job, headers=admin).status_code == 201
    assert app_client.put("/api/jobs/j1", json=job, headers=admin).json()["result"] == "unchanged"
    assert app_client.put("/api/time-off/t1", json=DOC["time_off"][0],
                          headers=admin).status_code == 201
    assert app_client.put("/api/blocks/b1", json=DOC["blocks"][0], headers=admin).status_code == 201
    assert app_client.delete("/api/blocks/b1", headers=admin).json()["result"] == "deleted"
    r = app_client.delete("/api/blocks/b1", headers=admin)
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_bad_body_is_a_json_error_naming_the_field(app_client, make_token) -> None:
    admin = _auth(make_token("admin"))
    r = app_client.put("/api/users/u1", json={"name": "X", "timezone": "Nowhere/City"},
                       headers=admin)
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "invalid" and body["detail"]["field"] == "timezone"
    r = app_client.put("/api/users/u1", content=b"{not json", headers={
        **admin, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "invalid"
    r = app_client.put("/api/users/u1", json={**DOC["users"][0], "id": "other"}, headers=admin)
    assert r.status_code == 422 and r.json()["detail"]["field"] == "id"


@pytest.mark.parametrize("path, body, typo, meant", [
    ("/api/users/u1", DOC["users"][0], "timezon", "timezone"),
    ("/api/jobs/j1", DOC["jobs"][0], "locaton", "location"),
    ("/api/time-off/t1", DOC["time_off"][0], "reasn", "reason"),
    ("/api/blocks/b1", DOC["blocks"][0], "titel", "title"),
])
def test_unknown_body_field_is_422_naming_the_field(app_client, make_token, path, body, typo,
                                                     meant) -> None:
    admin = _auth(make_token("admin"))
    for user in DOC["users"]:
        app_client.put(f"/api/users/{user['id']}", json=user, headers=admin)
    r = app_client.put(path, json={**body, typo: "x"}, headers=admin)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid"
    assert r.json()["detail"]["field"] == typo
    assert f"did you mean {meant!r}" in r.json()["detail"]["error"]
    # nothing of the rejected body was written
    if not path.startswith("/api/users/"):
        assert app_client.delete(path, headers=admin).status_code == 404
    r = app_client.put(path, json={**body, "colour": "red"}, headers=admin)
    assert r.status_code == 422 and r.json()["detail"]["field"] == "colour"
    assert r.json()["detail"]["error"].startswith("unknown field; expected ")


def test_booking_with_an_unknown_field_is_422_naming_it(app_client, make_token) -> None:
    admin = _auth(make_token("admin"))
    for user in DOC["users"]:
        app_client.put(f"/api/users/{user['id']}", json=user, headers=admin)
    r = app_client.post("/api/bookings", json={**DOC["jobs"][0], "asignees": ["u1"]},
                        headers=admin)
    assert r.status_code == 422 and r.json()["detail"]["field"] == "asignees"


@pytest.mark.parametrize("path, body, typo", [
    ("/api/availability/check", {"user_ids": ["u1"], "start": "2026-11-24T09:00:00-06:00",
                                 "end": "2026-11-24T10:00:00-06:00"}, "user_id"),
    ("/api/availability/search", {"user_ids": ["u1"], "duration_minutes": 30,
                                  "start": "2026-11-24T08:00:00-06:00",
                                  "end": "2026-11-24T17:00:00-06:00"}, "duration"),
])
def test_availability_body_with_an_unknown_field_is_422_naming_it(app_client, make_token, path,
                                                                  body, typo) -> None:
    admin = _auth(make_token("admin"))
    app_client.put("/api/users/u1", json=DOC["users"][0], headers=admin)
    assert app_client.post(path, json=body, headers=admin).status_code == 200
    r = app_client.post(path, json={**body, typo: "x"}, headers=admin)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid" and r.json()["detail"]["field"] == typo


@pytest.mark.parametrize("role, expected", [("admin", 201), ("dispatcher", 403), ("user", 403)])
def test_only_admin_writes_schedule(app_client, make_token, role, expected) -> None:
    admin = _auth(make_token("admin"))
    app_client.put("/api/users/u1", json=DOC["users"][0], headers=admin)
    token = make_token(role, "u1" if role == "user" else None)
    r = app_client.put("/api/blocks/b1", json=DOC["blocks"][0], headers=_auth(token))
    assert r.status_code == expected


def test_missing_and_bad_tokens_are_401(app_client) -> None:
    assert app_client.put("/api/users/u1", json=DOC["users"][0]).status_code == 401
    r = app_client.put("/api/users/u1", json=DOC["users"][0], headers=_auth("cst_nope"))
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"


def test_feed_link_roles(app_client, make_token) -> None:
    admin = _auth(make_token("admin"))
    for u in DOC["users"]:
        app_client.put(f"/api/users/{u['id']}", json=u, headers=admin)
    own = _auth(make_token("user", "u1"))
    assert app_client.post("/api/users/u1/feed", headers=own).status_code == 200
    assert app_client.post("/api/users/u2/feed", headers=own).status_code == 403
    disp = _auth(make_token("dispatcher"))
    assert app_client.post("/api/users/u1/feed", headers=disp).status_code == 403
    assert app_client.get("/api/users/u1", headers=disp).status_code == 200
    assert app_client.post("/api/users/nobody/feed", headers=admin).status_code == 404


def test_tokens_are_stored_hashed(db, make_token) -> None:
    from sqlalchemy import select

    from calsync.db.models import ApiToken

    token = make_token("admin")
    with db.session() as s:
        rows = s.scalars(select(ApiToken)).all()
        assert all(token not in (r.token_hash, r.prefix) for r in rows)


def test_healthz_and_metrics(app_client) -> None:
    assert app_client.get("/healthz").json() == {"status": "ok"}
    assert "calsync_users 0" in app_client.get("/metrics").text


def test_openapi_lists_the_contract_endpoints(app_client) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. duplicate operation ids
        spec = app_client.get("/openapi.json").json()
    paths = spec["paths"]
    for path, methods in {
        "/feeds/{user_id}/{token}.ics": {"get", "head"},
        "/api/users/{user_id}": {"put", "delete"},
        "/api/jobs/{item_id}": {"put", "delete"},
        "/api/time-off/{item_id}": {"put", "delete"},
        "/api/blocks/{item_id}": {"put", "delete"},
        "/api/users/{user_id}/feed": {"post", "delete"},
        "/api/schedule": {"get"},
        "/api/availability/check": {"post"},
        "/api/availability/search": {"post"},
        "/api/bookings": {"post"},
        "/api/tokens": {"get"},
        "/api/tokens/{token_id}": {"delete"},
        "/healthz": {"get"},
        "/metrics": {"get"},
    }.items():
        assert methods <= set(paths[path]), (path, sorted(paths[path]))
