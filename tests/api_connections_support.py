"""Real servers for the self-service API tests.

- :func:`password_radicale`: a real Radicale that checks passwords (htpasswd, plain), so a
  wrong password is refused the way a real CalDAV server refuses it; accounts are added
  while it runs (Radicale reads the file at each login), one per test.
- :func:`plain_http_server`: a web server that is not CalDAV (answers GET, refuses
  PROPFIND with 501 as http.server does).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.caldav_servers import XML, free_port
from tests.conftest import need

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
}, "calsync test fixture", privileged=True)
server.serve(configuration)
"""


@dataclass
class CaldavAccount:
    """One account on the server: its login and its calendars (name -> collection URL)."""

    server: PasswordRadicale
    username: str
    password: str
    calendars: dict[str, str] = field(default_factory=dict)

    @property
    def home_url(self) -> str:
        return f"{self.server.base_url}{self.username}/"

    def client(self) -> httpx.Client:
        return httpx.Client(auth=httpx.BasicAuth(self.username, self.password), timeout=30)

    def make_calendar(self, name: str) -> str:
        url = f"{self.home_url}{name.lower()}-{uuid.uuid4().hex[:6]}/"
        body = (f'<?xml version="1.0" encoding="utf-8"?><C:mkcalendar xmlns:D="DAV:" '
                f'xmlns:C="urn:ietf:params:xml:ns:caldav"><D:set><D:prop>'
                f"<D:displayname>{name}</D:displayname><C:supported-calendar-component-set>"
                f'<C:comp name="VEVENT"/></C:supported-calendar-component-set></D:prop>'
                f"</D:set></C:mkcalendar>")
        with self.client() as http:
            resp = http.request("MKCALENDAR", url, content=body.encode(), headers=XML)
        assert resp.status_code in (200, 201), (resp.status_code, resp.text)
        self.calendars[name] = url
        return url

    def hrefs(self, name: str) -> list[str]:
        """The objects (``.ics`` hrefs) in calendar ``name``, as the server lists them."""
        body = ('<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop><D:getetag/>'
                "</D:prop></D:propfind>").encode()
        with self.client() as http:
            resp = http.request("PROPFIND", self.calendars[name], content=body,
                                headers={**XML, "Depth": "1"})
        assert resp.status_code == 207, resp.text
        return sorted(h for h in re.findall(r"<[^>]*href>([^<]+)</[^>]*href>", resp.text)
                      if h.endswith(".ics"))

    def put_event(self, name: str, uid: str, start: str, end: str, summary: str) -> None:
        ics = ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\nBEGIN:VEVENT\r\n"
               f"UID:{uid}\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:{start}\r\n"
               f"DTEND:{end}\r\nSUMMARY:{summary}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n")
        with self.client() as http:
            resp = http.put(f"{self.calendars[name]}{uid}.ics", content=ics.encode(),
                            headers={"Content-Type": "text/calendar; charset=utf-8"})
        assert resp.status_code in (200, 201, 204), resp.text

    def get(self, href: str) -> httpx.Response:
        with self.client() as http:
            return http.get(httpx.URL(self.server.base_url).join(href))


@dataclass
class PasswordRadicale:
    base_url: str
    folder: Path
    process: subprocess.Popen[bytes]

    def account(self, *calendars: str, username: str | None = None) -> CaldavAccount:
        """A new account (unique name unless given, random password) with these calendars."""
        acct = CaldavAccount(self, username or f"tech-{uuid.uuid4().hex[:8]}",
                             uuid.uuid4().hex)
        with open(self.folder / "users", "a", encoding="utf-8") as f:
            f.write(f"{acct.username}:{acct.password}\n")
        with acct.client() as http:  # Radicale makes the principal on first access
            http.request("PROPFIND", acct.home_url, headers={"Depth": "0"})
        for name in calendars:
            acct.make_calendar(name)
        return acct

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)


def password_radicale(timeout: float = 30.0) -> Iterator[PasswordRadicale]:
    """Start Radicale with password checks on a free port; stop it afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="calsync-radicale-auth-"))
    (folder / "users").write_text("", encoding="utf-8")
    port = free_port()
    log = open(folder / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(folder / "collections"),
                             f"127.0.0.1:{port}", str(folder / "users")],
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    server = PasswordRadicale(f"http://127.0.0.1:{port}/", folder, proc)
    deadline = time.monotonic() + timeout
    up = False
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            httpx.request("PROPFIND", server.base_url, timeout=2)
            up = True
            break
        except httpx.TransportError:
            time.sleep(0.1)
    log.close()
    if not up:
        output = (folder / "server.log").read_text(errors="replace")[-2000:]
        server.stop()
        need(False, f"Radicale with passwords did not start: {output}")
    try:
        yield server
    finally:
        server.stop()


class _NotCaldav(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        body = b"<html><body>Welcome to our web site</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def plain_http_server() -> Iterator[str]:
    """A web site on 127.0.0.1 that is not a CalDAV server; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotCaldav)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class FakeIcloudRoot:
    """iCloud's front door (``caldav.icloud.com``): checks the Apple ID and app-specific
    password, answers the principal, and points the calendar-home-set at another host,
    here the account's home on the password-checking Radicale (as iCloud points at
    ``pNN-caldav.icloud.com``)."""

    def __init__(self) -> None:
        self.accounts: dict[str, CaldavAccount] = {}  # "Basic ..." -> account
        self.seen: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: bytes = b"") -> None:
                self.send_response(status)
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="iCloud"')
                if body:
                    self.send_header("Content-Type", "application/xml; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PROPFIND(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake.seen.append(self.path)
                acct = fake.accounts.get(self.headers.get("Authorization") or "")
                if acct is None:
                    return self._send(401)
                if self.path == "/":
                    prop = ("<current-user-principal><href>/1234/principal/</href>"
                            "</current-user-principal>")
                elif self.path == "/1234/principal/":
                    prop = (f"<C:calendar-home-set><href>{acct.home_url}</href>"
                            f"</C:calendar-home-set>")
                else:
                    return self._send(404)
                body = (f'<?xml version="1.0" encoding="UTF-8"?><multistatus xmlns="DAV:" '
                        f'xmlns:C="urn:ietf:params:xml:ns:caldav"><response><href>{self.path}'
                        f"</href><propstat><prop>{prop}</prop><status>HTTP/1.1 200 OK"
                        f"</status></propstat></response></multistatus>").encode()
                return self._send(207, body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"

    def register(self, account: CaldavAccount) -> None:
        """Let ``account`` (username = Apple ID, password = app password) sign in."""
        import base64

        token = base64.b64encode(f"{account.username}:{account.password}".encode()).decode()
        self.accounts[f"Basic {token}"] = account

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# Fixtures of the modules that connect accounts (API, pages, roles); tests/conftest.py
# loads this module as a plugin, so a module of its own may still define its own.
@pytest.fixture(scope="module")
def radicale() -> Iterator[PasswordRadicale]:
    yield from password_radicale()


@pytest.fixture(scope="module")
def icloud_root() -> Iterator[FakeIcloudRoot]:
    root = FakeIcloudRoot()
    yield root
    root.close()


@pytest.fixture(scope="module")
def not_caldav_url() -> Iterator[str]:
    yield from plain_http_server()
