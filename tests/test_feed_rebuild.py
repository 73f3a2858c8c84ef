"""The bulk rebuild gives the bytes a fresh render gives (through the feed route), leaves
feeds whose sources did not change as they are, tells the serving memory about the feeds
it changed, and migration 0010 adds and drops the source digest on both engines."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, inspect, select, text, update

from calsync.api.app import create_app
from calsync.db.models import FeedCache, ScheduleItem, User
from calsync.db.session import Database, upgrade
from calsync.feeds import ics
from calsync.feeds.links import feed_url
from calsync.feeds.memo import note_feeds_changed
from calsync.feeds.service import current_feed, feed_window, rebuild_all_feeds, render_users
from calsync.schedule.records import parse_job
from calsync.schedule.store import delete_item, import_document, upsert_item
from tests.conftest import alembic_to, make_db

UTC = dt.timezone.utc
USERS = ["u1", "u2", "u3", "u4"]
PLAIN = {"Accept-Encoding": "identity"}


def _iso(value: dt.datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _document(settings: Any, now: dt.datetime) -> dict[str, Any]:
    """Items of every kind, shared jobs, and two at the window's edges: one that leaves
    the window a day after ``now - 1 day`` and one that enters it."""
    start, end = feed_window(settings, now - dt.timedelta(days=1))
    day = dt.timedelta(days=1)
    base = now.replace(hour=15, minute=0, second=0, microsecond=0)
    jobs: list[dict[str, Any]] = [
        {"id": f"j{i}", "title": f"Job {i}", "job_type": "Install",
         "account": f"Acme {i}; Müller & Söhne 😀", "location": f"{i} Main St, Suite 5",
         "notes": "Gate code; call ahead, 光ファイバー\nSecond line " * (i % 3),
         "start": _iso(base + i * day), "end": _iso(base + i * day + dt.timedelta(hours=2)),
         "assignees": [USERS[i % 3]] + (["u3"] if i % 4 == 0 else []),
         "timezone": ("America/Chicago", "Europe/Berlin", "UTC")[i % 3]}
        for i in range(-5, 25)]
    jobs += [
        {"id": "j-leaves", "title": "Leaves the window", "start": _iso(start - day / 2),
         "end": _iso(start + day / 2), "assignees": ["u1"]},
        {"id": "j-enters", "title": "Enters the window", "start": _iso(end + day / 2),
         "end": _iso(end + day), "assignees": ["u1", "u2"]},
        {"id": "j-gone", "title": "Deleted later", "start": _iso(base + 2 * day),
         "end": _iso(base + 2 * day + dt.timedelta(hours=1)), "assignees": ["u2"]},
    ]
    return {
        "users": [{"id": "u1", "name": "Jane Doe", "timezone": "America/Chicago"},
                  {"id": "u2", "name": "Jonas Weber", "timezone": "Europe/Berlin"},
                  {"id": "u3", "name": "Dev Patel", "timezone": "America/New_York"},
                  {"id": "u4", "name": "No Jobs", "timezone": "Asia/Tokyo"}],
        "jobs": jobs,
        "time_off": [{"id": "t-vac", "user": "u1", "start": (now + 3 * day).date().isoformat(),
                      "end": (now + 6 * day).date().isoformat(), "all_day": True,
                      "reason": "Vacation, family; 🎄"}],
        "blocks": [{"id": "b-train", "user": "u2", "title": "Training \\ safety; level 2",
                    "start": _iso(base + day), "end": _iso(base + day + dt.timedelta(hours=1))}],
    }


@pytest.fixture
def feed_settings(settings):  # type: ignore[no-untyped-def]
    return replace(settings, feeds=replace(settings.feeds, job_url_template=""))


def _load(db: Database, settings: Any, now: dt.datetime) -> None:
    report = import_document(db, _document(settings, now), now=now - dt.timedelta(days=2))
    assert report.ok, report.errors
    with db.session() as s:
        for user in s.scalars(select(User)):
            user.feed_enabled = True


def _change(db: Database, settings: Any, now: dt.datetime) -> None:
    """A changed job, a deleted one, a renamed user (u3 and u4 keep their sources)."""
    with db.session() as s:
        job = next(j for j in _document(settings, now)["jobs"] if j["id"] == "j1")
        assert upsert_item(s, parse_job({**job, "notes": "Changed; notes"}),
                           now=now - dt.timedelta(hours=2)) == "updated"
        gone = s.scalar(select(ScheduleItem).where(ScheduleItem.ext_id == "j-gone"))
        delete_item(s, gone, "test", now - dt.timedelta(hours=2))
        s.get(User, "u2").name = "Jonas W."  # type: ignore[union-attr]


def _cached(db: Database) -> dict[str, tuple[bytes, str]]:
    with db.read_session() as s:
        return {c.user_id: (bytes(c.body), c.etag) for c in s.scalars(select(FeedCache))}


def _wipe(db: Database) -> None:
    """Forget every fragment and cached feed: the next request renders from scratch."""
    with db.session() as s:
        s.execute(update(ScheduleItem).values(ics_fragment=None, fragment_key=None))
        s.execute(delete(FeedCache))
        note_feeds_changed(s, USERS)


def count_renders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ext ids of the items rendered from now on (ics.render_event counted)."""
    calls: list[str] = []
    real = ics.render_event

    def counting(item, template=""):  # type: ignore[no-untyped-def]
        calls.append(item.ext_id)
        return real(item, template)

    monkeypatch.setattr(ics, "render_event", counting)
    return calls


