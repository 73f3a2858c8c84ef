"""Availability through storage and the API: checks, search, staleness, bookings, roles,
private mode end to end, and ``calsync check``. Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from click.testing import CliRunner
from sqlalchemy import select

from calsync.db.models import (
    AuditEntry,
    Calendar,
    Connection,
    ExternalBusy,
    ExternalEvent,
    ScheduleItem,
    utcnow,
)
from calsync.db.session import Database
from calsync.schedule.store import import_document
from tests.conftest import SECRET

UTC = dt.timezone.utc
WEEKDAYS = {d: [["08:00", "12:00"], ["13:00", "17:00"]] for d in ("mon", "tue", "wed", "thu",
                                                                   "fri")}
# Monday 2026-11-30 in Chicago (CST, -06:00).
MON = "2026-11-30"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def seed_users(db: Database, *users: dict[str, Any]) -> None:
    report = import_document(db, {"users": list(users)})
    assert report.ok, report.errors


def user(uid: str, private: bool = True, hours: dict | None = None,
         tz: str = "America/Chicago") -> dict[str, Any]:
    return {"id": uid, "name": f"Tech {uid}", "timezone": tz, "private_mode": private,
            "working_hours": WEEKDAYS if hours is None else hours}


def add_calendar(db: Database, user_id: str, name: str = "Work", role: str = "conflict",
                 status: str = "ok", synced_ago: dt.timedelta | None = dt.timedelta(minutes=1),
                 connection_status: str = "ok") -> int:
    now = utcnow()
    with db.session() as s:
        conn = s.scalar(select(Connection).where(Connection.user_id == user_id))
        if conn is None:
            conn = Connection(user_id=user_id, provider="caldav", account=f"{user_id}@example.com",
                              status=connection_status)
            s.add(conn)
            s.flush()
        conn.status = connection_status
        cal = Calendar(connection_id=conn.id, remote_id=f"/cal/{user_id}/{name}", name=name,
                       role=role, status=status,
                       last_success_at=None if synced_ago is None else now - synced_ago,
                       last_sync_at=now)
        s.add(cal)
        s.flush()
        return cal.id


def add_external(db: Database, calendar_id: int, user_id: str, start: str, end: str,
                 **fields: Any) -> int:
    with db.session() as s:
        n = s.scalar(select(ExternalEvent.id).order_by(ExternalEvent.id.desc()).limit(1)) or 0
        ev = ExternalEvent(calendar_id=calendar_id, user_id=user_id,
                           remote_id=fields.pop("remote_id", f"remote-{n + 1}"),
                           content_hash="x" * 64, **fields)
        s.add(ev)
        s.flush()
        s.add(ExternalBusy(event_id=ev.id, user_id=user_id,
                           start_at=dt.datetime.fromisoformat(start).astimezone(UTC),
                           end_at=dt.datetime.fromisoformat(end).astimezone(UTC)))
        return ev.id


def put_job(db: Database, jid: str, start: str, end: str, *assignees: str,
            status: str = "scheduled") -> None:
    report = import_document(db, {"jobs": [{
        "id": jid, "title": f"Fiber install {jid}", "job_type": "Install", "account": "Acme",
        "start": start, "end": end, "assignees": list(assignees), "status": status}]})
    assert report.ok, report.errors


def check(client, token: str, users: list[str], start: str, end: str) -> Any:
    return client.post("/api/availability/check", headers=auth(token),
                       json={"user_ids": users, "start": start, "end": end})


def test_check_lists_every_kind_of_conflict_masked_for_a_dispatcher(db, app_client,
                                                                    make_token) -> None:
    seed_users(db, user("u1"))
    put_job(db, "j1", f"{MON}T09:00:00-06:00", f"{MON}T10:00:00-06:00", "u1")
    import_document(db, {"time_off": [{"id": "t1", "user": "u1", "start": f"{MON}T13:00:00-06:00",
                                       "end": f"{MON}T14:00:00-06:00", "reason": "Doctor"}],
                         "blocks": [{"id": "b1", "user": "u1", "title": "Training",
                                     "start": f"{MON}T14:00:00-06:00",
                                     "end": f"{MON}T15:00:00-06:00"}]})
    cal = add_calendar(db, "u1", name="Jane private")
    add_external(db, cal, "u1", f"{MON}T15:00:00-06:00", f"{MON}T16:00:00-06:00",
                 summary="Therapy session", location="12 Elm St", description="room 4",
                 attendees=["dr@example.com"], organizer="dr@example.com")
    disp = make_token("dispatcher")
    r = check(app_client, disp, ["u1"], f"{MON}T07:00:00-06:00", f"{MON}T17:00:00-06:00")
    assert r.status_code == 200, r.text
    [res] = r.json()["results"]
    assert res["user_id"] == "u1" and res["available"] is False and res["stale"] is False
    kinds = [c["kind"] for c in res["conflicts"]]
    assert kinds == ["outside_hours", "job", "outside_hours", "time_off", "blocked",
                     "external"]
    ext = res["conflicts"][-1]
    assert ext == {"kind": "external", "start": "2026-11-30T21:00:00+00:00",
                   "end": "2026-11-30T22:00:00+00:00", "summary": "Busy",
                   "source": "external calendar"}
    for secret in ("Therapy", "Elm", "room 4", "dr@example.com", "Jane private", "remote-"):
        assert secret not in r.text
    job = res["conflicts"][1]
    assert job["summary"] == "Fiber install j1" and job["source"] == "calsync"

    owner = make_token("user", "u1")
    r = check(app_client, owner, ["u1"], f"{MON}T15:00:00-06:00", f"{MON}T16:00:00-06:00")
    [res] = r.json()["results"]
    assert res["conflicts"] == [{"kind": "external", "start": "2026-11-30T21:00:00+00:00",
                                 "end": "2026-11-30T22:00:00+00:00",
                                 "summary": "Therapy session", "source": "Jane private"}]
    # A free slot inside working hours is available.
    r = check(app_client, disp, ["u1"], f"{MON}T10:00:00-06:00", f"{MON}T11:00:00-06:00")
    assert r.json()["results"][0]["available"] is True
    assert r.json()["results"][0]["conflicts"] == []


def test_cancelled_jobs_free_time_and_completed_ones_do_not(db, app_client, make_token) -> None:
    seed_users(db, user("u1", hours={}))
    put_job(db, "done", f"{MON}T09:00:00-06:00", f"{MON}T10:00:00-06:00", "u1",
            status="completed")
    put_job(db, "off", f"{MON}T11:00:00-06:00", f"{MON}T12:00:00-06:00", "u1",
            status="cancelled")
    disp = make_token("dispatcher")
    r = check(app_client, disp, ["u1"], f"{MON}T09:30:00-06:00", f"{MON}T09:45:00-06:00")
    assert r.json()["results"][0]["available"] is False
    r = check(app_client, disp, ["u1"], f"{MON}T11:00:00-06:00", f"{MON}T12:00:00-06:00")
    assert r.json()["results"][0]["available"] is True


def test_all_day_time_off_across_a_month_end(db, app_client, make_token) -> None:
    seed_users(db, user("u1", hours={}))
    report = import_document(db, {"time_off": [{"id": "t1", "user": "u1", "start": "2027-01-30",
                                                "end": "2027-02-02", "all_day": True,
                                                "reason": "Ski trip"}]})
    assert report.ok, report.errors
    disp = make_token("dispatcher")

    def available(start: str, end: str) -> bool:
        r = check(app_client, disp, ["u1"], start, end)
        assert r.status_code == 200, r.text
        return bool(r.json()["results"][0]["available"])

    assert available("2027-01-29T20:00:00-06:00", "2027-01-29T23:59:00-06:00")
    assert not available("2027-01-30T00:00:00-06:00", "2027-01-30T01:00:00-06:00")
    assert not available("2027-01-31T23:00:00-06:00", "2027-02-01T01:00:00-06:00")
    assert not available("2027-02-01T22:00:00-06:00", "2027-02-01T23:59:00-06:00")
    # The end date is exclusive: Feb 2 (local) is free again.
    assert available("2027-02-02T00:00:00-06:00", "2027-02-02T09:00:00-06:00")
    r = check(app_client, disp, ["u1"], "2027-01-31T12:00:00Z", "2027-01-31T13:00:00Z")
    [c] = r.json()["results"][0]["conflicts"]
    assert c["kind"] == "time_off" and c["summary"] == "Time off: Ski trip"
    assert c["start"] == "2027-01-30T06:00:00+00:00" and c["end"] == "2027-02-02T06:00:00+00:00"


def test_search_offers_slots_inside_working_hours_around_busy_time(db, app_client,
                                                                  make_token) -> None:
    seed_users(db, user("u1"), user("u2", hours={"tue": [["09:00", "10:00"]]}))
    put_job(db, "j1", f"{MON}T09:00:00-06:00", f"{MON}T10:30:00-06:00", "u1")
    cal = add_calendar(db, "u1")
    add_external(db, cal, "u1", f"{MON}T14:00:00-06:00", f"{MON}T16:00:00-06:00",
                 summary="Dentist", busy_status="oof")
    add_external(db, cal, "u1", f"{MON}T08:00:00-06:00", f"{MON}T09:00:00-06:00",
                 summary="Coffee", busy_status="free")
    disp = make_token("dispatcher")
    r = app_client.post("/api/availability/search", headers=auth(disp), json={
        "user_ids": ["u1", "u2"], "duration_minutes": 60,
        "start": f"{MON}T00:00:00-06:00", "end": "2026-12-01T00:00:00-06:00"})
    assert r.status_code == 200, r.text
    res = {x["user_id"]: x for x in r.json()["results"]}
    starts = [dt.datetime.fromisoformat(s["start"]).astimezone(
        dt.timezone(dt.timedelta(hours=-6))).strftime("%H:%M") for s in res["u1"]["slots"]]
    # Free: 08:00-09:00, 10:30-12:00, 13:00-14:00, 16:00-17:00 (local).
    assert starts == ["08:00", "10:30", "13:00", "16:00"]
    assert res["u1"]["stale"] is False
    assert res["u2"]["slots"] == []  # u2 does not work on Mondays
    assert "Dentist" not in r.text

    # Stale data: no slots offered (fail closed).
    add_calendar(db, "u1", name="Old", synced_ago=dt.timedelta(days=2))
    r = app_client.post("/api/availability/search", headers=auth(disp), json={
        "user_ids": ["u1"], "duration_minutes": 30,
        "start": f"{MON}T00:00:00-06:00", "end": "2026-12-01T00:00:00-06:00"})
    [res1] = r.json()["results"]
    assert res1["stale"] is True and res1["stale_calendars"] == ["Old"] and res1["slots"] == []


def test_bad_requests_name_the_field(db, app_client, make_token) -> None:
    seed_users(db, user("u1"))
    disp = make_token("dispatcher")
    r = check(app_client, disp, ["u1"], "2026-11-30T09:00:00", "2026-11-30T10:00:00Z")
    assert r.status_code == 422 and r.json()["detail"]["field"] == "start"
    r = check(app_client, disp, ["u1"], "2026-11-30T10:00:00Z", "2026-11-30T09:00:00Z")
    assert r.status_code == 422 and r.json()["detail"]["field"] == "end"
    r = check(app_client, disp, [], "2026-11-30T09:00:00Z", "2026-11-30T10:00:00Z")
    assert r.status_code == 422 and r.json()["detail"]["field"] == "user_ids"
    r = check(app_client, disp, ["nobody"], "2026-11-30T09:00:00Z", "2026-11-30T10:00:00Z")
    assert r.status_code == 404 and "nobody" in r.json()["detail"]
    r = app_client.post("/api/availability/search", headers=auth(disp), json={
        "user_ids": ["u1"], "duration_minutes": "60", "start": "2026-11-30T09:00:00Z",
        "end": "2026-11-30T10:00:00Z"})
    assert r.status_code == 422 and r.json()["detail"]["field"] == "duration_minutes"
    r = app_client.get("/api/schedule?users=u1&start=yesterday&end=2026-11-30T10:00:00Z",
                       headers=auth(disp))
    assert r.status_code == 422 and r.json()["detail"]["field"] == "start"
    # A '+' offset typed into a query string unencoded is still understood.
    r = app_client.get("/api/schedule?users=u1&start=2026-11-30T06:00:00+00:00"
                       "&end=2026-11-30T10:00:00+01:00", headers=auth(disp))
    assert r.status_code == 200, r.text
    assert r.json()["start"] == "2026-11-30T06:00:00+00:00"
    assert r.json()["end"] == "2026-11-30T09:00:00+00:00"


def test_connection_in_error_makes_the_check_stale_and_refuses_booking_unless_forced(
        db, app_client, make_token) -> None:
    seed_users(db, user("u1"))
    add_calendar(db, "u1", name="Jane Outlook", role="primary", connection_status="error")
    disp_token = make_token("dispatcher", name="dispatch-desk")
    disp = auth(disp_token)
    r = check(app_client, disp_token, ["u1"], f"{MON}T09:00:00-06:00", f"{MON}T10:00:00-06:00")
    [res] = r.json()["results"]
    assert res["stale"] is True and res["stale_calendars"] == ["Jane Outlook"]
    assert res["available"] is False and res["conflicts"] == []

    job = {"id": "b1", "title": "Fiber install", "job_type": "Install", "account": "Acme",
           "start": f"{MON}T09:00:00-06:00", "end": f"{MON}T10:00:00-06:00",
           "assignees": ["u1"]}
    r = app_client.post("/api/bookings", headers=disp, json=job)
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["error"] == "conflict" and body["reason"] == "stale"
    assert body["conflicts"][0]["stale_calendars"] == ["Jane Outlook"]
    with db.session() as s:
        assert s.scalar(select(ScheduleItem).where(ScheduleItem.ext_id == "b1")) is None

    r = app_client.post("/api/bookings", headers=disp, json={**job, "force": True})
    assert r.status_code == 201, r.text
    assert r.json()["forced"] is True and r.json()["assignees"] == ["u1"]
    with db.session() as s:
        forced = s.scalars(select(AuditEntry).where(AuditEntry.action == "booking.force")).all()
        assert len(forced) == 1
        assert forced[0].actor == "token:dispatch-desk" and forced[0].target_id == "b1"
        assert forced[0].detail["over"][0]["stale_calendars"] == ["Jane Outlook"]


def test_booking_is_refused_over_conflicts_and_lands_when_free(db, app_client,
                                                              make_token) -> None:
    seed_users(db, user("u1"), user("u2"))
    put_job(db, "j1", f"{MON}T09:00:00-06:00", f"{MON}T10:00:00-06:00", "u2")
    cal = add_calendar(db, "u1")
    add_external(db, cal, "u1", f"{MON}T13:00:00-06:00", f"{MON}T14:00:00-06:00",
                 summary="Kid pickup")
    admin = auth(make_token("admin", name="ops-admin"))
    body = {"title": "Splice", "job_type": "Repair", "account": "Acme",
            "assignees": ["u1", "u2"]}
    r = app_client.post("/api/bookings", headers=admin, json={
        **body, "id": "n1", "start": f"{MON}T09:30:00-06:00", "end": f"{MON}T10:30:00-06:00"})
    assert r.status_code == 409 and r.json()["reason"] == "busy"
    per_user = {x["user_id"]: x for x in r.json()["conflicts"]}
    assert per_user["u1"]["available"] is True
    assert [c["kind"] for c in per_user["u2"]["conflicts"]] == ["job"]
    r = app_client.post("/api/bookings", headers=admin, json={
        **body, "id": "n2", "start": f"{MON}T13:30:00-06:00", "end": f"{MON}T14:00:00-06:00"})
    assert r.status_code == 409 and "Kid pickup" not in r.text
    r = app_client.post("/api/bookings", headers=admin, json={
        **body, "id": "n3", "start": f"{MON}T10:00:00-06:00", "end": f"{MON}T11:00:00-06:00"})
    assert r.status_code == 201, r.text
    assert r.json()["id"] == "n3" and r.json()["forced"] is False
    # The same id again is not a second booking.
    r = app_client.post("/api/bookings", headers=admin, json={
        **body, "id": "n3", "start": f"{MON}T15:00:00-06:00", "end": f"{MON}T16:00:00-06:00"})
    assert r.status_code == 409 and r.json()["error"] == "already_exists"
    r = app_client.post("/api/bookings", headers=admin, json={
        **body, "id": "n4", "assignees": ["ghost"], "start": f"{MON}T15:00:00-06:00",
        "end": f"{MON}T16:00:00-06:00"})
    assert r.status_code == 422 and r.json()["detail"]["field"] == "assignees"
    r = app_client.post("/api/bookings", headers=admin, json={**body, "id": "n5"})
    assert r.status_code == 422 and r.json()["detail"]["field"] == "start"
    with db.session() as s:
        jobs = s.scalars(select(ScheduleItem.ext_id).where(ScheduleItem.kind == "job")).all()
        assert sorted(jobs) == ["j1", "n3"]
        created = s.scalar(select(AuditEntry).where(AuditEntry.action == "job.create",
                                                    AuditEntry.target_id == "n3"))
        assert created is not None and created.actor == "token:ops-admin"


def test_role_matrix(db, app_client, make_token) -> None:
    seed_users(db, user("u1"), user("u2"))
    cal = add_calendar(db, "u1", name="Jane home")
    add_external(db, cal, "u1", f"{MON}T09:00:00-06:00", f"{MON}T10:00:00-06:00",
                 summary="Physio", location="Clinic")
    put_job(db, "j1", f"{MON}T11:00:00-06:00", f"{MON}T12:00:00-06:00", "u1", "u2")
    q = f"/api/schedule?users=u1,u2&start={MON}T00:00:00-06:00&end=2026-12-01T00:00:00-06:00"
    q = q.replace("+", "%2B")
    disp, owner, other = (make_token("dispatcher"), make_token("user", "u1"),
                          make_token("user", "u2"))

    r = app_client.get(q, headers=auth(disp))
    assert r.status_code == 200, r.text
    users = {u["user_id"]: u for u in r.json()["users"]}
    assert users["u1"]["external"] == [{"kind": "external", "start": "2026-11-30T15:00:00+00:00",
                                        "end": "2026-11-30T16:00:00+00:00", "all_day": False,
                                        "summary": "Busy", "source": "external calendar",
                                        "masked": True}]
    [job] = users["u1"]["items"]
    assert job["title"] == "Fiber install j1" and job["assignees"] == ["u1", "u2"]
    assert users["u2"]["items"][0]["id"] == "j1" and users["u2"]["external"] == []
    assert "Physio" not in r.text and "Clinic" not in r.text

    # A user sees only their own schedule, with their own event details.
    assert app_client.get(q, headers=auth(owner)).status_code == 403
    mine = q.replace("users=u1,u2", "users=u1")
    r = app_client.get(mine, headers=auth(owner))
    assert r.status_code == 200
    [ev] = r.json()["users"][0]["external"]
    assert ev["summary"] == "Physio" and ev["location"] == "Clinic" and ev["masked"] is False
    assert ev["source"] == "Jane home"
    assert app_client.get(mine, headers=auth(other)).status_code == 403
    r = check(app_client, other, ["u1"], f"{MON}T09:00:00-06:00", f"{MON}T10:00:00-06:00")
    assert r.status_code == 403
    r = app_client.post("/api/availability/search", headers=auth(other), json={
        "user_ids": ["u1"], "duration_minutes": 30, "start": f"{MON}T09:00:00-06:00",
        "end": f"{MON}T10:00:00-06:00"})
    assert r.status_code == 403
    # Users cannot book; dispatchers can.
    job_body = {"id": "x1", "title": "T", "start": f"{MON}T13:00:00-06:00",
                "end": f"{MON}T14:00:00-06:00", "assignees": ["u2"]}
    assert app_client.post("/api/bookings", headers=auth(other), json=job_body).status_code == 403
    assert app_client.post("/api/bookings", headers=auth(disp), json=job_body).status_code == 201
    # No token, no data.
    assert app_client.get(q).status_code == 401


def test_private_mode_toggle_and_private_at_source_end_to_end(db, app_client,
                                                             make_token) -> None:
    admin_token = make_token("admin", name="root")
    admin = auth(admin_token)
    r = app_client.put("/api/users/u1", headers=admin, json=user("u1", private=True))
    assert r.status_code == 201
    cal = add_calendar(db, "u1", name="Jane work")
    add_external(db, cal, "u1", f"{MON}T09:00:00-06:00", f"{MON}T10:00:00-06:00",
                 summary="Team standup", location="Room 7")
    add_external(db, cal, "u1", f"{MON}T10:00:00-06:00", f"{MON}T11:00:00-06:00",
                 summary="HR meeting", private_at_source=True)
    disp = make_token("dispatcher")
    start, end = f"{MON}T08:00:00-06:00", f"{MON}T12:00:00-06:00"

    def summaries() -> list[str]:
        r = check(app_client, disp, ["u1"], start, end)
        return [c["summary"] for c in r.json()["results"][0]["conflicts"]]

    assert summaries() == ["Busy", "Busy"]
    assert app_client.get("/api/users/u1", headers=admin).json()["private_mode"] is True
    # Private mode off through the API: details show, except for events private at source.
    r = app_client.put("/api/users/u1", headers=admin, json=user("u1", private=False))
    assert r.status_code == 200 and r.json()["result"] == "updated"
    assert summaries() == ["Team standup", "Busy"]
    r = check(app_client, admin_token, ["u1"], start, end)
    assert [c["source"] for c in r.json()["results"][0]["conflicts"]] == [
        "Jane work", "external calendar"]
    # ... and back on through the import.
    assert import_document(db, {"users": [user("u1", private=True)]}).ok
    assert summaries() == ["Busy", "Busy"]
    # The owner always sees both.
    r = check(app_client, make_token("user", "u1"), ["u1"], start, end)
    assert [c["summary"] for c in r.json()["results"][0]["conflicts"]] == [
        "Team standup", "HR meeting"]
    with db.session() as s:
        updates = s.scalars(select(AuditEntry).where(AuditEntry.action == "user.update",
                                                     AuditEntry.target_id == "u1")).all()
        assert [a.actor for a in updates] == ["token:root", "import"]


def test_cli_check_is_masked_for_the_operator(db) -> None:
    from calsync.cli import cli

    seed_users(db, user("u1"))
    cal = add_calendar(db, "u1")
    add_external(db, cal, "u1", f"{MON}T09:00:00-06:00", f"{MON}T10:00:00-06:00",
                 summary="Secret interview", location="Downtown")
    put_job(db, "j1", f"{MON}T10:00:00-06:00", f"{MON}T11:00:00-06:00", "u1")
    env = {"CALSYNC_DATABASE_URL": db.url, "CALSYNC_SECRET_KEY": SECRET}
    runner = CliRunner()
    r = runner.invoke(cli, ["check", "u1", f"{MON}T08:30:00-06:00", f"{MON}T11:00:00-06:00",
                            "--json"], env=env)
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["user_id"] == "u1" and res["available"] is False and res["stale"] is False
    assert [(c["kind"], c["summary"]) for c in res["conflicts"]] == [
        ("external", "Busy"), ("job", "Fiber install j1")]
    r = runner.invoke(cli, ["-v", "check", "u1", f"{MON}T08:30:00-06:00",
                            f"{MON}T11:00:00-06:00"], env=env)
    assert r.exit_code == 0, r.output
    assert "u1: NOT available" in r.output and "Busy [external calendar]" in r.output
    assert "Secret" not in r.output and "Downtown" not in r.output
    r = runner.invoke(cli, ["check", "u1", "tomorrow", f"{MON}T11:00:00-06:00"], env=env)
    assert r.exit_code != 0


def test_all_day_booking_is_placed_in_the_assignees_timezone(db, app_client,
                                                             make_token) -> None:
    seed_users(db, user("u1", hours={}))
    disp = auth(make_token("dispatcher"))
    body = {"id": "ad1", "title": "Site survey", "start": "2026-12-10", "end": "2026-12-11",
            "all_day": True, "assignees": ["u1"]}
    r = app_client.post("/api/bookings", headers=disp, json=body)
    assert r.status_code == 201, r.text
    assert r.json()["start"] == "2026-12-10T06:00:00+00:00"
    assert r.json()["end"] == "2026-12-11T06:00:00+00:00"
    r = app_client.post("/api/bookings", headers=disp, json={
        **body, "id": "ad2", "all_day": False, "start": "2026-12-10T23:00:00-06:00",
        "end": "2026-12-11T01:00:00-06:00"})
    assert r.status_code == 409 and r.json()["conflicts"][0]["conflicts"][0]["kind"] == "job"
    r = app_client.post("/api/bookings", headers=disp, json={
        **body, "id": "ad3", "all_day": False, "start": "2026-12-11T00:00:00-06:00",
        "end": "2026-12-11T01:00:00-06:00"})
    assert r.status_code == 201, r.text
