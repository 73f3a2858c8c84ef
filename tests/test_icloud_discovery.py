"""iCloud discovery through a loopback fixture that answers like iCloud.

Host A (127.0.0.1, like caldav.icloud.com) answers the root PROPFIND with the principal,
and the principal's calendar-home-set points at host B (127.0.0.2, like
pNN-caldav.icloud.com), which proxies to a real Radicale with hrefs rewritten to
iCloud's ``/<dsid>/calendars/`` layout. Both require Basic auth with the app password.
One collection is VTODO-only ("Reminders") and must be skipped.
"""

from __future__ import annotations

import base64
import datetime as dt
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from zoneinfo import ZoneInfo

import httpx
import pytest

from calsync.config import Settings, load_settings
from calsync.errors import UserError
from calsync.sync.connector import ConnectContext, OutgoingEvent, Window, load_connector_factory
from tests.caldav_servers import DavServer, radicale_server  # noqa: F401
from tests.conftest import need

APPLE_ID = "jane.appleseed@icloud.com"
APP_PASSWORD = "abcd-efgh-ijkl-mnop"
DSID = "10000123456"
BACKEND_USER = "icloud-jane"
UTC = dt.timezone.utc


@dataclass
class FakeIcloud:
    root_url: str
    home_url: str
    seen: dict[str, list[str]] = field(default_factory=lambda: {"root": [], "home": []})


def _authorized(header: str | None) -> bool:
    expected = base64.b64encode(f"{APPLE_ID}:{APP_PASSWORD}".encode()).decode()
    return header == f"Basic {expected}"


def _multistatus(href: str, prop: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><multistatus xmlns="DAV:" '
            f'xmlns:C="urn:ietf:params:xml:ns:caldav"><response><href>{href}</href>'
            f"<propstat><prop>{prop}</prop><status>HTTP/1.1 200 OK</status></propstat>"
            f"</response></multistatus>").encode()


