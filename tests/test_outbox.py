"""The transactional outbox (SQLite and PostgreSQL): an event commits or rolls back with
its change; committed events are numbered in commit order and fanned out to the endpoints
that want them; the change feed reads them with opaque cursors that survive restarts."""

from __future__ import annotations

import datetime as dt
import json
import threading

import pytest
from sqlalchemy import select

from calsync.db.models import OutboxEvent, WebhookDelivery, WebhookEndpoint
from calsync.db.session import Database
from calsync.outbox.changes import decode_cursor, encode_cursor, read_changes
from calsync.outbox.endpoints import create_endpoint, send_test_event
from calsync.outbox.events import BOOKING_CREATED, SCHEDULE_ITEM_CHANGED, emit, sequence
from calsync.schedule.store import import_document

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def _events(db: Database) -> list[OutboxEvent]:
    with db.session() as s:  # kept loaded: a write session does not expire on its end
        return list(s.scalars(select(OutboxEvent).order_by(OutboxEvent.id)))


def test_an_event_rolls_back_with_its_change_and_commits_with_it(db: Database) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with db.session() as s:
            emit(s, SCHEDULE_ITEM_CHANGED, {"id": "t1"}, NOW, order_key="item:time_off:t1")
            raise Boom
    assert _events(db) == []
    with db.session() as s:
        emit(s, SCHEDULE_ITEM_CHANGED, {"id": "t1"}, NOW, order_key="item:time_off:t1")
    (event,) = _events(db)
    assert event.payload == {"type": SCHEDULE_ITEM_CHANGED, "timestamp": NOW.isoformat(),
                             "data": {"id": "t1"}}
    assert event.public_id.startswith("msg_") and event.seq is None


def test_sequence_numbers_in_order_and_fans_out_by_event_type(db: Database, settings) -> None:
    with db.session() as s:
        all_ep, _ = create_endpoint(s, settings, "http://127.0.0.1:9/a", ["*"], "", NOW)
        bookings, _ = create_endpoint(s, settings, "http://127.0.0.1:9/b", [BOOKING_CREATED],
                                      "", NOW)
        all_id, bookings_id = all_ep.id, bookings.id
    with db.session() as s:
        emit(s, SCHEDULE_ITEM_CHANGED, {"n": 1}, NOW)
        emit(s, BOOKING_CREATED, {"n": 2}, NOW)
    with db.session() as s:
        assert sequence(s, NOW) == 2
    with db.session() as s:
        assert sequence(s, NOW) == 0  # nothing new
    assert [e.seq for e in _events(db)] == [1, 2]
    with db.read_session() as s:
        rows = s.execute(select(WebhookDelivery.endpoint_id, WebhookDelivery.seq)
                         .order_by(WebhookDelivery.endpoint_id, WebhookDelivery.seq)).all()
    assert sorted(rows) == sorted([(all_id, 1), (all_id, 2), (bookings_id, 2)])


def test_an_endpoint_gets_the_events_numbered_after_it_was_registered(db: Database,
                                                                      settings) -> None:
    with db.session() as s:
        emit(s, SCHEDULE_ITEM_CHANGED, {"n": 1}, NOW)
    with db.session() as s:
        sequence(s, NOW)
    with db.session() as s:
        ep, _ = create_endpoint(s, settings, "http://127.0.0.1:9/a", ["*"], "", NOW)
        ep_id = ep.id
        emit(s, SCHEDULE_ITEM_CHANGED, {"n": 2}, NOW)
    with db.session() as s:
        sequence(s, NOW)
    with db.read_session() as s:
        assert list(s.scalars(select(WebhookDelivery.seq)
                              .where(WebhookDelivery.endpoint_id == ep_id))) == [2]


