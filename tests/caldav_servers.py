"""Real CalDAV servers for the tests: Radicale and Xandikos on 127.0.0.1.

Each server runs once per test session (a subprocess on a free port, storage in a temp
folder, authentication off) and is stopped at the end of the session. Tests get a fresh
calendar each through :meth:`DavServer.make_calendar`. Fixtures: ``radicale_server``,
``xandikos_server`` (import them into a test module, or reach the shared processes with
:func:`shared_server` from code that only has pytest's ``config``, e.g. contract backends).
With ``CI=true`` a server that fails to start fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import need

USERNAME = "tech@example.com"
XML = {"Content-Type": "application/xml; charset=utf-8"}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class DavServer:
    """A running CalDAV server: where it answers and how to act on it as a user would."""

    kind: str
    base_url: str  # http://127.0.0.1:PORT/
    home_url: str  # the calendar home set of USERNAME
    username: str
    process: subprocess.Popen[bytes]
    folder: Path
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(auth=httpx.BasicAuth(self.username, "secret"), timeout=30)

    def make_calendar(self, name: str | None = None,
                      components: tuple[str, ...] = ("VEVENT",)) -> str:
        """MKCALENDAR a fresh collection under the home set; returns its URL."""
        slug = f"cal-{uuid.uuid4().hex[:10]}"
        url = f"{self.home_url}{slug}/"
        comps = "".join(f'<C:comp name="{c}"/>' for c in components)
        body = (f'<?xml version="1.0" encoding="utf-8"?><C:mkcalendar xmlns:D="DAV:" '
                f'xmlns:C="urn:ietf:params:xml:ns:caldav"><D:set><D:prop>'
                f"<D:displayname>{name or slug}</D:displayname>"
                f"<C:supported-calendar-component-set>{comps}"
                f"</C:supported-calendar-component-set></D:prop></D:set></C:mkcalendar>")
        resp = self.http.request("MKCALENDAR", url, content=body.encode(), headers=XML)
        assert resp.status_code in (200, 201), (resp.status_code, resp.text)
        return url

    def make_read_only_calendar(self, name: str | None = None) -> str:
        """A calendar USERNAME may read but not write (Radicale only): it belongs to
        SHARED_OWNER. Returns its URL; ``put``/``delete`` on it act as that owner."""
        if self.kind != "radicale":
            raise NotImplementedError(f"{self.kind}: no read-only calendars in the fixture")
        owner = httpx.Client(auth=httpx.BasicAuth(SHARED_OWNER, "secret"), timeout=30)
        try:
            owner.request("PROPFIND", f"{self.base_url}{SHARED_OWNER}/", headers={"Depth": "0"})
            slug = f"ro-{uuid.uuid4().hex[:10]}"
            url = f"{self.base_url}{SHARED_OWNER}/{slug}/"
            body = (f'<?xml version="1.0" encoding="utf-8"?><C:mkcalendar xmlns:D="DAV:" '
                    f'xmlns:C="urn:ietf:params:xml:ns:caldav"><D:set><D:prop>'
                    f"<D:displayname>{name or slug}</D:displayname></D:prop></D:set>"
                    f"</C:mkcalendar>")
            resp = owner.request("MKCALENDAR", url, content=body.encode(), headers=XML)
            assert resp.status_code in (200, 201), (resp.status_code, resp.text)
        finally:
            owner.close()
        return url

    def _client_for(self, url: str) -> httpx.Client:
        if f"/{SHARED_OWNER}/" in url:
            return httpx.Client(auth=httpx.BasicAuth(SHARED_OWNER, "secret"), timeout=30)
        return self.http

    def put(self, url: str, ics: str, headers: dict[str, str] | None = None) -> httpx.Response:
        client = self._client_for(url)
        if client is not self.http:
            with client:
                return client.put(url, content=ics.encode("utf-8"),
                                  headers={"Content-Type": "text/calendar; charset=utf-8",
                                           **(headers or {})})
        resp = self.http.put(url, content=ics.encode("utf-8"),
                             headers={"Content-Type": "text/calendar; charset=utf-8",
                                      **(headers or {})})
        return resp

    def get(self, url: str) -> httpx.Response:
        return self.http.get(url)

    def delete(self, url: str) -> httpx.Response:
        return self.http.delete(url)

    def stop(self) -> None:
        self.http.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)


_RADICALE_LAUNCHER = """
import sys
from radicale import config, server
configuration = config.load()
configuration.update({
    "storage": {"filesystem_folder": sys.argv[1], "_filesystem_fsync": "False"},
    "auth": {"type": "none"}, "rights": {"type": "from_file", "file": sys.argv[3]},
    "server": {"hosts": sys.argv[2]}, "logging": {"level": "warning"},
}, "calsync test fixture", privileged=True)
server.serve(configuration)
"""
# Radicale's owner_only, plus the calendars of SHARED_OWNER readable by everyone (read-only
# calendars for the contract suite).
SHARED_OWNER = "shared-owner"
_RADICALE_RIGHTS = f"""
[owner-principal]
user: .+
collection: {{user}}
permissions: RrWw