def test_warm_rebuild_serves_the_bytes_of_a_fresh_render(db, feed_settings, monkeypatch) -> None:
    now = dt.datetime.now(UTC)
    _load(db, feed_settings, now)
    cold = rebuild_all_feeds(feed_settings, db, now - dt.timedelta(days=1))
    assert sorted(cold.rendered) == USERS and cold.phases.unchanged == 0
    before = _cached(db)
    _change(db, feed_settings, now)
    warm = rebuild_all_feeds(feed_settings, db, now)  # the window moved a day
    assert sorted(warm.rendered) == USERS and warm.failed == []
    rebuilt = _cached(db)
    assert b"Enters the window" in rebuilt["u1"][0] and b"Leaves the window" in before["u1"][0]
    assert b"Leaves the window" not in rebuilt["u1"][0]
    assert b"Deleted later" not in rebuilt["u2"][0] and b"Jonas W." in rebuilt["u2"][0]
    assert rebuilt["u3"] == before["u3"] and rebuilt["u4"] == before["u4"]
    assert warm.phases.unchanged == 2  # u3 and u4: their sources did not change

    calls = count_renders(monkeypatch)
    with TestClient(create_app(feed_settings, db)) as client:
        with db.read_session() as s:
            paths = {u.id: "/feeds/" + feed_url(feed_settings, u).split("/feeds/", 1)[1]
                     for u in s.scalars(select(User))}
        served = {uid: client.get(path, headers=PLAIN) for uid, path in paths.items()}
        assert calls == []  # the route served what the rebuild stored
        for uid, response in served.items():
            assert response.status_code == 200
            assert (response.content, response.headers["etag"]) == rebuilt[uid], uid
        _wipe(db)
        fresh = {uid: client.get(path, headers=PLAIN) for uid, path in paths.items()}
    assert calls  # rendered from scratch this time
    for uid, response in fresh.items():
        assert response.status_code == 200
        assert response.content == served[uid].content, uid
        assert response.headers["etag"] == served[uid].headers["etag"], uid


def test_rebuilt_feeds_equal_fresh_renders_as_the_window_moves(db, feed_settings) -> None:
    now = dt.datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    _load(db, feed_settings, now)
    render_users(feed_settings, db, USERS, now - dt.timedelta(days=1))
    _change(db, feed_settings, now)
    for later in (now, now + dt.timedelta(days=40), now + dt.timedelta(days=400)):
        report = rebuild_all_feeds(feed_settings, db, later)
        assert report.failed == []
        rebuilt = _cached(db)
        _wipe(db)
        for uid in USERS:
            feed = current_feed(feed_settings, db, uid, later)
            assert (feed.body, feed.etag) == rebuilt[uid], (uid, later)


def test_a_settings_change_reaches_the_served_feed_after_the_rebuild(db, feed_settings) -> None:
    now = dt.datetime.now(UTC)
    _load(db, feed_settings, now)
    rebuild_all_feeds(feed_settings, db, now)
    with TestClient(create_app(feed_settings, db)) as client:
        with db.read_session() as s:
            path = "/feeds/" + feed_url(feed_settings, s.get(User, "u1")).split("/feeds/", 1)[1]
        first = client.get(path, headers=PLAIN)
        assert first.status_code == 200 and b"URL:" not in first.content
        assert client.get(path, headers=PLAIN).content == first.content  # now held in memory
        linked = replace(feed_settings, feeds=replace(
            feed_settings.feeds, job_url_template="https://dispatch.example/jobs/{job_id}"))
        report = rebuild_all_feeds(linked, db, now)
        assert report.phases.unchanged == 1  # u4 has no job: nothing of it changed
        second = client.get(path, headers=PLAIN)
    assert second.status_code == 200
    assert b"URL:https://dispatch.example/jobs/j1" in ics.unfold(second.content.decode()).encode()
    assert second.headers["etag"] != first.headers["etag"]


def test_a_failing_feed_is_rendered_alone_and_the_others_go_on(db, feed_settings,
                                                              monkeypatch) -> None:
    now = dt.datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    _load(db, feed_settings, now)
    real = ics.render_event

    def failing(item, template=""):  # type: ignore[no-untyped-def]
        if item.ext_id == "t-vac":  # only in u1's feed
            raise RuntimeError("boom")
        return real(item, template)

    monkeypatch.setattr(ics, "render_event", failing)
    report = rebuild_all_feeds(feed_settings, db, now)
    assert report.failed == ["u1"] and sorted(report.rendered) == ["u2", "u3", "u4"]
    with db.read_session() as s:
        u1 = s.get(FeedCache, "u1")
        assert u1 is not None and u1.dirty and u1.body is None
        assert all(s.get(FeedCache, uid).body for uid in ("u2", "u3", "u4"))  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migration_0010_adds_and_drops_the_source_digest(kind: str, tmp_path: Path,
                                                         request: pytest.FixtureRequest) -> None:
    db = make_db(kind, tmp_path, request)
    try:
        alembic_to(db, "downgrade", "0009")
        assert "source_digest" not in {c["name"] for c in inspect(db.engine)
                                       .get_columns("feed_cache")}
        with db.engine.begin() as conn:
            conn.execute(text("INSERT INTO users (id, name, timezone, working_hours, "
                              "private_mode, feed_version, feed_enabled, created_at, "
                              "updated_at) VALUES ('u1', 'Jane', 'UTC', '{}', true, 1, true, "
                              ":t, :t)"), {"t": dt.datetime(2026, 11, 1, tzinfo=UTC)})
            conn.execute(text("INSERT INTO feed_cache (user_id, dirty, body, etag, "
                              "schema_version) VALUES ('u1', false, :b, '\"x\"', 1)"),
                         {"b": b"old body"})
        upgrade(db.engine)
        with db.read_session() as s:
            row = s.get(FeedCache, "u1")
            assert row is not None and row.source_digest is None and row.body == b"old body"
    finally:
        upgrade(db.engine)  # the PostgreSQL test database is shared: leave it at head
        db.dispose()