def test_change_feed_pages_with_opaque_cursors_and_skips_test_events(db: Database,
                                                                      settings) -> None:
    with db.session() as s:
        ep, _ = create_endpoint(s, settings, "http://127.0.0.1:9/a", ["*"], "", NOW)
        for n in range(5):
            emit(s, SCHEDULE_ITEM_CHANGED, {"n": n}, NOW)
        send_test_event(s, ep.public_id, NOW)
        emit(s, BOOKING_CREATED, {"n": 5}, NOW)
    first = read_changes(db, None, 4, NOW)
    assert [c["data"]["n"] for c in first.changes] == [0, 1, 2, 3]
    assert all(c["id"].startswith("msg_") and c["type"] and c["timestamp"]
               for c in first.changes)
    assert first.next.startswith("chg_") and "4" not in first.next[4:]  # not a bare number
    second = read_changes(db, first.next, 4, NOW)
    assert [c["data"]["n"] for c in second.changes] == [4, 5]  # the test event is not here
    empty = read_changes(db, second.next, 4, NOW)
    assert empty.changes == [] and empty.next == second.next
    # a new process (another Database on the same URL) continues from the same cursor
    other = Database(db.url)
    try:
        with other.session() as s:
            emit(s, SCHEDULE_ITEM_CHANGED, {"n": 6}, NOW)
        again = read_changes(other, second.next, 10, NOW)
    finally:
        other.dispose()
    assert [c["data"]["n"] for c in again.changes] == [6]


@pytest.mark.parametrize("cursor", ["nope", "chg_!!!", encode_cursor(3)[:-1] + "*",
                                    "chg_" + "dg==", "chg_djI6Mw"])
def test_bad_cursors_are_refused_by_name(cursor: str) -> None:
    from calsync.errors import ValidationError

    with pytest.raises(ValidationError) as exc:
        decode_cursor(cursor)
    assert exc.value.field == "after" and "cursor" in exc.value.why


def test_cursor_round_trip() -> None:
    assert decode_cursor(encode_cursor(12345)) == 12345
    assert decode_cursor(None) == 0 and decode_cursor("") == 0


def test_an_event_committed_late_is_not_skipped_by_a_cursor(db: Database) -> None:
    """A transaction that wrote its event first but commits last: its event is numbered
    after the others, so a poller past them still gets it (PostgreSQL assigns ids at
    insert, not at commit; SQLite has one writer at a time, so it holds trivially)."""
    if db.dialect != "postgresql":
        with db.session() as s:
            emit(s, SCHEDULE_ITEM_CHANGED, {"n": "early"}, NOW)
        with db.session() as s:
            emit(s, SCHEDULE_ITEM_CHANGED, {"n": "late"}, NOW)
        page = read_changes(db, None, 10, NOW)
        assert [c["data"]["n"] for c in page.changes] == ["early", "late"]
        return
    wrote, release = threading.Event(), threading.Event()

    def slow_transaction() -> None:
        with db.session() as s:
            emit(s, SCHEDULE_ITEM_CHANGED, {"n": "slow"}, NOW)  # the lower id
            wrote.set()
            release.wait(10)

    t = threading.Thread(target=slow_transaction)
    t.start()
    assert wrote.wait(10)
    with db.session() as s:
        emit(s, SCHEDULE_ITEM_CHANGED, {"n": "fast"}, NOW)
    page = read_changes(db, None, 10, NOW)
    assert [c["data"]["n"] for c in page.changes] == ["fast"]
    release.set()
    t.join(10)
    later = read_changes(db, page.next, 10, NOW)
    assert [c["data"]["n"] for c in later.changes] == ["slow"]


