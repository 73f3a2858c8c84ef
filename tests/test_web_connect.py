"""Connecting accounts from the Calendar settings page against servers that check
passwords (SQLite and PostgreSQL): a wrong password, a web site that is not CalDAV and a
dead port are each shown next to the field to fix, in the words of the self-service
layer; iCloud connects through its front door with an Apple ID and app-specific password.
Nothing typed as a password ever comes back in the page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from calsync.api.app import create_app
from calsync.config import Settings
from calsync.db.models import Connection
from calsync.db.session import Database
from calsync.schedule.store import import_document
from tests.api_connections_support import (
    FakeIcloudRoot,
)
from tests.caldav_servers import free_port
from tests.web_client import csrf_of, sign_in



@pytest.fixture
def page_client(settings: Settings, db: Database, icloud_root: FakeIcloudRoot,
                make_token) -> Iterator[tuple[TestClient, str]]:  # type: ignore[no-untyped-def]
    assert import_document(db, {"users": [{"id": "u1", "name": "Jane", "timezone": "UTC"}]}).ok
    configured = replace(settings, icloud=replace(settings.icloud, url=icloud_root.url))
    with TestClient(create_app(configured, db)) as client:
        csrf = csrf_of(sign_in(client, make_token("admin"), {"user_id": "u1"}).text)
        yield client, csrf


def _error(page: str, form: str, field: str) -> str:
    m = re.search(rf'id="{form}-{field}-error">([^<]+)<', page)
    assert m is not None, (form, field)
    return m[1]


def test_caldav_errors_next_to_their_field(page_client, radicale, not_caldav_url,
                                           db) -> None:  # type: ignore[no-untyped-def]
    client, csrf = page_client
    acct = radicale.account("Work")
    wrong = "wrong-pass-31337"
    r = client.post("/app/settings/connect/caldav", data={
        "csrf_token": csrf, "url": radicale.base_url, "username": acct.username,
        "password": wrong})
    assert r.status_code == 422
    assert "did not accept this username and password" in _error(r.text, "caldav", "password")
    assert re.search(r'id="caldav-password"[^>]*aria-invalid="true"', r.text)
    assert f'value="{acct.username}"' in r.text and wrong not in r.text
    r = client.post("/app/settings/connect/caldav", data={
        "csrf_token": csrf, "url": not_caldav_url, "username": acct.username,
        "password": acct.password})
    assert r.status_code == 422
    assert "not as a CalDAV calendar server" in _error(r.text, "caldav", "url")
    assert acct.password not in r.text
    r = client.post("/app/settings/connect/caldav", data={
        "csrf_token": csrf, "url": f"http://127.0.0.1:{free_port()}/",
        "username": acct.username, "password": acct.password})
    assert r.status_code == 422
    assert "could not be reached" in _error(r.text, "caldav", "url")
    with db.session() as s:
        assert list(s.scalars(select(Connection))) == []
    r = client.post("/app/settings/connect/caldav", data={
        "csrf_token": csrf, "url": radicale.base_url, "username": acct.username,
        "password": acct.password}, follow_redirects=False)
    assert r.status_code == 303
    page = client.get("/app/settings").text
    assert f"CalDAV: {acct.username}" in page and ">Work</label>" in page
    assert acct.password not in page


def test_icloud_through_the_form(page_client, radicale, icloud_root,
                                 db) -> None:  # type: ignore[no-untyped-def]
    client, csrf = page_client
    acct = radicale.account("Home", "Family")
    icloud_root.register(acct)
    r = client.post("/app/settings/connect/icloud", data={
        "csrf_token": csrf, "apple_id": acct.username, "app_password": "nope-nope-nope"})
    assert r.status_code == 422
    assert "Apple did not accept" in _error(r.text, "icloud", "app_password")
    assert "nope-nope-nope" not in r.text
    r = client.post("/app/settings/connect/icloud", data={
        "csrf_token": csrf, "apple_id": acct.username, "app_password": acct.password},
        follow_redirects=False)
    assert r.status_code == 303, r.text[:400]
    page = client.get("/app/settings").text
    assert f"iCloud: {acct.username}" in page
    assert ">Home</label>" in page and ">Family</label>" in page
    with db.session() as s:
        conn = s.scalar(select(Connection))
        assert conn.provider == "icloud" and acct.password.encode() not in conn.credentials


def test_subscribe_to_a_calendar_link(page_client, not_caldav_url,
                                      db) -> None:  # type: ignore[no-untyped-def]
    from tests.ics_feed_server import FeedServer

    client, csrf = page_client
    feed = FeedServer()
    feed.serve("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//school//EN\r\n"
               "X-WR-CALNAME:Timetable\r\nBEGIN:VEVENT\r\nUID:lesson-1\r\n"
               "DTSTAMP:20260101T000000Z\r\nDTSTART:20270105T140000Z\r\n"
               "DTEND:20270105T150000Z\r\nSUMMARY:Parents evening\r\nEND:VEVENT\r\n"
               "END:VCALENDAR\r\n")
    feed.start()
    try:
        r = client.post("/app/settings/connect/ics", data={"csrf_token": csrf,
                                                           "url": not_caldav_url})
        assert r.status_code == 422
        assert _error(r.text, "ics", "url")
        assert 'id="ics-panel" class="panel" data-open' in r.text
        r = client.post("/app/settings/connect/ics", data={"csrf_token": csrf, "url": feed.url},
                        follow_redirects=False)
        assert r.status_code == 303 and "done=subscribed" in r.headers["location"]
        page = client.get(r.headers["location"]).text
        assert "Calendar link added" in page
        assert re.search(r'name="conflict" value="cal_\w+" checked>Timetable</label>', page)
        assert "secret-key" not in page  # the link's key is not shown back
    finally:
        feed.stop()


def test_disconnect_with_and_without_removing_copies(page_client, radicale, settings,
                                                     db) -> None:  # type: ignore[no-untyped-def]
    """The Disconnect form's checkbox decides whether calsync's copies leave the server."""
    import datetime as dt

    from calsync.db.models import Calendar
    from calsync.sync.runner import run_due_syncs

    client, csrf = page_client
    day = dt.datetime.now(dt.timezone.utc).date() + dt.timedelta(days=1)
    start = dt.datetime(day.year, day.month, day.day, 14, tzinfo=dt.timezone.utc)
    assert import_document(db, {"jobs": [{
        "id": "j-web", "title": "Fiber install", "assignees": ["u1"],
        "start": start.isoformat(), "end": (start + dt.timedelta(hours=1)).isoformat()}]}).ok
    for remove in (True, False):
        acct = radicale.account("Work")
        r = client.post("/app/settings/connect/caldav", data={
            "csrf_token": csrf, "url": radicale.base_url, "username": acct.username,
            "password": acct.password}, follow_redirects=False)
        assert r.status_code == 303
        with db.session() as s:
            cal = s.scalar(select(Calendar).join(Connection).where(
                Connection.account == acct.username))
            cal_id, conn_id = cal.public_id, s.get(Connection, cal.connection_id).public_id
        r = client.post("/app/settings/calendars", data={"csrf_token": csrf, "primary": cal_id},
                        follow_redirects=False)
        assert r.status_code == 303
        run_due_syncs(settings, db, dt.datetime.now(dt.timezone.utc))
        assert len(acct.hrefs("Work")) == 1  # the job's copy is on the server
        data = {"csrf_token": csrf, **({"remove_copies": "on"} if remove else {})}
        r = client.post(f"/app/settings/connections/{conn_id}/disconnect", data=data,
                        follow_redirects=False)
        assert r.status_code == 303, r.text[:300]
        assert len(acct.hrefs("Work")) == (0 if remove else 1)
        with db.session() as s:
            assert s.scalar(select(Connection).where(Connection.public_id == conn_id)) is None
