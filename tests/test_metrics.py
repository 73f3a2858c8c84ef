"""GET /metrics (prometheus-client exposition) on SQLite and PostgreSQL: sync runs and
durations by provider and outcome, provider requests by status, throttling with
Retry-After, lease takeovers, queue depth and the oldest overdue wait, bookings, and
``calsync_feeds_dirty`` counting only feeds that will be rendered. Counters are process-wide,
so each test compares readings before and after what it does."""

from __future__ import annotations

import datetime as dt
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from calsync.config import Settings
from calsync.db.models import Connection, FeedCache, User
from calsync.db.session import Database
from calsync.errors import Throttled
from calsync.sync.runner import run_due_syncs
from tests.test_sync_runner import add_connection, add_user

UTC = dt.timezone.utc
Key = tuple[str, tuple[tuple[str, str], ...]]


def scrape(client: Any) -> dict[Key, float]:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    out: dict[Key, float] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(readings: dict[Key, float], name: str, **labels: str) -> float:
    return readings.get((name, tuple(sorted(labels.items()))), 0.0)


def test_sync_runs_durations_requests_and_throttling(app_client, db: Database,
                                                     settings: Settings) -> None:
    add_user(db)
    ok_id, server, _ = add_connection(db, settings)
    server.fail_next("changes", Throttled("slow down", retry_after=2))
    before = scrape(app_client)
    results = run_due_syncs(settings, db, dt.datetime.now(UTC), sleep=lambda _s: None)
    assert [r.status for r in results] == ["ok"]
    after = scrape(app_client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("calsync_sync_runs_total", provider="memory", status="ok") == 1
    assert delta("calsync_sync_duration_seconds_count", provider="memory", status="ok") == 1
    assert delta("calsync_sync_duration_seconds_sum", provider="memory", status="ok") > 0
    # the memory connector's requests: one throttled, then the retries and the rest ok
    assert delta("calsync_provider_requests_total", provider="memory", status="throttled") == 1
    assert delta("calsync_provider_requests_total", provider="memory", status="ok") >= 2
    assert delta("calsync_provider_throttled_total", provider="memory") == 1
    assert delta("calsync_provider_retry_after_seconds_count", provider="memory") == 1
    assert delta("calsync_provider_retry_after_seconds_sum", provider="memory") == 2
    assert ok_id == results[0].connection_id


def test_queue_depth_oldest_overdue_and_lease_takeovers(app_client, db: Database,
                                                        settings: Settings) -> None:
    add_user(db)
    now = dt.datetime.now(UTC).replace(microsecond=0)
    ids = [add_connection(db, settings)[0] for _ in range(3)]
    with db.session() as s:
        for cid, due in zip(ids, (10, 3, -5)):  # minutes ago (the last: not yet due)
            conn = s.get(Connection, cid)
            assert conn is not None
            conn.next_sync_at = now - dt.timedelta(minutes=due)
    stuck = add_connection(db, settings)[0]
    with db.session() as s:
        conn = s.get(Connection, stuck)
        assert conn is not None
        conn.status = "needs_reauth"  # waits for the user, not for a worker
        conn.next_sync_at = now - dt.timedelta(hours=5)
        first = s.get(Connection, ids[0])
        assert first is not None  # leased by a worker whose lease ran out
        first.lease_owner, first.lease_until = "elsewhere:1:dead", now - dt.timedelta(minutes=1)
    readings = scrape(app_client)
    assert value(readings, "calsync_sync_queue_depth") == 2
    assert 600 <= value(readings, "calsync_sync_oldest_overdue_seconds") < 900
    before = value(readings, "calsync_lease_takeovers_total", reason="expired")
    results = run_due_syncs(settings, db, now, sleep=lambda _s: None)
    assert sorted(r.connection_id for r in results) == sorted(ids[:2])
    readings = scrape(app_client)
    assert value(readings, "calsync_lease_takeovers_total", reason="expired") == before + 1
    assert value(readings, "calsync_sync_queue_depth") == 0
    assert value(readings, "calsync_sync_oldest_overdue_seconds") == 0


def test_feeds_dirty_counts_only_feeds_that_will_be_rendered(app_client, db: Database) -> None:
    add_user(db, "with-feed")
    add_user(db, "no-feed")
    with db.session() as s:
        user = s.get(User, "with-feed")
        assert user is not None
        user.feed_enabled = True
        for uid in ("with-feed", "no-feed"):
            row = s.get(FeedCache, uid)
            if row is None:
                s.add(FeedCache(user_id=uid, dirty=True))
            else:
                row.dirty = True
    # the user without a feed stays dirty until a feed is issued: that is no backlog
    assert value(scrape(app_client), "calsync_feeds_dirty") == 1
    from calsync.worker import refresh_feeds_job

    refresh_feeds_job(app_client.app.state.settings, db)
    assert value(scrape(app_client), "calsync_feeds_dirty") == 0
    with db.read_session() as s:
        row = s.get(FeedCache, "no-feed")
        assert row is not None and row.dirty  # still waiting for its feed to be issued


def test_bookings_are_counted_by_outcome(app_client, db: Database, make_token) -> None:
    from tests.test_availability_api import MON, auth, put_job, seed_users, user

    seed_users(db, user("u1"))
    put_job(db, "j1", f"{MON}T09:00:00-06:00", f"{MON}T10:00:00-06:00", "u1")
    admin = auth(make_token("admin"))
    before = scrape(app_client)
    body = {"title": "Splice", "job_type": "Repair", "account": "Acme", "assignees": ["u1"]}
    busy = app_client.post("/api/bookings", headers=admin, json={
        **body, "id": "b1", "start": f"{MON}T09:30:00-06:00", "end": f"{MON}T10:30:00-06:00"})
    assert busy.status_code == 409
    booked = app_client.post("/api/bookings", headers=admin, json={
        **body, "id": "b2", "start": f"{MON}T11:00:00-06:00", "end": f"{MON}T12:00:00-06:00"})
    assert booked.status_code == 201, booked.text
    after = scrape(app_client)
    for outcome in ("conflict", "created"):
        assert value(after, "calsync_bookings_total", outcome=outcome) \
            - value(before, "calsync_bookings_total", outcome=outcome) == 1
