"""Property: no detail of a masked external event reaches a non-owner -- in any API response
(schedule, check, search, bookings), any page (the dispatcher's board with its slot search
and refused bookings, each technician's settings page), any CLI output, any log record or
the audit log.

Random users (private mode on/off), schedule items and external events whose title,
description, location, organizer, attendees, remote id and calendar name carry unique
marker strings; every viewer (admin, dispatcher, each user, the CLI operator)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import replace
from typing import Any

from click.testing import CliRunner
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select

from calsync.api.app import create_app
from calsync.api.auth import create_api_token
from calsync.config import load_settings
from calsync.db.models import AuditEntry, Base
from calsync.db.session import Database
from calsync.schedule.store import import_document
from tests.conftest import SECRET
from tests.test_availability_api import add_calendar, add_external
from tests.web_client import csrf_of, sign_in

UTC = dt.timezone.utc
START = dt.datetime(2026, 11, 30, tzinfo=UTC)  # a Monday
END = START + dt.timedelta(days=3)
HOURS = {d: [["08:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}
DETAIL_FIELDS = ("summary", "description", "location", "organizer")

event_st = st.fixed_dictionaries({
    "owner": st.integers(0, 2),
    "private_at_source": st.booleans(),
    "busy_status": st.sampled_from(["busy", "tentative", "oof", "free", "workingElsewhere"]),
    "status": st.sampled_from(["confirmed", "tentative", "cancelled"]),
    "response": st.sampled_from([None, "accepted", "declined", "tentative"]),
    "start_h": st.integers(0, 70),
    "hours": st.integers(1, 6),
    "all_day": st.booleans(),
})
scenario_st = st.fixed_dictionaries({
    "users": st.lists(st.fixed_dictionaries({"private": st.booleans(),
                                             "hours": st.sampled_from([{}, HOURS]),
                                             "tz": st.sampled_from(["America/Chicago",
                                                                    "Europe/Berlin", "UTC"])}),
                      min_size=1, max_size=3),
    "events": st.lists(event_st, min_size=1, max_size=6),
    "jobs": st.lists(st.tuples(st.integers(0, 2), st.integers(0, 70)), max_size=3),
    "nonce": st.integers(0, 10**9),
})


def _clear(db: Database) -> None:
    with db.session() as s:
        for table in reversed(Base.metadata.sorted_tables):
            s.execute(delete(table))


def _iso(t: dt.datetime) -> str:
    return t.isoformat()


def _markers(nonce: int, i: int) -> dict[str, str]:
    return {f: f"zq{nonce}x{i}{f}" for f in (*DETAIL_FIELDS, "attendee", "remote", "calendar")}


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(scenario=scenario_st)
def test_masked_event_details_never_leave_for_non_owners(sqlite_db, caplog,
                                                        scenario: dict[str, Any]) -> None:
    db = sqlite_db
    caplog.set_level(logging.DEBUG)
    _clear(db)
    caplog.clear()
    users = [f"u{i}" for i in range(len(scenario["users"]))]
    private = {}
    docs = []
    for uid, spec in zip(users, scenario["users"]):
        private[uid] = spec["private"]
        docs.append({"id": uid, "name": uid, "timezone": spec["tz"],
                     "private_mode": spec["private"], "working_hours": spec["hours"]})
    jobs = [{"id": f"j{k}", "title": f"job{k}", "assignees": [users[u % len(users)]],
             "start": _iso(START + dt.timedelta(hours=h)),
             "end": _iso(START + dt.timedelta(hours=h + 2))}
            for k, (u, h) in enumerate(scenario["jobs"])]
    assert import_document(db, {"users": docs, "jobs": jobs}).ok

    events = []  # (owner, masked_for_non_owners, markers, blocks_time)
    for i, ev in enumerate(scenario["events"]):
        owner = users[ev["owner"] % len(users)]
        m = _markers(scenario["nonce"], i)
        cal = add_calendar(db, owner, name=m["calendar"])
        start = START + dt.timedelta(hours=ev["start_h"])
        end = start + dt.timedelta(hours=24 if ev["all_day"] else ev["hours"])
        add_external(db, cal, owner, _iso(start), _iso(end), summary=m["summary"],
                     description=m["description"], location=m["location"],
                     organizer=m["organizer"], attendees=[m["attendee"], {"email": m["attendee"]}],
                     remote_id=m["remote"], busy_status=ev["busy_status"], status=ev["status"],
                     response=ev["response"], private_at_source=ev["private_at_source"],
                     all_day=ev["all_day"])
        blocks = (ev["busy_status"] in ("busy", "tentative", "oof")
                  and ev["status"] != "cancelled" and ev["response"] != "declined")
        events.append((owner, private[owner] or ev["private_at_source"], m, blocks))

    with db.session() as s:
        tokens = {"admin": (create_api_token(s, "a", "admin", None), None),
                  "dispatcher": (create_api_token(s, "d", "dispatcher", None), None)}
        for uid in users:
            tokens[uid] = (create_api_token(s, f"t-{uid}", "user", uid), uid)

    base = load_settings(env={"CALSYNC_SECRET_KEY": SECRET})
    app_settings = replace(base, database=replace(base.database, url=db.url))
    window = {"start": _iso(START), "end": _iso(END)}
    owner_saw: dict[str, str] = {}
    with TestClient(create_app(app_settings, db)) as client:
        for name, (token, own) in tokens.items():
            h = {"Authorization": f"Bearer {token}"}
            visible = [own] if own else users
            bodies = []
            r = client.get("/api/schedule", headers=h,
                           params={"users": ",".join(visible), **window})
            assert r.status_code == 200, r.text
            bodies.append(r.text)
            if own:
                owner_saw[own] = r.text
            r = client.post("/api/availability/check", headers=h,
                            json={"user_ids": visible, **window})
            assert r.status_code == 200, r.text
            bodies.append(r.text)
            r = client.post("/api/availability/search", headers=h,
                            json={"user_ids": visible, "duration_minutes": 60, **window})
            assert r.status_code == 200, r.text
            bodies.append(r.text)
            if not own:
                for k, force in enumerate((False, True)):
                    r = client.post("/api/bookings", headers=h, json={
                        "id": f"bk-{name}-{k}", "title": "Booked", "assignees": users,
                        "force": force, **window})
                    assert r.status_code in (201, 409), r.text
                    bodies.append(r.text)
            leaked = [(m, f) for owner, masked, m, _ in events
                      if masked and owner != own for f in m.values()
                      if any(f in b for b in bodies)]
            assert not leaked, (name, leaked)

        # The pages (DESIGN 4.6; they fetch no JSON, so their HTML is all a browser gets):
        # the dispatcher's board (the week, a slot search, refused bookings with their
        # conflicts) and every technician's settings page.
        admin = tokens["admin"][0]
        board = TestClient(client.app)
        pages = [sign_in(board, admin, {"role": "dispatcher", "name": "Dana"}).text]
        week = {"week": START.date().isoformat()}
        pages.append(board.get("/app/dispatch", params=week).text)
        r = board.get("/app/dispatch", params={
            **week, "users": users, "duration": "60", "tz": "UTC",
            "from": START.strftime("%Y-%m-%dT%H:%M"), "to": END.strftime("%Y-%m-%dT%H:%M")})
        assert r.status_code == 200, r.text
        pages.append(r.text)
        for uid in users:
            r = board.post("/app/dispatch/book", data={
                "csrf_token": csrf_of(pages[0]), "user_id": uid, "title": "Booked",
                "job_id": f"web-{uid}", **window})
            assert r.status_code in (303, 409), r.text
            pages.append(r.text)
        page_leaks = [f for _, masked, m, _ in events if masked for f in m.values()
                      if any(f in p for p in pages)]
        assert not page_leaks, page_leaks
        for uid in users:
            tech = TestClient(client.app)
            own_page = sign_in(tech, admin, {"user_id": uid}).text
            assert "Calendar settings" in own_page
            # Only the owner's own calendars and events appear on their page.
            others = [f for owner, _, m, _ in events if owner != uid for f in m.values()
                      if f in own_page]
            assert not others, (uid, others)

    # The CLI operator is a non-owner for everybody.
    env = {"CALSYNC_DATABASE_URL": db.url, "CALSYNC_SECRET_KEY": SECRET}
    from calsync.cli import cli

    runner = CliRunner()
    outputs = []
    for uid in users:
        for extra in (["--json"], []):
            r = runner.invoke(cli, ["-v", "check", uid, _iso(START), _iso(END), *extra], env=env)
            assert r.exit_code == 0, r.output
            outputs.append(r.output)
    cli_leaks = [f for _, masked, m, _ in events if masked for f in m.values()
                 if any(f in o for o in outputs)]
    assert not cli_leaks

    # Nothing logs event details at all, and forced bookings audit masked conflicts.
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert not [f for _, _, m, _ in events for f in m.values() if f in logged]
    with db.session() as s:
        audit_text = json.dumps([a.detail for a in s.scalars(select(AuditEntry))])
    assert not [f for _, masked, m, _ in events if masked for f in m.values()
                if f in audit_text]

    # Positive control: owners do see their own busy events' details (so the data flows and
    # the absence above is masking, not missing data).
    for owner, _, m, blocks in events:
        assert all((value in owner_saw[owner]) is blocks
                   for value in m.values()), (owner, m, blocks)
