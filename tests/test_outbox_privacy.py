"""Property: no detail of any external event (title, description, location, organizer,
attendees, remote id, calendar name) reaches the platform through webhook bodies or the
change feed, whatever the users' private mode: the platform is no event's owner.

Random users, external events carrying unique markers, jobs; bookings over them (forced
and refused) through the API by admin and dispatcher; a sync of every connection (which
fails, so each connection's status changes); then every event is delivered to a receiver
on 127.0.0.1 (verified with ``standardwebhooks``) and read through ``GET /api/changes``."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select

from calsync.api.app import create_app
from calsync.api.auth import create_api_token
from calsync.config import load_settings
from calsync.db.models import Base, Connection
from calsync.db.session import Database
from calsync.outbox.delivery import Deliverer, RetrySchedule
from calsync.outbox.endpoints import create_endpoint
from calsync.schedule.store import import_document
from calsync.sync.runner import sync_connection
from tests.conftest import SECRET
from tests.test_availability_api import add_calendar, add_external
from tests.webhook_receiver import Receiver

UTC = dt.timezone.utc
START = dt.datetime(2026, 11, 30, tzinfo=UTC)
END = START + dt.timedelta(days=3)

scenario_st = st.fixed_dictionaries({
    "users": st.lists(st.booleans(), min_size=1, max_size=3),  # private mode
    "events": st.lists(st.fixed_dictionaries({
        "owner": st.integers(0, 2), "private_at_source": st.booleans(),
        "busy_status": st.sampled_from(["busy", "tentative", "oof", "free"]),
        "start_h": st.integers(0, 60), "hours": st.integers(1, 8)}), min_size=1, max_size=5),
    "nonce": st.integers(0, 10**9),
})


def _clear(db: Database) -> None:
    with db.session() as s:
        for table in reversed(Base.metadata.sorted_tables):
            s.execute(delete(table))


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(scenario=scenario_st)
def test_webhook_bodies_and_change_feed_carry_no_external_details(
        sqlite_db: Database, scenario: dict[str, Any]) -> None:
    db = sqlite_db
    _clear(db)
    users = [f"u{i}" for i in range(len(scenario["users"]))]
    assert import_document(db, {"users": [
        {"id": uid, "name": uid, "timezone": "UTC", "private_mode": private}
        for uid, private in zip(users, scenario["users"])]}).ok
    markers: list[str] = []
    for i, ev in enumerate(scenario["events"]):
        owner = users[ev["owner"] % len(users)]
        m = {f: f"zq{scenario['nonce']}w{i}{f}" for f in (
            "summary", "description", "location", "organizer", "attendee", "remote",
            "calendar")}
        markers += m.values()
        cal = add_calendar(db, owner, name=m["calendar"])
        start = START + dt.timedelta(hours=ev["start_h"])
        add_external(db, cal, owner, start.isoformat(),
                     (start + dt.timedelta(hours=ev["hours"])).isoformat(),
                     summary=m["summary"], description=m["description"],
                     location=m["location"], organizer=m["organizer"],
                     attendees=[m["attendee"], {"email": m["attendee"]}],
                     remote_id=m["remote"], busy_status=ev["busy_status"],
                     private_at_source=ev["private_at_source"])
    base = load_settings(env={"CALSYNC_SECRET_KEY": SECRET})
    app_settings = replace(base, database=replace(base.database, url=db.url))
    receiver = Receiver().start()
    try:
        with db.session() as s:
            _ep, receiver.secret = create_endpoint(s, app_settings, receiver.url, ["*"], "",
                                                   START)
            tokens = [create_api_token(s, "a", "admin", None),
                      create_api_token(s, "d", "dispatcher", None)]
        with TestClient(create_app(app_settings, db)) as client:
            for k, token in enumerate(tokens):
                for force in (False, True):
                    r = client.post("/api/bookings", headers={
                        "Authorization": f"Bearer {token}"}, json={
                        "id": f"bk{k}{force}", "title": "Booked", "assignees": users,
                        "force": force, "start": START.isoformat(), "end": END.isoformat()})
                    assert r.status_code in (201, 409), r.text
            with db.read_session() as s:
                connections = list(s.scalars(select(Connection.id)))
            for cid in connections:  # no URL: the sync fails, the status changes
                assert sync_connection(app_settings, db, cid, START).status != "ok"
            deliverer = Deliverer(app_settings, db,
                                  schedule=RetrySchedule(delays=(0.05,), jitter=0))
            try:
                deliverer.run_until_idle(timeout=30, wait_retries=True)
            finally:
                deliverer.close()
            feed = client.get("/api/changes?limit=1000",
                              headers={"Authorization": f"Bearer {tokens[0]}"}).text
    finally:
        receiver.stop()
    bodies = [r.body for r in receiver.received]
    assert receiver.received and all(r.verified for r in receiver.received)
    types = {r.type for r in receiver.received}
    assert "booking.created" in types and "connection.status_changed" in types
    leaked = [m for m in markers if any(m in b for b in bodies) or m in feed]
    assert not leaked, leaked
    # positive control: the forced bookings name whom they were forced over, by kind
    forced = [json.loads(b)["data"] for b in bodies if '"forced":true' in b]
    blocking = [e for e in scenario["events"] if e["busy_status"] != "free"]
    if blocking:
        assert forced and any(c["kind"] == "external" for d in forced
                              for u in d["forced_over"] for c in u["conflicts"])
