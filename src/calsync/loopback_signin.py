"""Terminal sign-in through a browser on this machine (RFC 8252 loopback redirect).

For providers or tenants where the device code flow is not allowed (Google refuses its
Calendar scope there), ``calsync connect <provider> USER --browser`` opens a one-shot HTTP
listener on ``127.0.0.1`` with a random port, prints the provider's authorization URL
(authorization code + PKCE S256, random ``state``), waits for the browser to come back to
``http://127.0.0.1:PORT/`` and redeems the code through the factory's ``exchange_code``
hook. The ``state`` is compared in constant time; anything else on the listener is refused.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from calsync.errors import UserError
from calsync.secrets import pkce_pair
from calsync.sync.connector import ConnectContext

PAGE = (b"<!doctype html><meta charset=utf-8><title>calsync</title>"
        b"<p>%s You can close this window.</p>")


class _Answer:
    def __init__(self) -> None:
        self.params: dict[str, str] | None = None
        self.done = threading.Event()


def _handler(answer: _Answer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, params: dict[str, str]) -> None:
            if not params.get("state"):
                self.send_response(404)
                self.end_headers()
                return
            ok = "code" in params and "error" not in params
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            msg = b"Signed in to calsync." if ok else b"Sign-in was not completed."
            self.wfile.write(PAGE % msg)
            if answer.params is None:
                answer.params = params
                answer.done.set()

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            query = parse_qs(urlparse(self.path).query)
            self._reply({k: v[0] for k, v in query.items()})

        def do_POST(self) -> None:  # noqa: N802 - response_mode=form_post
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
            self._reply({k: v[0] for k, v in form.items()})

        def log_message(self, *_args: Any) -> None:
            return  # the query holds the authorization code: never log it

    return Handler


def browser_sign_in(factory: Any, ctx: ConnectContext, prompt: Callable[[str], None],
                    open_browser: Callable[[str], Any] | None = None,
                    timeout: float = 300.0) -> ConnectContext:
    """Run the loopback flow; returns ``ctx`` with credentials (from ``exchange_code``)."""
    for hook in ("authorization_url", "exchange_code"):
        if not hasattr(factory, hook):
            raise UserError(f"the {ctx.provider} connector has no browser sign-in")
    answer = _Answer()
    server = HTTPServer(("127.0.0.1", 0), _handler(answer))
    redirect_uri = f"http://127.0.0.1:{server.server_address[1]}/"
    state = secrets.token_urlsafe(32)
    verifier, challenge = pkce_pair()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = factory.authorization_url(ctx, state, challenge, redirect_uri)
        prompt(f"To sign in, open this address in a browser on this machine:\n{url}")
        if open_browser is not None:
            open_browser(url)
        if not answer.done.wait(timeout):
            raise UserError(f"no sign-in arrived within {int(timeout)} s; run the command again")
    finally:
        server.shutdown()
        server.server_close()
    params = answer.params or {}
    if not hmac.compare_digest(params.get("state", "").encode(), state.encode()):
        raise UserError("the sign-in answer carried the wrong state; run the command again")
    if "error" in params or not params.get("code"):
        why = params.get("error_description") or params.get("error") or "no code"
        raise UserError(f"{ctx.provider} sign-in was refused: {why}")
    result: ConnectContext = factory.exchange_code(ctx, params["code"], verifier, redirect_uri)
    return result
