"""Serving feeds over HTTP: the link lifecycle, 404s that look alike, conditional GET,
HEAD, gzip, and the last-fetch time."""

from __future__ import annotations

import datetime as dt
import gzip
from urllib.parse import urlsplit

import pytest

import calsync.api.feeds as feeds_api
from calsync.db.models import User
from calsync.feeds import ics
from tests.test_feed_parsers import DOC

UTC = dt.timezone.utc


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def admin(app_client, make_token):  # type: ignore[no-untyped-def]
    headers = _auth(make_token("admin"))
    for user in DOC["users"]:
        assert app_client.put(f"/api/users/{user['id']}", json=user, headers=headers).status_code == 201
    job = {k: v for k, v in DOC["jobs"][0].items() if k != "id"}
    assert app_client.put("/api/jobs/j1", json=job, headers=headers).status_code == 201
    return headers


def _issue(client, headers, user_id: str = "u1") -> str:  # type: ignore[no-untyped-def]
    r = client.post(f"/api/users/{user_id}/feed", headers=headers)
    assert r.status_code == 200, r.text
    url = r.json()["url"]
    assert url.startswith("http://127.0.0.1:8080/feeds/") and url.endswith(".ics")
    return urlsplit(url).path


def test_link_lifecycle_issue_fetch_regenerate_revoke(app_client, admin) -> None:
    path = _issue(app_client, admin)
    r = app_client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/calendar; charset=utf-8"
    assert "UID:job-j1@calsync" in ics.unfold(r.text)
    new_path = _issue(app_client, admin)  # regenerate: the old link dies at once
    assert new_path != path
    assert app_client.get(path).status_code == 404
    assert app_client.get(new_path).status_code == 200
    r = app_client.delete("/api/users/u1/feed", headers=admin)
    assert r.status_code == 200 and r.json()["revoked"] is True
    assert app_client.get(new_path).status_code == 404
    assert app_client.head(new_path).status_code == 404


def test_a_user_may_manage_only_their_own_link(app_client, admin, make_token) -> None:
    own = _auth(make_token("user", "u1"))
    assert app_client.post("/api/users/u1/feed", headers=own).status_code == 200
    assert app_client.post("/api/users/u2/feed", headers=own).status_code == 403
    assert app_client.post("/api/users/u1/feed").status_code == 401


def test_bad_tokens_and_unknown_users_get_the_same_404(app_client, admin, monkeypatch) -> None:
    path = _issue(app_client, admin)
    other = _issue(app_client, admin, "u2")
    prefix, token = path.rsplit("/", 1)
    token = token[:-len(".ics")]
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    checked: list[tuple[str | None, str]] = []
    real = feeds_api.check_feed_token

    def spy(secret, user, tok):  # type: ignore[no-untyped-def]
        checked.append((user.id if user is not None else None, tok))
        return real(secret, user, tok)

    monkeypatch.setattr(feeds_api, "check_feed_token", spy)
    bad = [f"{prefix}/{flipped}.ics", f"{prefix}/{token[:-2]}.ics", f"{prefix}/{token}x.ics",
           f"/feeds/nobody/{token}.ics", f"/feeds/u1/{other.rsplit('/', 1)[1]}",
           f"{prefix}/.ics"]
    bodies = []
    for p in bad:
        r = app_client.get(p)
        assert r.status_code == 404, p
        bodies.append(r.content)
    assert len(set(bodies)) == 1
    assert bodies[0] == b'{"error":"not_found","detail":"no such feed"}'
    # the unknown user went through the same constant-time check as a bad token
    assert (None, token) in checked
    assert app_client.get(f"{prefix}/{token}").status_code == 404  # no .ics suffix


def test_tokens_are_not_logged(app_client, admin, caplog) -> None:
    path = _issue(app_client, admin)
    token = path.rsplit("/", 1)[1][:-4]
    caplog.set_level("DEBUG")
    app_client.get(path)
    app_client.get(path.replace(token, token[::-1]))
    server_lines = [r.getMessage() for r in caplog.records if not r.name.startswith("httpx")]
    assert any("feed 404 for '/feeds/u1/" in line for line in server_lines)
    assert not [line for line in server_lines if token in line or token[::-1] in line]


