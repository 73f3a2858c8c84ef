"""End to end with a real Radicale (htpasswd authentication): what a technician does in
their own calendar reaches the platform as signed webhooks, verified by a receiver with
the ``standardwebhooks`` library, and in the change feed in the same order.

- deleting their time off there -> exactly one ``schedule_item.deleted``;
- editing their block there -> ``schedule_item.changed`` with the new title;
- editing a job's copy there -> ``job.reverted`` (the copy is put back);
- a password changed on the server -> ``connection.status_changed`` to ``needs_reauth``
  with what to do and the settings page; reconnecting -> back to ``ok``;
- a booking through the API -> ``booking.created`` (``forced`` false, then true).
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from sqlalchemy import select

from calsync.config import Settings
from calsync.db.models import Calendar, Connection, Link, ScheduleItem
from calsync.db.session import Database
from calsync.outbox.changes import read_changes
from calsync.outbox.delivery import Deliverer, RetrySchedule
from calsync.outbox.endpoints import create_endpoint
from calsync.schedule.store import import_document
from calsync.secrets import CredentialBox
from calsync.sync.connections import save_connection
from calsync.sync.connector import ConnectContext, load_connector_factory
from calsync.sync.runner import sync_connection
from tests.caldav_servers import free_port
from tests.conftest import need
from tests.webhook_receiver import Receiver

USER = "tech@example.com"
_LAUNCHER = """
import sys
from radicale import config, server
configuration = config.load()
configuration.update({
    "storage": {"filesystem_folder": sys.argv[1], "_filesystem_fsync": "False"},
    "auth": {"type": "htpasswd", "htpasswd_filename": sys.argv[3],
             "htpasswd_encryption": "plain", "delay": "0"},
    "rights": {"type": "owner_only"},
    "server": {"hosts": sys.argv[2]}, "logging": {"level": "warning"},
}, "calsync webhook test", privileged=True)
server.serve(configuration)
"""


class AuthRadicale:
    """Radicale with a htpasswd file whose password the test can change."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="calsync-radicale-auth-"))
        self.htpasswd = self.folder / "users"
        self.set_password("first-password")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/"
        self.log = (self.folder / "log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER,
                                      str(self.folder / "collections"),
                                      f"127.0.0.1:{self.port}", str(self.htpasswd)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.http = httpx.Client(auth=httpx.BasicAuth(USER, "first-password"), timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self.http.request("PROPFIND", f"{self.base}{USER}/",
                                     headers={"Depth": "0"}).status_code in (207, 404):
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        need(False, "Radicale with htpasswd auth did not start")

    def set_password(self, password: str) -> None:
        self.htpasswd.write_text(f"{USER}:{password}\n")

    def make_calendar(self, name: str) -> str:
        url = f"{self.base}{USER}/{name}/"
        body = ('<?xml version="1.0"?><C:mkcalendar xmlns:D="DAV:" '
                'xmlns:C="urn:ietf:params:xml:ns:caldav"><D:set><D:prop>'
                f"<D:displayname>{name}</D:displayname></D:prop></D:set></C:mkcalendar>")
        resp = self.http.request("MKCALENDAR", url, content=body,
                                 headers={"Content-Type": "application/xml"})
        assert resp.status_code == 201, resp.text
        return url

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def radicale() -> Iterator[AuthRadicale]:
    server = AuthRadicale()
    yield server
    server.stop()


def _connect(db: Database, settings: Settings, server: AuthRadicale, cal_url: str) -> int:
    creds = {"username": USER, "password": "first-password"}
    ctx = ConnectContext(provider="caldav", url=server.base, account=USER, credentials=creds,
                         settings=settings, options={})
    connector = load_connector_factory("caldav").connect(ctx)
    try:
        remote = {c.name: c for c in connector.list_calendars()}
    finally:
        connector.close()
    with db.session() as s:
        conn = Connection(user_id="u1", provider="caldav", account=USER, url=server.base,
                          credentials=CredentialBox.from_settings(settings).seal(creds))
        s.add(conn)
        s.flush()
        s.add(Calendar(connection_id=conn.id, remote_id=remote["Work"].id, name="Work",
                       role="primary"))
        return conn.id


def _copy_url(db: Database, server: AuthRadicale, kind: str, ext_id: str) -> str:
    with db.read_session() as s:
        href = s.scalar(select(Link.remote_id).join(ScheduleItem,
                                                    ScheduleItem.pk == Link.item_pk)
                        .where(ScheduleItem.kind == kind, ScheduleItem.ext_id == ext_id))
    assert href, f"no copy of {kind} {ext_id}"
    return urljoin(server.base, href)


def _edit_summary(server: AuthRadicale, url: str, summary: str) -> None:
    ics = server.http.get(url).text
    edited = re.sub(r"^SUMMARY[^\r\n]*", f"SUMMARY:{summary}", ics, count=1, flags=re.M)
    assert edited != ics
    resp = server.http.put(url, content=edited.encode(),
                           headers={"Content-Type": "text/calendar; charset=utf-8"})
    assert resp.status_code in (201, 204), resp.text


def test_technician_changes_reach_the_platform_signed(
        db: Database, settings: Settings, radicale: AuthRadicale, app_client: Any,
        make_token: Any) -> None:
    settings = replace(settings, webhooks=replace(settings.webhooks, timeout_seconds=2.0))
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    day = (now + dt.timedelta(days=3)).date()
    assert import_document(db, {
        "users": [{"id": "u1", "name": "Jane", "timezone": "UTC",
                   "working_hours": {d: [["00:00", "23:59"]] for d in
                                     ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}}],
        "jobs": [{"id": "j1", "title": "Fiber install", "start": f"{day}T09:00:00Z",
                  "end": f"{day}T10:00:00Z", "assignees": ["u1"],
                  "notes": "Gate code 1234"}],
        "time_off": [{"id": "t1", "user": "u1", "start": str(day + dt.timedelta(days=2)),
                      "end": str(day + dt.timedelta(days=4)), "all_day": True,
                      "reason": "Vacation"}],
        "blocks": [{"id": "b1", "user": "u1", "title": "Training",
                    "start": f"{day}T13:00:00Z", "end": f"{day}T14:00:00Z"}],
    }, now=now).ok
    cal_url = radicale.make_calendar("Work")
    cid = _connect(db, settings, radicale, cal_url)
    receiver = Receiver().start()
    try:
        with db.session() as s:
            _ep, receiver.secret = create_endpoint(s, settings, receiver.url, ["*"], "", now)
        first = sync_connection(settings, db, cid, now)
        assert first.status == "ok", first.error
        assert first.totals()["created"] == 3

        # the technician deletes their time off, renames their block, edits the job
        assert radicale.http.delete(_copy_url(db, radicale, "time_off", "t1")).status_code \
            in (200, 204)
        _edit_summary(radicale, _copy_url(db, radicale, "block", "b1"), "Training (moved)")
        _edit_summary(radicale, _copy_url(db, radicale, "job", "j1"), "Not my job")
        second = sync_connection(settings, db, cid, now + dt.timedelta(minutes=5))
        assert second.status == "ok", second.error
        third = sync_connection(settings, db, cid, now + dt.timedelta(minutes=10))
        assert third.status == "ok", third.error  # nothing new: no event either

        # bookings through the API
        admin = {"Authorization": f"Bearer {make_token('admin')}"}
        plain = app_client.post("/api/bookings", headers=admin, json={
            "id": "j2", "title": "Repair", "start": f"{day + dt.timedelta(days=1)}T09:00:00Z",
            "end": f"{day + dt.timedelta(days=1)}T10:00:00Z", "assignees": ["u1"]})
        assert plain.status_code in (200, 201), plain.text
        over = app_client.post("/api/bookings", headers=admin, json={
            "id": "j3", "title": "Urgent", "start": f"{day}T09:30:00Z",
            "end": f"{day}T10:30:00Z", "assignees": ["u1"], "force": True})
        assert over.status_code in (200, 201), over.text
        refused = app_client.post("/api/bookings", headers=admin, json={
            "id": "j4", "title": "Refused", "start": f"{day}T09:30:00Z",
            "end": f"{day}T10:30:00Z", "assignees": ["u1"]})
        assert refused.status_code == 409  # rolled back: no event

        # the password changes on the server: the next sync needs the user
        radicale.set_password("second-password")
        time.sleep(0.05)
        fourth = sync_connection(settings, db, cid, now + dt.timedelta(minutes=15))
        assert fourth.status == "needs_reauth", fourth.error
        # the technician reconnects with the new password
        ctx = ConnectContext(provider="caldav", url=radicale.base, account=USER,
                             credentials={"username": USER, "password": "second-password"},
                             settings=settings, options={})
        connector = load_connector_factory("caldav").connect(ctx)
        try:
            calendars = connector.list_calendars()
        finally:
            connector.close()
        assert save_connection(settings, db, "u1", ctx, calendars,
                               now + dt.timedelta(minutes=20)) == (cid, False)
        fifth = sync_connection(settings, db, cid, now + dt.timedelta(minutes=25))
        assert fifth.status == "ok", fifth.error


        deliverer = Deliverer(settings, db, schedule=RetrySchedule(delays=(0.05,) * 3))
        try:
            deliverer.run_until_idle(timeout=30, wait_retries=True)
        finally:
            deliverer.close()
    finally:
        receiver.stop()

    assert receiver.received and all(r.verified for r in receiver.received)
    types = [r.type for r in receiver.received]
    deleted = receiver.of_type("schedule_item.deleted")
    assert len(deleted) == 1
    d = deleted[0].data
    assert (d["kind"], d["id"], d["user"], d["deleted"]) == ("time_off", "t1", "u1", True)
    with db.read_session() as s:
        cal_public = s.scalar(select(Calendar.public_id).where(Calendar.connection_id == cid))
        conn_public = s.scalar(select(Connection.public_id).where(Connection.id == cid))
    assert d["source"] == cal_public and d["all_day"] is True and d["reason"] == "Vacation"

    (changed,) = receiver.of_type("schedule_item.changed")
    assert changed.data["id"] == "b1" and changed.data["title"] == "Training (moved)"
    assert changed.data["source"] == cal_public

    (reverted,) = receiver.of_type("job.reverted")
    assert reverted.data["id"] == "j1" and reverted.data["change"] == "edit"
    assert reverted.data["source"] == cal_public and reverted.data["user"] == "u1"
    assert "Not my job" not in reverted.body  # the remote edit itself is not repeated

    lost, back = receiver.of_type("connection.status_changed")  # one subject: in order
    assert (back.data["old_status"], back.data["new_status"]) == ("needs_reauth", "ok")
    assert back.data["action"].startswith("Nothing")
    s_data = lost.data
    assert (s_data["connection"], s_data["user"], s_data["provider"]) == \
        (conn_public, "u1", "caldav")
    assert (s_data["old_status"], s_data["new_status"]) == ("ok", "needs_reauth")
    assert "Reconnect" in s_data["action"]
    assert s_data["settings_url"] == settings.server.base_url.rstrip("/") + "/app/settings"

    bookings = {r.data["job"]["id"]: r.data for r in receiver.of_type("booking.created")}
    assert set(bookings) == {"j2", "j3"}
    assert bookings["j2"]["forced"] is False and bookings["j2"]["forced_over"] == []
    assert bookings["j3"]["forced"] is True
    (over_u1,) = bookings["j3"]["forced_over"]
    assert over_u1["user_id"] == "u1" and {c["kind"] for c in over_u1["conflicts"]} == {"job"}

    # the change feed has the same events; later transactions come later
    page = read_changes(db, None, 100, now)
    feed_types = [c["type"] for c in page.changes]
    assert sorted(feed_types) == sorted(types)
    assert {c["id"] for c in page.changes} == {r.message_id for r in receiver.received}
    assert feed_types[3:] == ["booking.created", "booking.created",
                              "connection.status_changed", "connection.status_changed"]
    assert sorted(feed_types[:3]) == ["job.reverted", "schedule_item.changed",
                                      "schedule_item.deleted"]
