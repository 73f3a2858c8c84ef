"""A small feed server on 127.0.0.1 for subscribed-calendar tests: serves one body at a
path, with a strong ETag and Last-Modified, answers conditional requests with 304 as a real
web server does, and records each request's conditional headers. ``stop()`` kills it (a dead
server); ``start()`` brings it back on the same port."""

from __future__ import annotations

import hashlib
import threading
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CORPUS = Path("/work/shared/ics-corpus/files")


class FeedServer:
    def __init__(self, path: str = "/feeds/secret-key-4f9a1c/basic.ics") -> None:
        self.path = path
        self.body = b""
        self.content_type = "text/calendar; charset=utf-8"
        self.modified = 0.0
        self.requests: list[dict[str, str | None]] = []
        self.port = 0
        self._server: ThreadingHTTPServer | None = None

    # -- content ------------------------------------------------------------------------
    def serve(self, body: bytes | str, *, content_type: str | None = None) -> None:
        self.body = body.encode() if isinstance(body, str) else body
        if content_type:
            self.content_type = content_type
        self.modified = max(self.modified + 1, 1_700_000_000.0 + len(self.requests))

    def serve_file(self, name: str) -> None:
        self.serve((CORPUS / name).read_bytes())

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:20] + '"'

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    # -- life -----------------------------------------------------------------------------
    def start(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                outer.requests.append({"If-None-Match": self.headers.get("If-None-Match"),
                                       "If-Modified-Since":
                                           self.headers.get("If-Modified-Since")})
                if self.path != outer.path:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                last_modified = formatdate(outer.modified, usegmt=True)
                if self.headers.get("If-None-Match") == outer.etag:
                    self.send_response(304)
                    self.send_header("ETag", outer.etag)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", outer.content_type)
                self.send_header("Content-Length", str(len(outer.body)))
                self.send_header("ETag", outer.etag)
                self.send_header("Last-Modified", last_modified)
                self.end_headers()
                self.wfile.write(outer.body)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
