"""A technician's Calendar settings (/app/settings) through the real app, on SQLite and
PostgreSQL: feed link, connecting a real Radicale account (and the errors a technician
sees), calendar roles, private mode, working hours, reconnect banner, disconnect."""

from __future__ import annotations

import re
from urllib.parse import urlencode

from sqlalchemy import select, update

from calsync.db.models import Calendar, Connection, User
from calsync.schedule.store import import_document
from tests.caldav_servers import free_port, radicale_server  # noqa: F401 - fixture
from tests.test_availability_api import add_calendar
from tests.web_client import csrf_of, path_of, sign_in

DOC = {"users": [{"id": "u1", "name": "Jane Doe", "timezone": "America/Chicago",
                  "working_hours": {"mon": [["08:00", "17:00"]]}}]}


def _tech(db, app_client, make_token) -> str:  # type: ignore[no-untyped-def]
    assert import_document(db, DOC).ok
    return csrf_of(sign_in(app_client, make_token("admin"), {"user_id": "u1"}).text)


def _post(client, path: str, csrf: str, **data):  # type: ignore[no-untyped-def]
    return client.post(path, data={"csrf_token": csrf, **data}, follow_redirects=False)


def _feed_link(page: str) -> str | None:
    m = re.search(r'id="feed-link" type="text" readonly value="([^"]+)"', page)
    return m[1] if m else None


def test_feed_link_regenerate_and_turn_off_on(db, app_client, make_token) -> None:
    csrf = _tech(db, app_client, make_token)
    page = app_client.get("/app/settings").text
    assert _feed_link(page) is None and ">Turn on feed</button>" in page
    assert "Google Calendar refreshes every 4 to 24 hours" in page
    assert "Outlook.com about every 3 hours" in page
    r = _post(app_client, "/app/settings/feed/on", csrf)
    assert r.status_code == 303
    page = app_client.get(r.headers["location"]).text
    first = _feed_link(page)
    assert first and "Your feed is on" in page and "Last fetched never" in page
    assert app_client.get(path_of(first)).status_code == 200
    page = app_client.get("/app/settings").text
    assert "Last fetched " in page and "Last fetched never" not in page
    _post(app_client, "/app/settings/feed/regenerate", csrf)
    second = _feed_link(app_client.get("/app/settings").text)
    assert second and second != first
    assert app_client.get(path_of(first)).status_code == 404  # the old link died at once
    assert app_client.get(path_of(second)).status_code == 200
    _post(app_client, "/app/settings/feed/off", csrf)
    page = app_client.get("/app/settings").text
    assert _feed_link(page) is None
    assert app_client.get(path_of(second)).status_code == 404


def test_private_mode_and_working_hours(db, app_client, make_token) -> None:
    csrf = _tech(db, app_client, make_token)
    page = app_client.get("/app/settings").text
    assert re.search(r'name="private_mode" data-autosave[^>]* checked', page)
    r = _post(app_client, "/app/settings/private-mode", csrf)  # unchecked box: off
    assert "done=private_off" in r.headers["location"]
    with db.session() as s:
        assert s.get(User, "u1").private_mode is False
    _post(app_client, "/app/settings/private-mode", csrf, private_mode="on")
    with db.session() as s:
        assert s.get(User, "u1").private_mode is True
    r = _post(app_client, "/app/settings/working-hours", csrf, timezone="Europe/Berlin",
              hours_mon="8-12, 13:00–17:30", hours_fri="07:00-15:00")
    assert r.status_code == 303
    with db.session() as s:
        user = s.get(User, "u1")
        assert user.timezone == "Europe/Berlin"
        assert user.working_hours == {"mon": [["08:00", "12:00"], ["13:00", "17:30"]],
                                      "tue": [], "wed": [], "thu": [],
                                      "fri": [["07:00", "15:00"]], "sat": [], "sun": []}
    page = app_client.get("/app/settings").text
    assert 'value="08:00–12:00, 13:00–17:30"' in page


