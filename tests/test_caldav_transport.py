"""The CalDAV transport against loopback HTTP servers that misbehave: XML bombs and
external entities (refused by defusedxml), over-size answers (refused while streaming),
and throttling (retried once at the HTTP edge; a Retry-After past the cap is raised)."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from calsync.config import Settings
from calsync.errors import ProviderError, Throttled, UserError
from calsync.sync.connector import ConnectContext, Window, load_connector_factory
from calsync_caldav.connector import CaldavConnector

UTC = dt.timezone.utc
WINDOW = Window(dt.datetime(2026, 10, 1, tzinfo=UTC), dt.datetime(2027, 12, 1, tzinfo=UTC))


@dataclass
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    chunks: Iterator[bytes] | None = None  # streamed (chunked) instead of body


@dataclass
class LoopbackDav:
    """An HTTP server on 127.0.0.1 answering each request with the next planned answer
    (the last one repeats). Records what it was asked."""

    answers: list[Answer]
    asked: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""

    def next(self) -> Answer:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


@pytest.fixture
def loopback() -> Iterator[Callable[[list[Answer]], LoopbackDav]]:
    servers: list[ThreadingHTTPServer] = []

    def start(answers: list[Answer]) -> LoopbackDav:
        dav = LoopbackDav(answers)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                dav.asked.append((self.command, self.path))
                answer = dav.next()
                self.send_response(answer.status)
                for key, value in answer.headers.items():
                    self.send_header(key, value)
                if answer.chunks is not None:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    try:
                        for chunk in answer.chunks:
                            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                        self.wfile.write(b"0\r\n\r\n")
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # the client stopped reading: what the cap is for
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            do_PROPFIND = do_REPORT = do_GET = do_PUT = do_DELETE = _answer  # noqa: N815

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        dav.url = f"http://127.0.0.1:{server.server_address[1]}/cal/"
        return dav

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def connect(dav: LoopbackDav, sleeps: list[float] | None = None,
            settings: Settings | None = None) -> CaldavConnector:
    options: dict[str, object] = {"home_url": dav.url}
    if sleeps is not None:
        options["sleep"] = sleeps.append
    ctx = ConnectContext(provider="caldav", url=dav.url, account="tech@example.com",
                         credentials={"username": "tech@example.com", "password": "hunter2"},
                         settings=settings or Settings(), options=options)
    conn = load_connector_factory("caldav").connect(ctx)
    assert isinstance(conn, CaldavConnector)
    return conn


MULTISTATUS_OK = (b'<?xml version="1.0"?><d:multistatus xmlns:d="DAV:">'
                  b"<d:sync-token>t1</d:sync-token></d:multistatus>")

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<d:multistatus xmlns:d="DAV:"><d:response><d:href>/cal/&lol9;.ics</d:href>
<d:status>HTTP/1.1 404 Not Found</d:status></d:response>
<d:sync-token>t2</d:sync-token></d:multistatus>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE m [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<d:multistatus xmlns:d="DAV:"><d:response><d:href>/cal/&secret;.ics</d:href>
<d:status>HTTP/1.1 404 Not Found</d:status></d:response>
<d:sync-token>t2</d:sync-token></d:multistatus>"""


@pytest.mark.parametrize("body", [BILLION_LAUGHS, EXTERNAL_ENTITY],
                         ids=["billion-laughs", "external-entity"])
def test_xml_with_entities_is_refused(loopback: Callable[[list[Answer]], LoopbackDav],
                                      body: bytes) -> None:
    dav = loopback([Answer(207, body, {"Content-Type": "application/xml"})])
    conn = connect(dav)
    with pytest.raises(ProviderError) as info:
        conn.changes(dav.url, "caldav1:sync:t1", WINDOW)
    message = str(info.value)
    assert f"sync-collection at {dav.url}: unreadable answer (refused XML" in message
    assert "root:" not in message and "lollol" not in message
    assert "\n" not in message
    conn.close()


def test_xml_with_entities_at_connect_time_is_a_user_error(
        loopback: Callable[[list[Answer]], LoopbackDav]) -> None:
    dav = loopback([Answer(207, BILLION_LAUGHS, {"Content-Type": "application/xml"})])
    ctx = ConnectContext(provider="caldav", url=dav.url, account="a",
                         credentials={"username": "a", "password": "p"}, settings=Settings())
    with pytest.raises(UserError, match="refused XML"):
        load_connector_factory("caldav").verify(ctx)


def _endless(chunk: bytes, total: int) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        sent += len(chunk)
        yield chunk


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_oversize_answer_is_refused_naming_the_url(
        loopback: Callable[[list[Answer]], LoopbackDav], framing: str) -> None:
    limit = 1024 * 1024
    if framing == "content-length":
        answer = Answer(207, b"<" * (limit + 1), {"Content-Type": "application/xml"})
    else:  # no length announced: refused once the bytes read pass the cap
        answer = Answer(207, headers={"Content-Type": "application/xml"},
                        chunks=_endless(b"<" * 65536, 64 * limit))
    dav = loopback([answer])
    conn = connect(dav)
    conn.session.max_response_bytes = limit
    with pytest.raises(ProviderError) as info:
        conn.changes(dav.url, "caldav1:sync:t1", WINDOW)
    assert f"the answer of {dav.url} to sync-collection is too large" in str(info.value)
    assert "not read" in str(info.value)
    conn.close()


def test_default_cap_is_50_mb() -> None:
    from calsync_caldav.transport import MAX_RESPONSE_BYTES

    assert MAX_RESPONSE_BYTES == 50 * 1024 * 1024


def test_503_with_retry_after_is_retried_at_the_edge(
        loopback: Callable[[list[Answer]], LoopbackDav]) -> None:
    dav = loopback([Answer(503, b"busy", {"Retry-After": "3"}),
                    Answer(207, MULTISTATUS_OK, {"Content-Type": "application/xml"})])
    sleeps: list[float] = []
    conn = connect(dav, sleeps)
    out = conn.changes(dav.url, "caldav1:sync:t0", WINDOW)
    assert sleeps == [3.0]  # the server's hint, slept once (injected sleep)
    assert out.token == "caldav1:sync:t1"
    assert [m for m, _ in dav.asked] == ["REPORT", "REPORT"]
    assert out.requests == 2
    conn.close()


def test_retry_after_past_the_cap_raises_throttled_at_once(
        loopback: Callable[[list[Answer]], LoopbackDav]) -> None:
    dav = loopback([Answer(503, b"maintenance", {"Retry-After": "3600"})])
    sleeps: list[float] = []
    conn = connect(dav, sleeps)
    with pytest.raises(Throttled) as info:
        conn.changes(dav.url, "caldav1:sync:t0", WINDOW)
    assert info.value.retry_after == 3600
    assert sleeps == [] and len(dav.asked) == 1
    conn.close()


def test_5xx_is_retried_up_to_the_configured_attempts(
        loopback: Callable[[list[Answer]], LoopbackDav]) -> None:
    from dataclasses import replace

    from calsync.errors import ProviderUnavailable

    dav = loopback([Answer(502, b"bad gateway")])
    base = Settings()
    settings = replace(base, sync=replace(base.sync, max_retries=2))
    sleeps: list[float] = []
    conn = connect(dav, sleeps, settings)
    with pytest.raises(ProviderUnavailable, match="HTTP 502"):
        conn.changes(dav.url, "caldav1:sync:t0", WINDOW)
    assert len(dav.asked) == 3 and len(sleeps) == 2
    conn.close()