[owner-collections]
user: .+
collection: {{user}}/.+
permissions: RrWw

[shared-principal]
user: .+
collection: {SHARED_OWNER}
permissions: R

[shared-calendars]
user: .+
collection: {SHARED_OWNER}/[^/]+
permissions: r

[root]
user: .+
collection:
permissions: R
"""


def _command(kind: str, folder: Path, port: int) -> list[str]:
    if kind == "radicale":
        # Radicale's own server with the settings of ``python -m radicale
        # --storage-filesystem-folder DIR --auth-type none --rights-type owner_only
        # --server-hosts 127.0.0.1:PORT``, plus no fsync per write (a throw-away folder;
        # that option is private, so it is set the way Radicale's own tests set it).
        rights = folder / "rights"
        rights.write_text(_RADICALE_RIGHTS)
        return [sys.executable, "-c", _RADICALE_LAUNCHER, str(folder / "collections"),
                f"127.0.0.1:{port}", str(rights)]
    if kind == "xandikos":
        return [sys.executable, "-m", "xandikos.web", "--defaults", "-d", str(folder / "data"),
                "-l", "127.0.0.1", "-p", str(port), "--state-dir", str(folder / "state"),
                "--no-detect-systemd"]
    raise ValueError(f"unknown CalDAV server kind {kind!r}")


def _home(kind: str, base: str) -> str:
    if kind == "radicale":
        return f"{base}{USERNAME}/"
    return f"{base}user/calendars/"


def start_server(kind: str, timeout: float = 30.0) -> DavServer:
    """Start ``kind`` ("radicale" or "xandikos") and wait until it answers PROPFIND.
    Raises RuntimeError with the server's output when it does not come up."""
    folder = Path(tempfile.mkdtemp(prefix=f"calsync-{kind}-"))
    port = free_port()
    log = open(folder / "server.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(_command(kind, folder, port), stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    base = f"http://127.0.0.1:{port}/"
    server = DavServer(kind, base, _home(kind, base), USERNAME, proc, folder)
    deadline = time.monotonic() + timeout
    body = ('<?xml version="1.0"?><D:propfind xmlns:D="DAV:"><D:prop>'
            "<D:current-user-principal/></D:prop></D:propfind>").encode()
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                resp = server.http.request("PROPFIND", server.home_url, content=body,
                                           headers={**XML, "Depth": "0"})
                if resp.status_code in (207, 404):
                    if resp.status_code == 404 and kind == "radicale":
                        # Radicale creates the principal collection on first access.
                        server.http.request("PROPFIND", base, content=body,
                                            headers={**XML, "Depth": "0"})
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        output = (folder / "server.log").read_text(errors="replace")[-2000:]
        server.stop()
        raise RuntimeError(f"{kind} did not start on {base}: {output}")
    finally:
        log.close()


_RUNNING: dict[str, DavServer] = {}
_FAILED: dict[str, str] = {}


def shared_server(kind: str, config: pytest.Config) -> DavServer:
    """The session's one ``kind`` server, started on first use and stopped when the test
    session ends. Skips (locally) or fails (CI) when it cannot start."""
    if kind in _FAILED:
        need(False, _FAILED[kind])
    if kind not in _RUNNING:
        try:
            server = start_server(kind)
        except (RuntimeError, OSError) as exc:
            _FAILED[kind] = f"{kind} CalDAV server could not start: {exc}"
            need(False, _FAILED[kind])
            raise
        _RUNNING[kind] = server

        def stop(kind: str = kind) -> None:
            running = _RUNNING.pop(kind, None)
            if running is not None:
                running.stop()

        config.add_cleanup(stop)
    return _RUNNING[kind]


@pytest.fixture(scope="session")
def radicale_server(request: pytest.FixtureRequest) -> DavServer:
    return shared_server("radicale", request.config)


@pytest.fixture(scope="session")
def xandikos_server(request: pytest.FixtureRequest) -> DavServer:
    return shared_server("xandikos", request.config)


@pytest.fixture(params=["radicale", "xandikos"])
def dav_server(request: pytest.FixtureRequest) -> Any:
    """Each test using it runs against both servers."""
    return shared_server(request.param, request.config)