def test_working_hours_errors_sit_next_to_their_field(db, app_client, make_token) -> None:
    csrf = _tech(db, app_client, make_token)
    r = _post(app_client, "/app/settings/working-hours", csrf, timezone="America/Chicago",
              hours_tue="nine to five", hours_wed="17:00-09:00",
              hours_thu="08:00-12:00, 11:00-13:00")
    assert r.status_code == 422
    page = r.text
    assert re.search(r'id="hours-tue"[^>]*aria-describedby="wh-hours_tue-error"', page)
    assert 'id="wh-hours_tue-error">“nine to five” is not a time range' in page
    assert 'id="wh-hours_wed-error">In “17:00-09:00” the end is not after the start.' in page
    assert 'value="nine to five"' in page  # what was typed is kept
    r = _post(app_client, "/app/settings/working-hours", csrf, timezone="America/Chicago",
              hours_thu="08:00-12:00, 11:00-13:00")
    assert r.status_code == 422 and 'id="wh-hours_thu-error">These hours overlap' in r.text
    r = _post(app_client, "/app/settings/working-hours", csrf, timezone="Mars/Olympus")
    assert r.status_code == 422 and 'id="wh-timezone-error">Choose your time zone' in r.text
    with db.session() as s:
        assert s.get(User, "u1").working_hours == {"mon": [["08:00", "17:00"]]}


