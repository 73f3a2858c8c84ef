"""Sign-in to the pages by one-use login link; sessions, CSRF and sign-out (DESIGN 4.6),
on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading

from sqlalchemy import select, update

from calsync.db.models import AuditEntry, LoginLink, WebSession
from calsync.schedule.store import import_document
from calsync.web.sessions import hash_secret
from tests.web_client import csrf_of, login_link, path_of, sign_in

USERS = {"users": [{"id": "u1", "name": "Jane Doe", "timezone": "America/Chicago"},
                   {"id": "u2", "name": "Sam Roe", "timezone": "UTC"}]}


def _setup(db, make_token) -> str:  # type: ignore[no-untyped-def]
    assert import_document(db, USERS).ok
    return str(make_token("admin"))


def test_login_link_is_admin_only_and_validated(db, app_client, make_token) -> None:
    admin = _setup(db, make_token)
    for role, uid in (("dispatcher", None), ("user", "u1")):
        r = app_client.post("/api/login-links", json={"user_id": "u1"},
                            headers={"Authorization": f"Bearer {make_token(role, uid)}"})
        assert r.status_code == 403, r.text
    h = {"Authorization": f"Bearer {admin}"}
    bad = [({"user_id": "nobody"}, 404, None), ({}, 422, "role"),
           ({"role": "dispatcher"}, 422, "name"), ({"role": "admin", "name": "x"}, 422, "role"),
           ({"role": "dispatcher", "name": "D", "user_id": "u1"}, 422, "user_id"),
           ({"user_id": "u1", "extra": 1}, 422, "extra"), ([1], 422, "*")]
    for body, status, field in bad:
        r = app_client.post("/api/login-links", json=body, headers=h)
        assert r.status_code == status, (body, r.text)
        if field is not None:
            assert r.json()["detail"]["field"] == field, r.json()
    r = app_client.post("/api/login-links", json={"user_id": "u1"}, headers=h)
    assert r.status_code == 201
    body = r.json()
    assert body["url"].startswith("http://127.0.0.1:8080/app/sign-in/")
    expires = dt.datetime.fromisoformat(body["expires_at"])
    left = expires - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(minutes=14) < left <= dt.timedelta(minutes=15)
    token = body["url"].rsplit("/", 1)[1]
    with db.session() as s:
        rows = list(s.scalars(select(LoginLink)))
        audit = [a.action for a in s.scalars(select(AuditEntry))]
    assert len(rows) == 1 and rows[0].token_hash == hash_secret(token)
    assert token not in repr([vars(r) for r in rows])  # only the hash is stored
    assert "login_link.create" in audit
    assert "/api/login-links" in app_client.get("/openapi.json").json()["paths"]


def test_link_works_once_and_sets_a_safe_cookie(db, app_client, make_token) -> None:
    admin = _setup(db, make_token)
    path = path_of(login_link(app_client, admin, {"user_id": "u1"}))
    r = app_client.get(path, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/app/settings"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/app" in cookie
    assert "Secure" not in cookie  # plain http on loopback
    session_id = cookie.split(";")[0].split("=", 1)[1]
    with db.session() as s:
        stored = [w.session_hash for w in s.scalars(select(WebSession))]
    assert stored == [hash_secret(session_id)]
    page = app_client.get("/app/settings")
    assert page.status_code == 200 and "Calendar settings" in page.text
    assert session_id not in page.text
    again = app_client.get(path, follow_redirects=False)
    assert again.status_code == 400 and "already used or has expired" in again.text
    assert "set-cookie" not in again.headers


def test_dispatcher_link_lands_on_the_board(db, app_client, make_token) -> None:
    admin = _setup(db, make_token)
    path = path_of(login_link(app_client, admin, {"role": "dispatcher", "name": "Dana"}))
    r = app_client.get(path, follow_redirects=False)
    assert r.headers["location"] == "/app/dispatch"
    board = app_client.get("/app/dispatch")
    assert board.status_code == 200 and "Signed in as Dana" in board.text
    # Each page is for its role only.
    assert app_client.get("/app/settings").status_code == 403
    assert app_client.get("/app/", follow_redirects=False).headers["location"] == "/app/dispatch"


def test_expired_link_is_refused(db, app_client, make_token) -> None:
    admin = _setup(db, make_token)
    path = path_of(login_link(app_client, admin, {"user_id": "u1"}))
    with db.session() as s:
        s.execute(update(LoginLink).values(
            expires_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)))
    r = app_client.get(path, follow_redirects=False)
    assert r.status_code == 400 and "set-cookie" not in r.headers
    assert app_client.get("/app/settings").status_code == 401


def test_two_browsers_racing_for_one_link_get_one_session(db, app_client, make_token) -> None:
    admin = _setup(db, make_token)
    path = path_of(login_link(app_client, admin, {"user_id": "u1"}))
    from calsync.web.sessions import LoginLinkInvalid, redeem_login_link

    token = path.rsplit("/", 1)[1]
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def redeem() -> None:
        barrier.wait()
        try:
            redeem_login_link(db, token, dt.datetime.now(dt.timezone.utc))
            outcomes.append("ok")
        except LoginLinkInvalid:
            outcomes.append("refused")

    threads = [threading.Thread(target=redeem) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ok", "refused", "refused", "refused"]
    with db.session() as s:
        assert len(list(s.scalars(select(WebSession)))) == 1


def test_every_form_needs_its_csrf_token(db, app_client, make_token) -> None:
    admin = _setup(db, make_token)
    page = sign_in(app_client, admin, {"user_id": "u1"}).text
    token = csrf_of(page)
    tampered = token[:-1] + ("1" if token[-1] == "0" else "0")
    for data in ({}, {"csrf_token": "x" * 64}, {"csrf_token": tampered}):
        r = app_client.post("/app/settings/feed/on", data=data, follow_redirects=False)
        assert r.status_code == 403, data
        assert "security token" in r.text
    with db.session() as s:
        assert not s.scalar(select(WebSession.user_id).where(WebSession.user_id == "x"))
    r = app_client.get("/api/users/u1", headers={"Authorization": f"Bearer {admin}"})
    assert r.json()["feed_enabled"] is False  # nothing changed
    r = app_client.post("/app/settings/feed/on", data={"csrf_token": token},
                        follow_redirects=False)
    assert r.status_code == 303
    assert app_client.get("/api/users/u1",
                          headers={"Authorization": f"Bearer {admin}"}).json()["feed_enabled"]
    # Another session's token does not fit this session.
    other = app_client.__class__(app_client.app)
    other_page = sign_in(other, admin, {"user_id": "u1"}).text
    assert csrf_of(other_page) != token
    r = app_client.post("/app/settings/feed/off", data={"csrf_token": csrf_of(other_page)},
                        follow_redirects=False)
    assert r.status_code == 403


def test_sign_out_ends_the_session(db, app_client, make_token) -> None:
    admin = _setup(db, make_token)
    token = csrf_of(sign_in(app_client, admin, {"user_id": "u1"}).text)
    cookie = app_client.cookies.get("calsync_session")
    r = app_client.post("/app/sign-out", data={"csrf_token": token}, follow_redirects=False)
    assert r.status_code == 200 and "signed out" in r.text.lower()
    assert 'calsync_session=""' in r.headers["set-cookie"] or "Max-Age=0" in \
        r.headers["set-cookie"]
    with db.session() as s:
        assert list(s.scalars(select(WebSession))) == []
    # The old cookie is dead even if a browser kept it.
    app_client.cookies.set("calsync_session", cookie, path="/app")
    assert app_client.get("/app/settings").status_code == 401


def test_session_of_a_deleted_user_ends(db, app_client, make_token) -> None:
    admin = _setup(db, make_token)
    sign_in(app_client, admin, {"user_id": "u2"})
    r = app_client.delete("/api/users/u2", headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 200
    assert app_client.get("/app/settings").status_code == 401


def test_pages_and_assets_are_served_locally(db, app_client, make_token) -> None:
    admin = _setup(db, make_token)
    page = sign_in(app_client, admin, {"user_id": "u1"})
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert page.headers["cache-control"] == "no-store"
    assert "http://" not in page.text.replace("http://127.0.0.1:8080", "") \
        .replace("https://cloud.example.com", "")
    for name, kind in (("calsync.css", "text/css"), ("calsync.js", "text/javascript")):
        r = app_client.get(f"/app/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert f"/app/static/{name}" in page.text
    assert app_client.get("/app/static/..%2Fviews%2Fsettings.py").status_code == 404
    assert app_client.get("/app/static/nothing.js").status_code == 404


def test_secure_cookie_under_https(db, settings, make_token) -> None:
    from dataclasses import replace

    from fastapi.testclient import TestClient

    from calsync.api.app import create_app

    admin = _setup(db, make_token)
    https = replace(settings, server=replace(settings.server, base_url="https://cal.example.com"))
    with TestClient(create_app(https, db), base_url="https://cal.example.com") as client:
        url = login_link(client, admin, {"user_id": "u1"})
        assert url.startswith("https://cal.example.com/app/sign-in/")
        r = client.get(path_of(url), follow_redirects=False)
        assert "Secure" in r.headers["set-cookie"]