def test_conditional_get_304_then_change_then_new_etag(app_client, admin) -> None:
    path = _issue(app_client, admin)
    r1 = app_client.get(path)
    etag, last_modified = r1.headers["etag"], r1.headers["last-modified"]
    assert etag.startswith('"') and not etag.startswith("W/")
    r = app_client.get(path, headers={"If-None-Match": etag})
    assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == etag
    r = app_client.get(path, headers={"If-Modified-Since": last_modified})
    assert r.status_code == 304
    r = app_client.get(path, headers={"If-None-Match": '"something-else"',
                                      "If-Modified-Since": last_modified})
    assert r.status_code == 200  # If-None-Match wins over If-Modified-Since
    job = {k: v for k, v in DOC["jobs"][0].items() if k != "id"}
    job["notes"] = "Moved to the back door"
    assert app_client.put("/api/jobs/j1", json=job, headers=admin).json()["result"] == "updated"
    r2 = app_client.get(path, headers={"If-None-Match": etag})
    assert r2.status_code == 200 and r2.headers["etag"] != etag
    assert "Moved to the back door" in ics.unfold(r2.text)
    assert "SEQUENCE:1" in r2.text
    r = app_client.get(path, headers={"If-Modified-Since": last_modified})
    assert r.status_code == 200  # Last-Modified moved forward with the change
    r = app_client.get(path, headers={"If-None-Match": r2.headers["etag"]})
    assert r.status_code == 304


def test_head_has_the_headers_of_get_and_no_body(app_client, admin) -> None:
    path = _issue(app_client, admin)
    g = app_client.get(path)
    h = app_client.head(path)
    assert h.status_code == 200 and h.content == b""
    for name in ("etag", "last-modified", "content-type"):
        assert h.headers[name] == g.headers[name]
    assert h.headers["content-length"] == g.headers["content-length"]
    assert app_client.head(path, headers={"If-None-Match": g.headers["etag"]}).status_code == 304


def test_gzip_when_asked(app_client, admin) -> None:
    path = _issue(app_client, admin)
    plain = app_client.get(path, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    with app_client.stream("GET", path, headers={"Accept-Encoding": "gzip"}) as r:
        raw = b"".join(r.iter_raw())
        assert r.headers["content-encoding"] == "gzip"
        assert r.headers["vary"] == "Accept-Encoding"
        zipped_etag = r.headers["etag"]
    assert gzip.decompress(raw) == plain.content
    assert zipped_etag != plain.headers["etag"]  # a strong tag per representation
    r = app_client.get(path, headers={"Accept-Encoding": "gzip", "If-None-Match": zipped_etag})
    assert r.status_code == 304
    r = app_client.get(path, headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in r.headers


def _age_memory(minutes: int) -> None:
    """Feeds held in memory remember when their fetch time was last written (a monotonic
    clock of the serving process): move it back as if ``minutes`` had passed."""
    from calsync.feeds import memo as memo_module

    for memo in list(memo_module._memos.values()):
        for entry in list(memo._entries.values()):
            entry.fetch_recorded -= minutes * 60


def test_last_fetch_is_recorded_at_most_once_a_minute(app_client, admin, db) -> None:
    path = _issue(app_client, admin)
    assert app_client.get("/api/users/u1", headers=admin).json()["feed_last_fetched_at"] is None
    app_client.get(path)
    first = app_client.get("/api/users/u1", headers=admin).json()["feed_last_fetched_at"]
    assert first is not None
    recent = dt.datetime.now(UTC) - dt.timedelta(seconds=30)
    with db.session() as s:  # through the ORM, as the app writes users (serving drops its copy)
        s.get(User, "u1").feed_last_fetched_at = recent
    app_client.get(path)
    with db.session() as s:
        assert s.get(User, "u1").feed_last_fetched_at == recent  # < 60 s: not written
    old = dt.datetime.now(UTC) - dt.timedelta(minutes=5)
    with db.session() as s:
        s.get(User, "u1").feed_last_fetched_at = old
    _age_memory(minutes=5)  # the serving process's own clock of its last write, too
    app_client.get(path)
    with db.session() as s:
        assert s.get(User, "u1").feed_last_fetched_at > old + dt.timedelta(minutes=4)


def test_a_change_is_served_at_once_even_before_the_scheduler_runs(app_client, admin) -> None:
    path = _issue(app_client, admin)
    assert "Springfield" not in app_client.get(path).text
    block = {"user": "u1", "title": "Springfield visit", "start": "2026-11-27T13:00:00-06:00",
             "end": "2026-11-27T14:00:00-06:00"}
    assert app_client.put("/api/blocks/b9", json=block, headers=admin).status_code == 201
    assert "SUMMARY:Springfield visit" in app_client.get(path).text
    assert app_client.delete("/api/blocks/b9", headers=admin).status_code == 200
    assert "Springfield visit" not in app_client.get(path).text