def _serve(host: str, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def fake_icloud(radicale_server: DavServer) -> Iterator[FakeIcloud]:  # noqa: F811
    backend = httpx.Client(auth=httpx.BasicAuth(BACKEND_USER, "x"), timeout=30)
    backend_home = f"{radicale_server.base_url}{BACKEND_USER}/"
    backend.request("PROPFIND", backend_home, headers={"Depth": "0"})
    for slug, name, comp in (("home", "Home", "VEVENT"), ("work", "Work", "VEVENT"),
                             ("tasks", "Reminders", "VTODO")):
        body = (f'<?xml version="1.0"?><C:mkcalendar xmlns:D="DAV:" '
                f'xmlns:C="urn:ietf:params:xml:ns:caldav"><D:set><D:prop><D:displayname>'
                f"{name}</D:displayname><C:supported-calendar-component-set>"
                f'<C:comp name="{comp}"/></C:supported-calendar-component-set>'
                f"</D:prop></D:set></C:mkcalendar>")
        resp = backend.request("MKCALENDAR", f"{backend_home}{slug}/", content=body.encode(),
                               headers={"Content-Type": "application/xml"})
        need(resp.status_code == 201, f"MKCALENDAR on Radicale failed: {resp.status_code}")

    state: dict[str, FakeIcloud] = {}

    class Root(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_PROPFIND(self) -> None:  # noqa: N802
            fake = state["fake"]
            fake.seen["root"].append(f"{self.command} {self.path}")
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if not _authorized(self.headers.get("Authorization")):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="iCloud"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.path == "/":
                body = _multistatus("/", f"<current-user-principal><href>/{DSID}/principal/"
                                         "</href></current-user-principal>")
            elif self.path == f"/{DSID}/principal/":
                body = _multistatus(self.path, f"<C:calendar-home-set><href>{fake.home_url}"
                                               "</href></C:calendar-home-set>")
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(207)
            self.send_header("Content-Type", "application/xml; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Home(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _proxy(self) -> None:
            fake = state["fake"]
            fake.seen["home"].append(f"{self.command} {self.path}")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if not _authorized(self.headers.get("Authorization")):
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            prefix = f"/{DSID}/calendars/"
            if not self.path.startswith(prefix):
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            target = backend_home + self.path[len(prefix):]
            headers = {k: v for k, v in self.headers.items()
                       if k.lower() in ("depth", "content-type", "if-match", "if-none-match")}
            body = body.replace(prefix.encode(), f"/{BACKEND_USER}/".encode())
            resp = backend.request(self.command, target, content=body, headers=headers)
            out = resp.content
            out = out.replace(f"/{BACKEND_USER}/".encode(), prefix.encode())
            self.send_response(resp.status_code)
            for key in ("Content-Type", "ETag"):
                if key.lower() in resp.headers:
                    self.send_header(key, resp.headers[key.lower()])
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        do_PROPFIND = do_REPORT = do_GET = do_PUT = do_DELETE = _proxy  # noqa: N815

    root = _serve("127.0.0.1", Root)
    home = _serve("127.0.0.2", Home)
    fake = FakeIcloud(root_url=f"http://127.0.0.1:{root.server_address[1]}/",
                      home_url=f"http://127.0.0.2:{home.server_address[1]}/{DSID}/calendars/")
    state["fake"] = fake
    yield fake
    root.shutdown()
    home.shutdown()
    root.server_close()
    home.server_close()
    backend.close()


def icloud_ctx(url: str | None, password: str = APP_PASSWORD,
               settings: Settings | None = None) -> ConnectContext:
    return ConnectContext(provider="icloud", url=url, account=APPLE_ID,
                          credentials={"username": APPLE_ID, "password": password},
                          settings=settings or Settings())


def test_discovery_follows_the_home_set_to_another_host(fake_icloud: FakeIcloud) -> None:
    factory = load_connector_factory("icloud")
    assert factory.providers == ("icloud",)
    ctx, calendars = factory.verify(icloud_ctx(fake_icloud.root_url))
    assert ctx.url == fake_icloud.home_url
    assert [c.name for c in calendars] == ["Home", "Work"]  # Reminders (VTODO) skipped
    assert all(c.id.startswith(fake_icloud.home_url) for c in calendars)
    assert fake_icloud.seen["root"] == ["PROPFIND /", f"PROPFIND /{DSID}/principal/"]

    # Later syncs start from the stored home URL: the root host is not asked again.
    before = list(fake_icloud.seen["root"])
    conn = factory.connect(ctx)
    home = next(c for c in calendars if c.name == "Home")
    event = OutgoingEvent(key="job-j1", uid="calsync-job-j1@example.com", summary="Install",
                          start=dt.datetime(2026, 11, 24, 9, tzinfo=ZoneInfo("America/Chicago")),
                          end=dt.datetime(2026, 11, 24, 11, tzinfo=ZoneInfo("America/Chicago")),
                          all_day=False, tzid="America/Chicago")
    created = conn.create(home.id, event)
    assert created.remote_id == f"/{DSID}/calendars/home/job-j1.ics"
    window = Window(dt.datetime(2026, 11, 1, tzinfo=UTC), dt.datetime(2026, 12, 1, tzinfo=UTC))
    pulled = conn.changes(home.id, None, window)
    assert [e.calsync_key for e in pulled.changed] == ["job-j1"]
    noop = conn.changes(home.id, pulled.token, window)
    assert noop.requests == 1 and not noop.changed
    assert conn.list_calendars() == calendars
    conn.close()
    assert fake_icloud.seen["root"] == before
    assert f"PUT /{DSID}/calendars/home/job-j1.ics" in fake_icloud.seen["home"]


def test_wrong_app_password_is_a_user_error_at_verify(fake_icloud: FakeIcloud) -> None:
    factory = load_connector_factory("icloud")
    with pytest.raises(UserError) as info:
        factory.verify(icloud_ctx(fake_icloud.root_url, password="wrong-password"))
    assert "wrong username or app password" in str(info.value)
    assert fake_icloud.root_url in str(info.value)
    assert "wrong-password" not in str(info.value)


def test_default_url_comes_from_settings(fake_icloud: FakeIcloud) -> None:
    settings = load_settings(env={})
    settings = replace(settings, icloud=replace(settings.icloud, url=fake_icloud.root_url))
    ctx, calendars = load_connector_factory("icloud").verify(icloud_ctx(None, settings=settings))
    assert ctx.url == fake_icloud.home_url and len(calendars) == 2