def test_connect_caldav_through_the_form(db, app_client, make_token, radicale_server) -> None:
    csrf = _tech(db, app_client, make_token)
    server = radicale_server
    name = f"Personal {free_port()}"
    server.make_calendar(name)
    r = _post(app_client, "/app/settings/connect/caldav", csrf, url=server.base_url,
              username=server.username, password="pw-not-shown-9876")
    assert r.status_code == 303, r.text
    page = app_client.get(r.headers["location"]).text
    assert "Calendar account connected" in page
    assert f"CalDAV: {server.username}" in page and "Working" in page
    assert "pw-not-shown-9876" not in page
    with db.session() as s:
        cal = s.scalar(select(Calendar).where(Calendar.name == name))
        assert cal is not None and cal.role == "ignored"
        cal_id = cal.public_id
    assert re.search(rf'<input type="checkbox" name="conflict" value="{cal_id}"[^>]*>'
                     rf"{re.escape(name)}</label>", page)
    # Choose it as a conflict calendar (and, at once, as primary: primary wins).
    r = _post(app_client, "/app/settings/calendars", csrf, primary="", conflict=cal_id)
    assert r.status_code == 303
    with db.session() as s:
        cal = s.scalar(select(Calendar).where(Calendar.public_id == cal_id))
        assert cal.role == "conflict"
        conn = s.get(Connection, cal.connection_id)
        assert conn.next_sync_at is not None  # queued at once
        conn_id = conn.public_id
    body = urlencode([("csrf_token", csrf), ("primary", cal_id), ("conflict", cal_id)])
    r = app_client.post("/app/settings/calendars", content=body, follow_redirects=False,
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 303
    with db.session() as s:
        assert s.scalar(select(Calendar.role).where(Calendar.public_id == cal_id)) == "primary"
    # Disconnect.
    r = _post(app_client, f"/app/settings/connections/{conn_id}/disconnect", csrf)
    assert r.status_code == 303 and "done=disconnected" in r.headers["location"]
    with db.session() as s:
        assert s.scalar(select(Connection).where(Connection.public_id == conn_id)) is None


def test_connect_errors_in_a_technicians_words(db, app_client, make_token) -> None:
    csrf = _tech(db, app_client, make_token)
    cases = [
        ({"url": "", "username": "a", "password": "b"}, "url", None),
        ({"url": "ftp://x", "username": "a", "password": "b"}, "url", "https://"),
        ({"url": "http://127.0.0.1:8/", "username": "", "password": "b"}, "username",
         "Please fill this in."),
        ({"url": f"http://127.0.0.1:{free_port()}/", "username": "a",
          "password": "typed-secret"}, "url", "could not be reached"),
    ]
    for fields, field, words in cases:
        r = _post(app_client, "/app/settings/connect/caldav", csrf, **fields)
        assert r.status_code == 422, (fields, r.text[:300])
        m = re.search(rf'id="caldav-{field}-error">([^<]+)<', r.text)
        assert m is not None, (fields, field)
        assert words is None or words in m[1], m[1]
        assert "typed-secret" not in r.text
        assert "Traceback" not in r.text
        assert 'id="caldav-panel" class="panel" data-open' in r.text  # form stays open
    r = _post(app_client, "/app/settings/connect/icloud", csrf, apple_id="", app_password="x")
    assert r.status_code == 422 and 'id="icloud-apple_id-error">Please fill this in.' in r.text
    assert "App-Specific Passwords" in r.text  # the how-to


def test_oauth_not_configured_is_said_plainly(db, app_client, make_token) -> None:
    csrf = _tech(db, app_client, make_token)
    for provider, name in (("outlook", "Outlook"), ("google", "Google")):
        r = _post(app_client, f"/app/settings/connect/{provider}", csrf)
        assert r.status_code == 422, r.text[:300]
        m = re.search(rf'id="oauth-{provider}-error">([^<]+)<', r.text)
        assert m is not None and name in m[1] and "Traceback" not in r.text


def test_connect_outlook_signs_in_and_comes_back(db, settings, make_token) -> None:
    """Through the Graph emulator and the real msal code: "Connect Outlook" starts the
    sign-in with the self-service function, and the provider's callback returns the
    browser to /app/settings, which names the new connection."""
    from fastapi.testclient import TestClient

    from calsync.api.app import create_app
    from calsync.db.models import OAuthState
    from tests.emulators.graph import GraphEmulator, registered_outlook
    from tests.test_api_connections_oauth import sign_in as sign_in_at_graph

    assert import_document(db, {"users": [{"id": "u1", "name": "Jane Doe", "timezone": "UTC",
                                           "email": "jane@contoso.com"}]}).ok
    with GraphEmulator() as em, registered_outlook(em):
        em.add_mailbox("jane@contoso.com", (("Calendar", True),))
        with TestClient(create_app(em.configure(settings), db)) as client:
            csrf = csrf_of(sign_in(client, make_token("admin"), {"user_id": "u1"}).text)
            r = _post(client, "/app/settings/connect/outlook", csrf)
            assert r.status_code == 303, r.text[:500]
            authorize = r.headers["location"]
            with db.session() as s:
                assert s.scalar(select(OAuthState.return_to)) == \
                    f"{settings.server.base_url}/app/settings"
            back = client.post("/oauth/outlook/callback",
                               data=sign_in_at_graph(em, authorize), follow_redirects=False)
            assert back.status_code == 303, back.text
            page = client.get(path_of(back.headers["location"])).text
            assert "Outlook connected. Now choose your calendars below." in page
            assert "Outlook: jane@contoso.com" in page
            failed = client.get("/app/settings", params={"provider": "outlook",
                                                         "error": "access_denied"})
            assert 'id="oauth-outlook-error">Outlook sign-in did not finish' in failed.text


def test_reconnect_banner_when_a_connection_needs_reauth(db, app_client, make_token) -> None:
    csrf = _tech(db, app_client, make_token)
    add_calendar(db, "u1", name="Work")
    with db.session() as s:
        s.execute(update(Connection).values(status="needs_reauth",
                                            last_error="401 from the server"))
        conn_id = s.scalar(select(Connection.public_id))
    page = app_client.get("/app/settings").text
    banner = page.split("<h1>Calendar settings</h1>", 1)[1].split('id="calendar-feed"')[0]
    assert 'role="alert"' in banner and "needs you to sign in again" in banner
    assert ">Reconnect</button>" in banner
    assert "Needs you to sign in again" in page
    r = app_client.get("/app/settings", params={"reconnect": conn_id})
    assert 'id="caldav-panel" class="panel" data-open' in r.text
    assert 'value="u1@example.com"' in r.text  # the account is filled in
    # Sync now is refused while it needs re-auth, with the reason next to it.
    r = _post(app_client, f"/app/settings/connections/{conn_id}/sync", csrf)
    assert r.status_code == 409 and "reconnect" in r.text.lower()


def test_a_technician_cannot_touch_another_users_connection(db, app_client,
                                                            make_token) -> None:
    assert import_document(db, {"users": [{"id": "u9", "name": "Other", "timezone": "UTC"}]}).ok
    add_calendar(db, "u9", name="Theirs")
    csrf = _tech(db, app_client, make_token)
    with db.session() as s:
        conn_id = s.scalar(select(Connection.public_id).where(Connection.user_id == "u9"))
    r = _post(app_client, f"/app/settings/connections/{conn_id}/disconnect", csrf)
    assert r.status_code == 403
    with db.session() as s:
        assert s.scalar(select(Connection).where(Connection.public_id == conn_id)) is not None
    page = app_client.get("/app/settings").text
    assert "Theirs" not in page
