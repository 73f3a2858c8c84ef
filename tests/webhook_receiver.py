"""A webhook receiver on 127.0.0.1 for the tests: every request is checked with the
``standardwebhooks`` library (the one receivers use) and recorded, verified or not.

``behaviour(receiver, request)`` decides each answer (status code, and how long to take
first); the default answers 200 at once. The receiver also tracks how many requests are in
flight at the same time, per webhook-id and in all.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    message_id: str
    body: str
    headers: dict[str, str]
    verified: bool
    payload: dict[str, Any] | None
    at: float
    answered: int = 0

    @property
    def type(self) -> str | None:
        return self.payload.get("type") if self.payload else None

    @property
    def data(self) -> dict[str, Any]:
        return dict(self.payload.get("data", {})) if self.payload else {}


Behaviour = Callable[["Receiver", Received], "tuple[int, float]"]


def always(status: int = 200, delay: float = 0.0) -> Behaviour:
    return lambda _r, _req: (status, delay)


@dataclass
class Receiver:
    secret: str = ""
    behaviour: Behaviour = field(default_factory=always)
    port: int = 0
    received: list[Received] = field(default_factory=list)
    max_in_flight: int = 0
    max_same_id_in_flight: int = 0
    _in_flight: int = 0
    _by_id: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length).decode("utf-8")
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver._handle(self, body, headers)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def _handle(self, handler: BaseHTTPRequestHandler, body: str,
                headers: dict[str, str]) -> None:
        try:
            payload = Webhook(self.secret).verify(body, headers)
            verified = True
        except WebhookVerificationError:
            payload, verified = None, False
        rec = Received(headers.get("webhook-id", ""), body, headers, verified, payload,
                       time.monotonic())
        with self._lock:
            self.received.append(rec)
            self._in_flight += 1
            self._by_id[rec.message_id] = self._by_id.get(rec.message_id, 0) + 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            self.max_same_id_in_flight = max(self.max_same_id_in_flight,
                                             self._by_id[rec.message_id])
        try:
            status, delay = self.behaviour(self, rec)
            if delay:
                time.sleep(delay)
            rec.answered = status
            handler.send_response(status)
            handler.send_header("content-length", "2")
            handler.end_headers()
            handler.wfile.write(b"ok")
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with self._lock:
                self._in_flight -= 1
                self._by_id[rec.message_id] -= 1

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # reading what arrived ------------------------------------------------------------
    def of_type(self, type_: str) -> list[Received]:
        return [r for r in self.received if r.type == type_]

    def delivered_ids(self) -> list[str]:
        """Message ids answered 2xx, in arrival order."""
        return [r.message_id for r in self.received if 200 <= r.answered < 300]

    def json_bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.received]
