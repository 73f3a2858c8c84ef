"""Request-body caps for every route, enforced while the body arrives.

An ASGI middleware (outside the routers, so no endpoint can forget it): a request whose
``Content-Length`` is over the cap is answered ``413`` before a byte of the body is read;
a body without one (chunked) is counted as it arrives and refused as soon as it passes the
cap. The answer is the API's JSON error ``{"error": "payload_too_large", "detail": …}``
with ``Connection: close``, so the server stops reading instead of draining the rest.
Webhooks (unauthenticated, small by nature) get their own, smaller cap.

Starlette's own ``RequestBodyLimitMiddleware`` is not used: it answers in plain text, checks
``Content-Length`` only once an endpoint reads, and keeps the connection, so the server
goes on reading (and discarding) an oversized body.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

WEBHOOK_PREFIX = "/webhooks/"
ERROR_CODE = "payload_too_large"


class PayloadTooLarge(HTTPException):
    """Raised from ``receive`` when the body passes the cap. An HTTPException, so that
    FastAPI's body parsing lets it through to the app's JSON error handler; the
    middleware answers itself when nothing else did."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, too_large_detail(limit), headers={"Connection": "close"})


def too_large_detail(limit: int) -> str:
    return f"the request body is over the limit of {limit} bytes"


class BodySizeLimit:
    """Caps request bodies at ``max_body_bytes`` (``max_webhook_body_bytes`` under
    ``/webhooks/``)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, max_webhook_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_webhook_body_bytes = max_webhook_body_bytes

    def limit_for(self, path: str) -> int:
        return self.max_webhook_body_bytes if path.startswith(WEBHOOK_PREFIX) \
            else self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _send_too_large(send, limit)
            return

        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except PayloadTooLarge:
            if response_started:  # an endpoint that streams its answer while reading
                raise
            await _send_too_large(send, limit)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server rejects a malformed one before we see it
    return None


async def _send_too_large(send: Send, limit: int) -> None:
    body = json.dumps({"error": ERROR_CODE, "detail": too_large_detail(limit)}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body, "more_body": False})