def test_platform_api_changes_echo_nothing(app_client, make_token, db: Database) -> None:
    """The platform's own upserts and deletes through the API are not sent back."""
    admin = {"Authorization": f"Bearer {make_token('admin')}"}
    assert app_client.put("/api/users/u1", headers=admin, json={
        "name": "Jane", "timezone": "UTC"}).status_code == 201
    assert app_client.put("/api/time-off/t1", headers=admin, json={
        "user": "u1", "start": "2026-12-24", "end": "2026-12-27", "all_day": True,
        "reason": "Vacation"}).status_code == 201
    assert app_client.put("/api/jobs/j1", headers=admin, json={
        "title": "Install", "start": "2026-12-02T09:00:00Z", "end": "2026-12-02T10:00:00Z",
        "assignees": ["u1"]}).status_code == 201
    assert app_client.delete("/api/time-off/t1", headers=admin).status_code == 200
    assert import_document(db, {"blocks": [{"id": "b1", "user": "u1", "title": "Training",
                                            "start": "2026-12-03T09:00:00Z",
                                            "end": "2026-12-03T10:00:00Z"}]}).ok
    assert _events(db) == []
    body = app_client.get("/api/changes", headers=admin).json()
    assert body["changes"] == [] and body["next"].startswith("chg_")


def test_change_feed_api_roles_and_bad_input(app_client, make_token, db: Database) -> None:
    admin = {"Authorization": f"Bearer {make_token('admin')}"}
    dispatcher = {"Authorization": f"Bearer {make_token('dispatcher')}"}
    with db.session() as s:
        for n in range(3):
            emit(s, SCHEDULE_ITEM_CHANGED, {"n": n}, NOW)
    assert app_client.get("/api/changes").status_code == 401
    assert app_client.get("/api/changes", headers=dispatcher).status_code == 403
    page = app_client.get("/api/changes?limit=2", headers=admin).json()
    assert [c["data"]["n"] for c in page["changes"]] == [0, 1]
    rest = app_client.get(f"/api/changes?after={page['next']}", headers=admin).json()
    assert [c["data"]["n"] for c in rest["changes"]] == [2]
    for query, field in (("after=bogus", "after"), ("limit=0", "limit"),
                         ("limit=abc", "limit"), ("limit=5000", "limit")):
        resp = app_client.get(f"/api/changes?{query}", headers=admin)
        assert resp.status_code == 422, query
        assert resp.json()["error"] == "invalid" and resp.json()["detail"]["field"] == field


def test_endpoint_rows_keep_the_secret_sealed(db: Database, settings) -> None:
    with db.session() as s:
        ep, secret = create_endpoint(s, settings, "http://127.0.0.1:9/a", ["*"], "", NOW)
        ep_id = ep.id
    assert secret.startswith("whsec_") and len(secret) > 30
    with db.engine.connect() as c:
        raw = c.execute(select(WebhookEndpoint.__table__.c.secret)
                        .where(WebhookEndpoint.__table__.c.id == ep_id)).scalar_one()
    assert secret.encode() not in bytes(raw) and secret[6:].encode() not in bytes(raw)


def test_a_sync_that_crashes_reports_the_connection_status_once(db: Database,
                                                                settings) -> None:
    """A connection whose sync fails unexpectedly goes to ``error``: one
    connection.status_changed, written with the new status; the next failure adds none."""
    from calsync.outbox.events import CONNECTION_STATUS_CHANGED
    from calsync.sync.runner import run_due_syncs
    from tests.test_sync_runner import add_connection, add_user

    add_user(db)
    cid, _server, _ids = add_connection(db, settings)

    def broken(_cid: int) -> None:
        raise RuntimeError("a connector bug")

    for minutes in (0, 10):
        run_due_syncs(settings, db, NOW + dt.timedelta(minutes=minutes), connector_for=broken)
    events = [e for e in _events(db) if e.type == CONNECTION_STATUS_CHANGED]
    assert len(events) == 1
    data = events[0].payload["data"]
    assert (data["old_status"], data["new_status"], data["provider"]) == ("ok", "error",
                                                                          "memory")
    assert "a connector bug" not in json.dumps(data)
    from calsync.db.models import Connection
    with db.read_session() as s:
        assert s.get(Connection, cid).status == "error"  # type: ignore[union-attr]
