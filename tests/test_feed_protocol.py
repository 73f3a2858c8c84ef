"""Feeds answered by the HTTP protocol (calsync.api.feedproto) through a real uvicorn server
on loopback, on SQLite and PostgreSQL, spoken to over raw sockets: the answers are the
route's bytes (200, HEAD, gzip, 304 by ETag and by date); pipelined requests are answered
in order on one connection; revoked and regenerated links 404 at once, also when another
process changed them; other paths, requests with a body and malformed requests go to h11
and the application; answers are counted on /metrics."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from calsync.api.feedproto import FeedHttpProtocol, parse_head
from calsync.db.session import Database
from calsync.feeds.memo import memo_for
from tests.test_feed_http import _issue, admin  # noqa: F401 - the fixture
from tests.test_feed_memory import wait_memo_ready

KEEP_ALIVE = 2.0  # seconds (uvicorn's keep-alive timeout in these servers)


class Seen:
    """The application, noting every HTTP path that reached it (memo hits the protocol
    answers never do)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.app(scope, receive, send)


@pytest.fixture
def server(settings, db: Database) -> Iterator[tuple[int, Seen]]:  # type: ignore[no-untyped-def]
    from calsync.api.app import create_app

    seen = Seen(create_app(settings, db))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(seen, host="127.0.0.1", port=port, http=FeedHttpProtocol,
                            log_level="warning", access_log=False,
                            timeout_keep_alive=KEEP_ALIVE)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    wait_memo_ready(db)
    yield port, seen
    srv.should_exit = True
    thread.join(10)


def _read_response(sock: socket.socket, buf: bytearray, head_request: bool) -> bytes:
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response: {bytes(buf)[:200]!r}"
        buf += chunk
    end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:end])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    if head_request or head.split(b" ")[1] in (b"304", b"204"):
        length = 0
    while len(buf) < end + length:
        chunk = sock.recv(1 << 20)
        assert chunk, "connection closed mid-body"
        buf += chunk
    answer = bytes(buf[:end + length])
    del buf[:end + length]
    return answer


def exchange(port: int, requests: list[bytes], sock: socket.socket | None = None
             ) -> list[bytes]:
    """Send ``requests`` pipelined in one write, read one answer each, in order."""
    own = sock is None
    sock = sock or socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        sock.sendall(b"".join(requests))
        buf = bytearray()
        return [_read_response(sock, buf, r.startswith(b"HEAD ")) for r in requests]
    finally:
        if own:
            sock.close()


