"""uvicorn's HTTP/1.1 protocol with feed requests answered as soon as they are read.

:class:`FeedHttpProtocol` is uvicorn's h11 protocol (``uvicorn.Config(http=...)``, set by
``calsync serve``). While a connection is idle (no request in progress, nothing buffered),
each complete request head that arrives is looked at before h11 sees it: a plain
``GET``/``HEAD /feeds/<user>/<token>.ics`` (HTTP/1.1, no body, no ``Connection: close``,
no percent-encoding or query) that the feed memo can answer
(:class:`calsync.api.feeds.MemoAnswers`, the same answers the ASGI fast path and the route
give, counted in the same metric) is answered straight onto the transport: status line,
uvicorn's own ``date``/``server`` lines, the prepared header lines, the body. Pipelined
requests are answered in order. The first request it does not answer, and everything
after it on that connection, goes to h11 and the application as usual; the fast path
takes over again once h11 is idle. Any doubt about a request's syntax hands it to h11,
which answers a malformed request with its 400.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from calsync.api.feeds import MemoAnswers, answers_for

MAX_HEAD = 16 * 1024  # larger heads go to h11 (which enforces its own limit)
_PATH = re.compile(rb"/feeds/[A-Za-z0-9\-._~!$&'()*+,;=:@/]+")
# Every header line: a token, a colon, visible characters, spaces and tabs (no obs-fold).
_FIELDS = re.compile(rb"(?:\r\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*)*")
_ASKED = {b"accept-encoding": "accept-encoding", b"user-agent": "user-agent",
          b"if-none-match": "if-none-match", b"if-modified-since": "if-modified-since"}
# Anything that changes framing or the connection goes the full way.
_REFUSED = frozenset((b"content-length", b"transfer-encoding", b"upgrade", b"expect",
                      b"te", b"trailer"))


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]] | None:
    """(method, path, the headers :meth:`MemoAnswers.answer` reads) of a request head
    (without its final blank line) this module answers; None for anything else."""
    first = head.find(b"\r\n")
    if first < 0 or _FIELDS.fullmatch(head, first) is None:
        return None
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or parts[0] not in (b"GET", b"HEAD"):
        return None
    if _PATH.fullmatch(parts[1]) is None:
        return None
    asked: dict[str, str] = {}
    hosts = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        lower = name.lower()
        wanted = _ASKED.get(lower)
        if wanted is not None:
            if wanted in asked:
                return None  # repeated: let the full path combine them
            asked[wanted] = value.strip(b" \t").decode("latin-1")
        elif lower == b"host":
            hosts += 1
        elif lower == b"connection":
            if value.strip(b" \t").lower() != b"keep-alive":
                return None
        elif lower in _REFUSED:
            return None
    if hosts != 1:
        return None
    return parts[0].decode("ascii"), parts[1].decode("ascii"), asked


def _find_answers(app: Any) -> MemoAnswers | None:
    """The memo answerer of the calsync application inside uvicorn's wrappers."""
    for _ in range(8):
        state = getattr(app, "state", None)
        settings, db = getattr(state, "settings", None), getattr(state, "db", None)
        if settings is not None and db is not None:
            return answers_for(settings, db)
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


class FeedHttpProtocol(H11Protocol):
    """uvicorn's h11 protocol, with memo hits answered on arrival (see the module)."""

    def __init__(self, config: Config, server_state: ServerState,
                 app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._answers = _find_answers(self.app)
        self._date_of: list[tuple[bytes, bytes]] | None = None
        self._date_lines = b""
        self._own_timer: asyncio.TimerHandle | None = None
        self._last_answer = 0.0

    def _idle(self) -> bool:
        conn = self.conn
        return (conn.our_state is h11.IDLE and conn.their_state is h11.IDLE
                and (self.cycle is None or self.cycle.response_complete)
                and not self.flow.read_paused and not self.transport.is_closing()
                and not conn.trailing_data[0])

    def _default_lines(self) -> bytes:
        defaults = self.server_state.default_headers  # uvicorn renews it every second
        if defaults is not self._date_of:
            self._date_of = defaults
            self._date_lines = b"".join(b"%s: %s\r\n" % pair for pair in defaults)
        return self._date_lines

    def data_received(self, data: bytes) -> None:
        answers = self._answers
        if answers is None or not self._idle():
            super().data_received(data)
            return
        if self.timeout_keep_alive_task is not self._own_timer:
            self._unset_keepalive_if_required()  # h11's: it would close a busy connection
        start, size, answered = 0, len(data), 0
        write, heads = self.transport.write, []
        while start < size and not self.flow.write_paused:
            end = data.find(b"\r\n\r\n", start, start + MAX_HEAD)
            if end < 0:
                break
            request = parse_head(data[start:end])
            if request is None:
                break
            done = answers.answer(*request)
            if done is None:
                break
            heads.append(done.status_line + self._default_lines() + done.header_lines)
            if done.body:
                write(heads[0] if len(heads) == 1 else b"".join(heads))
                heads.clear()
                write(done.body)
            answered += 1
            start = end + 4
        if heads:
            write(heads[0] if len(heads) == 1 else b"".join(heads))
        self.server_state.total_requests += answered
        if start < size:
            super().data_received(data[start:] if start else data)
        elif answered:
            self._note_activity()

    def _note_activity(self) -> None:
        """Keep-alive timeout after memo answers: one timer per connection that looks at
        the time of the last answer when it fires, not a new timer per request."""
        self._last_answer = self.loop.time()
        if self.timeout_keep_alive_task is None:
            self._arm(self.timeout_keep_alive)

    def _arm(self, delay: float) -> None:
        self._own_timer = self.timeout_keep_alive_task = self.loop.call_later(
            delay, self._keep_alive_due)

    def _keep_alive_due(self) -> None:
        self._own_timer = self.timeout_keep_alive_task = None
        idle = self.loop.time() - self._last_answer
        if idle >= self.timeout_keep_alive:
            self.timeout_keep_alive_handler()
        elif not self.transport.is_closing():
            self._arm(self.timeout_keep_alive - idle)
