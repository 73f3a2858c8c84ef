"""Request bodies are capped while they arrive, on a real uvicorn server on 127.0.0.1:
an over-size Content-Length is refused before the body is sent, a chunked body is cut off
once it passes the cap, webhooks have a smaller cap, and normal bodies still go through."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace

import httpx
import pytest
import uvicorn

from calsync.api.app import create_app
from calsync.api.auth import create_api_token
from calsync.config import Settings, load_settings
from calsync.db.session import Database
from calsync.errors import ConfigError
from tests.conftest import SECRET

MB = 1024 * 1024


@dataclass
class Served:
    host: str
    port: int
    admin: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def _settings(db: Database, **server: int) -> Settings:
    base = load_settings(env={"CALSYNC_SECRET_KEY": SECRET})
    return replace(base, database=replace(base.database, url=db.url),
                   server=replace(base.server, **server))


@contextlib.contextmanager
def _serve(settings: Settings, db: Database) -> Iterator[Served]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(settings, db), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(600):
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.05)
        assert server.started, "uvicorn did not start"
        with db.session() as s:
            token = create_api_token(s, "admin", "admin", None)
        yield Served("127.0.0.1", sock.getsockname()[1], {"Authorization": f"Bearer {token}"})
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture
def served(sqlite_db: Database) -> Iterator[Served]:
    """The app with the default caps (1 MB, webhooks 64 KB)."""
    with _serve(_settings(sqlite_db), sqlite_db) as served:
        yield served


def _connect(served: Served) -> socket.socket:
    conn = socket.create_connection((served.host, served.port))
    conn.settimeout(30)  # a guard against hanging forever, not a timing assertion
    return conn


def _read_response(conn: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one response to the end (the server closes the connection after a 413)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip()
               for k, v in (line.split(":", 1) for line in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = conn.recv(65536)
        assert chunk, "connection closed inside the response body"
        body += chunk
    return int(status_line.split()[1]), headers, body[:length]


def _request_head(method: str, path: str, served: Served, *extra: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {served.host}:{served.port}",
             "Content-Type: application/json", *extra, "", ""]
    return "\r\n".join(lines).encode()


def _assert_too_large(status: int, headers: dict[str, str], body: bytes, limit: int) -> None:
    assert status == 413
    assert headers["content-type"] == "application/json"
    assert headers.get("connection") == "close"
    doc = json.loads(body)
    assert doc["error"] == "payload_too_large"
    assert str(limit) in doc["detail"]


@pytest.mark.parametrize("path, method, limit", [
    ("/webhooks/outlook", "POST", 64 * 1024),
    ("/api/users/u1", "PUT", MB),
])
def test_an_over_size_content_length_is_refused_before_the_body_is_sent(
        served: Served, path: str, method: str, limit: int) -> None:
    with _connect(served) as conn:
        # 200 MB announced, not a byte of it sent: the answer must come anyway.
        conn.sendall(_request_head(method, path, served, f"Content-Length: {200 * MB}"))
        status, headers, body = _read_response(conn)
        _assert_too_large(status, headers, body, limit)
        assert conn.recv(1) == b""  # and the server hung up instead of waiting for the body


def test_a_chunked_webhook_body_is_cut_off_once_it_passes_the_cap(served: Served) -> None:
    chunk = b"x" * 4096
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    budget = MB  # what the client is prepared to send: 16 times the cap
    sent = 0
    with _connect(served) as conn:
        conn.sendall(_request_head("POST", "/webhooks/outlook", served,
                                   "Transfer-Encoding: chunked"))
        answered = False
        while sent < budget:
            try:
                conn.sendall(frame)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            # Pace the client so that the server has read all it was sent when it hangs
            # up (a close with unread data would reset the connection before we read).
            readable, _, _ = select.select([conn], [], [], 0.2)
            if readable:
                answered = True
                break
        assert answered, f"no answer after {sent} bytes"
        status, headers, body = _read_response(conn)
    _assert_too_large(status, headers, body, 64 * 1024)
    assert sent < 2 * 64 * 1024 + 16 * 4096  # stopped near the cap, not after the budget


def test_a_chunked_api_body_past_the_default_cap_is_refused(served: Served) -> None:
    def grow() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(2 * MB // 65536):
            yield b"a" * 65536
        yield b'", "email": "j@x.com", "timezone": "UTC"}'

    r = httpx.put(f"{served.url}/api/users/u1", content=grow(), headers=served.admin,
                  timeout=30)
    assert r.status_code == 413
    assert r.json()["error"] == "payload_too_large"


def test_normal_bodies_are_still_accepted(served: Served) -> None:
    user = {"name": "Jane", "email": "j@x.com", "timezone": "UTC"}
    r = httpx.put(f"{served.url}/api/users/u1", json=user, headers=served.admin, timeout=30)
    assert r.status_code == 201, r.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        body = json.dumps(dict(user, name="Jane " + "é" * 1000)).encode()
        for i in range(0, len(body), 100):
            yield body[i:i + 100]

    r = httpx.put(f"{served.url}/api/users/u2", content=chunks(),
                  headers={**served.admin, "Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 201, r.text
    assert r.request.headers["transfer-encoding"] == "chunked"
    # a webhook of a normal size gets to the handler (which rejects the unknown channel)
    notice = {"value": [{"subscriptionId": "nope", "clientState": "x",
                         "resource": "me/events/1", "changeType": "updated"}]}
    r = httpx.post(f"{served.url}/webhooks/outlook", json=notice, timeout=30)
    assert r.status_code == 403, r.text
    # a body of exactly the cap is within it
    exact = json.dumps(dict(user, name="")).encode()
    padded = exact[:-1] + b" " * (MB - len(exact)) + b"}"
    assert len(padded) == MB
    r = httpx.put(f"{served.url}/api/users/u3", content=padded,
                  headers={**served.admin, "Content-Type": "application/json"}, timeout=30)
    assert r.status_code != 413


def test_the_caps_are_configurable(sqlite_db: Database) -> None:
    settings = _settings(sqlite_db, max_body_bytes=2000, max_webhook_body_bytes=100)
    with _serve(settings, sqlite_db) as served:
        user = {"name": "J" * 3000, "email": "j@x.com", "timezone": "UTC"}
        r = httpx.put(f"{served.url}/api/users/u1", json=user, headers=served.admin,
                      timeout=30)
        assert r.status_code == 413 and "2000 bytes" in r.json()["detail"]
        r = httpx.post(f"{served.url}/webhooks/google", content=b"x" * 200, timeout=30)
        assert r.status_code == 413 and "100 bytes" in r.json()["detail"]


@pytest.mark.parametrize("key", ["max_body_bytes", "max_webhook_body_bytes"])
def test_a_cap_must_be_positive(tmp_path, key: str) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[server]\n{key} = 0\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env={"CALSYNC_SECRET_KEY": SECRET})
    assert info.value.key == f"server.{key}"