def request(path: str, method: str = "GET", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1",
             *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def without_date(answer: bytes) -> bytes:
    return b"\r\n".join(line for line in answer.split(b"\r\n")
                        if not line.lower().startswith(b"date: "))


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def header(answer: bytes, name: str) -> str | None:
    head = answer.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.decode().lower() == name:
            return value.strip().decode()
    return None


def served_from_memory(port: int, seen: Seen, raw: bytes) -> bytes:
    """Ask until the protocol answers (on PostgreSQL the NOTIFY of a render of this very
    test may drop the entry once)."""
    for _ in range(50):
        before = len(seen.paths)
        answer = exchange(port, [raw])[0]
        if len(seen.paths) == before:
            return answer
        time.sleep(0.1)
    raise AssertionError("never answered from memory")


def test_answers_from_memory_are_the_routes_bytes(app_client, admin, db: Database,  # noqa: F811
                                                  server) -> None:  # type: ignore[no-untyped-def]
    port, seen = server
    path = _issue(app_client, admin)
    first = exchange(port, [request(path)])[0]
    etag, modified = header(first, "etag"), header(first, "last-modified")
    assert etag and modified
    memo = memo_for(db.engine, 0)
    plain = {"Accept_Encoding": "identity", "User_Agent": "Google-Calendar-Importer"}
    packed = {"Accept_Encoding": "gzip", "User_Agent": "Google-Calendar-Importer"}
    variants = [request(path, **plain), request(path, **packed),
                request(path, "HEAD", **plain), request(path, "HEAD", **packed),
                request(path, If_None_Match=etag, **plain),
                request(path, If_None_Match=etag[:-1] + '-gzip"', **packed),
                request(path, If_Modified_Since=modified, **plain)]
    for raw in variants:
        memo.invalidate(None)
        before = len(seen.paths)
        by_route = exchange(port, [raw])[0]
        assert seen.paths[before:] == [path]  # the route answered it
        for fill in (request(path, **plain), request(path, **packed)):
            served_from_memory(port, seen, fill)  # the memo holds both variants again
        from_memory = served_from_memory(port, seen, raw)
        assert without_date(from_memory) == without_date(by_route), raw
        assert header(from_memory, "date") and header(from_memory, "server") == "uvicorn"
    statuses = [status(exchange(port, [raw])[0]) for raw in variants]
    assert statuses == [200, 200, 200, 200, 304, 304, 304]


def test_pipelined_requests_are_answered_in_order_on_one_connection(
        app_client, admin, server) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    port, seen = server
    path = _issue(app_client, admin)
    full = exchange(port, [request(path)])[0]
    served_from_memory(port, seen, request(path))
    etag = header(full, "etag")
    assert etag
    bad = path[:-8] + "AAAA.ics"
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        before = len(seen.paths)
        answers = exchange(port, [request(path), request(path, If_None_Match=etag),
                                  request(path, "HEAD"), request(path)], sock)
        assert [status(a) for a in answers] == [200, 304, 200, 200]
        assert answers[0] == answers[3] and answers[0].endswith(full.split(b"\r\n\r\n")[1])
        assert answers[2] == answers[0].split(b"\r\n\r\n")[0] + b"\r\n\r\n"
        assert len(seen.paths) == before  # all four from memory
        # A 404 and another path in the middle: they go to the application, in order.
        answers = exchange(port, [request(path), request(bad), request("/healthz"),
                                  request(path), request(path, If_None_Match=etag)], sock)
        assert [status(a) for a in answers] == [200, 404, 200, 200, 304]
        assert b'"no such feed"' in answers[1] and b'"status"' in answers[2]
        assert answers[3] == answers[0]
        assert seen.paths[before:before + 2] == [bad, "/healthz"]
        # The connection is still good, and memory answers again once h11 is idle.
        before = len(seen.paths)
        assert exchange(port, [request(path)], sock)[0] == answers[0]
        assert len(seen.paths) == before


def test_revoked_and_regenerated_links_404_at_once(app_client, admin, db: Database,  # noqa: F811
                                                   server) -> None:  # type: ignore[no-untyped-def]
    port, seen = server
    path = _issue(app_client, admin)
    assert status(served_from_memory(port, seen, request(path))) == 200
    new_path = _issue(app_client, admin)  # regenerated: the old link dies at once
    assert status(exchange(port, [request(path)])[0]) == 404
    assert status(served_from_memory(port, seen, request(new_path))) == 200
    assert app_client.delete("/api/users/u1/feed", headers=admin).status_code == 200
    assert status(exchange(port, [request(new_path)])[0]) == 404
    assert status(exchange(port, [request(new_path, "HEAD")])[0]) == 404
    # Another process revokes with a plain statement (no notification on PostgreSQL, a
    # new data_version on SQLite): the next request is refused all the same.
    path = _issue(app_client, admin)
    assert status(served_from_memory(port, seen, request(path))) == 200
    other = Database(db.url)
    try:
        with other.engine.begin() as conn:
            conn.execute(text("UPDATE users SET feed_enabled = false WHERE id = 'u1'"))
    finally:
        other.dispose()
    assert status(exchange(port, [request(path)])[0]) == 404


def test_bodies_other_paths_and_methods_go_to_the_application(
        app_client, admin, server) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    port, seen = server
    path = _issue(app_client, admin)
    fast = served_from_memory(port, seen, request(path))
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        before = len(seen.paths)
        with_body = request(path, Content_Length="5") + b"hello"
        answers = exchange(port, [with_body, request(path)], sock)
        # The one with a body went to the application, and so did the one pipelined
        # behind it (h11 was not idle then); the body was read and ignored.
        assert seen.paths[before:] == [path, path]
        assert without_date(answers[0]) == without_date(fast)
        assert without_date(answers[1]) == without_date(fast)
        before = len(seen.paths)
        assert without_date(exchange(port, [request(path)], sock)[0]) == without_date(fast)
        assert len(seen.paths) == before  # from memory again
        answers = exchange(port, [request("/healthz"), request(path, "POST")], sock)
        assert [status(a) for a in answers] == [200, 405]
        assert seen.paths[-2:] == ["/healthz", path]
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        closing = exchange(port, [request(path, Connection="close")], sock)[0]
        assert status(closing) == 200 and header(closing, "connection") == "close"
        assert sock.recv(10) == b""  # h11 closed it, as asked


@pytest.mark.parametrize("raw", [
    b"GET /feeds/u1/x.ics HTTP/1.1\r\nHost: a\r\nno colon here\r\n\r\n",
    b"GET /feeds/u1/x.ics HTTP/1.1\r\nHost: a\r\nBad Name: v\r\n\r\n",
    b"GET /feeds/u1/x.ics HTTP/1.1\r\n\r\n",  # no Host
    b"GET /feeds/u1/x.ics HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET  /feeds/u1/x.ics HTTP/1.1\r\nHost: a\r\n\r\n",
])
def test_malformed_requests_get_h11s_400(app_client, admin, server, raw: bytes  # noqa: F811
                                         ) -> None:  # type: ignore[no-untyped-def]
    port, seen = server
    path = _issue(app_client, admin)
    served_from_memory(port, seen, request(path))
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(raw.replace(b"/feeds/u1/x.ics", path.encode()))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert status(answer) == 400 and header(answer, "connection") == "close"


def test_parse_head_answers_only_plain_feed_requests() -> None:
    ok = b"GET /feeds/u1/tok.ics HTTP/1.1\r\nHost: h\r\nUser-Agent: x\r\nAccept-Encoding: gzip"
    assert parse_head(ok) == ("GET", "/feeds/u1/tok.ics",
                              {"user-agent": "x", "accept-encoding": "gzip"})
    assert parse_head(b"HEAD /feeds/a/b.ics HTTP/1.1\r\nhost: h\r\nConnection: Keep-Alive"
                      ) == ("HEAD", "/feeds/a/b.ics", {})
    for refused in (b"POST /feeds/a/b.ics HTTP/1.1\r\nHost: h",
                    b"GET /feeds/a/b.ics HTTP/1.0\r\nHost: h",
                    b"GET /feeds/a/b.ics?x=1 HTTP/1.1\r\nHost: h",
                    b"GET /feeds/a%2Fb/c.ics HTTP/1.1\r\nHost: h",
                    b"GET /api/users HTTP/1.1\r\nHost: h",
                    b"GET /feeds/a/b.ics HTTP/1.1\r\nHost: h\r\nContent-Length: 0",
                    b"GET /feeds/a/b.ics HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked",
                    b"GET /feeds/a/b.ics HTTP/1.1\r\nHost: h\r\nConnection: close",
                    b"GET /feeds/a/b.ics HTTP/1.1\r\nHost: h\r\nConnection: Upgrade",
                    b"GET /feeds/a/b.ics HTTP/1.1\r\nHost: h\r\nExpect: 100-continue",
                    b"GET /feeds/a/b.ics HTTP/1.1\r\nHost: h\r\nIf-None-Match: a\r\n"
                    b"If-None-Match: b",
                    b"GET /feeds/a/b.ics HTTP/1.1\r\nHost: h\r\nX: a\nY: b",
                    b"GET /feeds/a/b.ics HTTP/1.1\r\nHost: h\r\nX: a\r\n folded",
                    b"GET /feeds/a/b.ics HTTP/1.1\r\nHost: h\r\nX: \x00"):
        assert parse_head(refused) is None, refused


def test_answers_from_memory_are_counted(app_client, admin, server) -> None:  # noqa: F811
    port, seen = server
    path = _issue(app_client, admin)
    full = served_from_memory(port, seen, request(path, User_Agent="Mozilla/5.0 Thunderbird"))
    etag = header(full, "etag")
    assert etag

    def counted() -> dict[str, float]:
        text_ = exchange(port, [request("/metrics")])[0].split(b"\r\n\r\n", 1)[1].decode()
        return {f"{s.labels['outcome']}/{s.labels['client']}": s.value
                for family in text_string_to_metric_families(text_)
                if family.name == "calsync_feed_requests" for s in family.samples
                if s.name.endswith("_total")}

    before = counted()
    before_paths = len(seen.paths)
    exchange(port, [request(path, User_Agent="Mozilla/5.0 Thunderbird")] * 3
             + [request(path, User_Agent="Mozilla/5.0 Thunderbird", If_None_Match=etag)])
    assert len(seen.paths) == before_paths
    after = counted()
    key200 = next(k for k in after if k.startswith("200/") and after[k] > before.get(k, 0))
    key304 = key200.replace("200/", "304/")
    assert after[key200] - before.get(key200, 0) == 3
    assert after[key304] - before.get(key304, 0) == 1


def test_keep_alive_timeout_counts_from_the_last_answer(app_client, admin, server  # noqa: F811
                                                        ) -> None:  # type: ignore[no-untyped-def]
    port, seen = server
    path = _issue(app_client, admin)
    served_from_memory(port, seen, request(path, "HEAD"))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        before = len(seen.paths)
        started = time.monotonic()
        while time.monotonic() - started < KEEP_ALIVE * 1.5:  # longer than the timeout
            time.sleep(KEEP_ALIVE / 10)
            assert status(exchange(port, [request(path, "HEAD")], sock)[0]) == 200
            last = time.monotonic()
        assert len(seen.paths) == before  # all from memory, on one connection kept open
        assert sock.recv(10) == b""  # closed once idle for the timeout
        assert time.monotonic() - last >= KEEP_ALIVE * 0.75


def test_conditional_requests_alone_keep_the_feed_in_memory(app_client, admin, db: Database,  # noqa: F811
                                                           server) -> None:  # type: ignore[no-untyped-def]
    """Once the fetch time is due again (a minute later), the route writes it and answers
    304; the next conditional requests are answered from memory again, although the
    client never asks for the body."""
    port, seen = server
    path = _issue(app_client, admin)
    etag = header(served_from_memory(port, seen, request(path)), "etag")
    assert etag
    conditional = request(path, If_None_Match=etag)
    assert status(served_from_memory(port, seen, conditional)) == 304
    for round_ in range(3):
        entry = memo_for(db.engine, 0).get("u1")
        assert entry is not None
        entry.fetch_recorded -= 61  # the minute has passed
        before = len(seen.paths)
        assert status(exchange(port, [conditional])[0]) == 304
        assert seen.paths[before:] == [path], round_  # the route wrote the fetch time
        assert status(served_from_memory(port, seen, conditional)) == 304
