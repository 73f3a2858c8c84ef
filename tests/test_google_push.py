"""Google watch channels against the emulator: opening a channel, the ``sync`` handshake,
``exists`` notifications carrying the channel token, stopping a channel, and reading
notifications with the factory's ``parse_notification`` hook."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from calsync.errors import UserError
from calsync.push import hash_secret, secret_matches
from calsync.sync.connector import load_connector_factory
from tests.emulators.google import GoogleEmulator, google_emulator_fixture, signed_in_context

CAL = "tech@example.com"
google_emulator = google_emulator_fixture()


class Receiver:
    """A loopback endpoint standing in for ``{base_url}/webhooks/google``."""

    def __init__(self) -> None:
        self.received: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.received.append(dict(self.headers.items()))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/google"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def test_watch_channel_handshake_change_notifications_and_stop(
        google_emulator: GoogleEmulator, receiver: Receiver) -> None:
    em = google_emulator
    factory = load_connector_factory("google")
    connector = factory.connect(signed_in_context(em, CAL))
    secret = "s3cret-token-for-this-channel"
    channel_id, resource_id, expires = factory.subscribe(connector, CAL, receiver.url, secret)
    assert channel_id in em.channels and em.channels[channel_id]["token"] == secret
    assert em.channels[channel_id]["address"] == receiver.url
    assert resource_id and em.channels[channel_id]["resourceId"] == resource_id
    assert dt.timedelta(days=6) < expires - dt.datetime.now(dt.timezone.utc) \
        <= dt.timedelta(days=7)

    # the handshake right after opening: answered 200, nothing to sync
    assert len(receiver.received) == 1
    handshake = factory.parse_notification(receiver.received[0], {}, b"")
    assert handshake.notices == () and handshake.reply_text is None
    assert receiver.received[0]["X-Goog-Resource-State"] == "sync"

    em.put_event(CAL, {"summary": "dentist", "start": {"dateTime": "2026-11-24T09:00:00Z"},
                       "end": {"dateTime": "2026-11-24T10:00:00Z"}})
    assert len(receiver.received) == 2
    result = factory.parse_notification(receiver.received[1], {}, b"")
    (notice,) = result.notices
    assert notice.subscription_id == channel_id and notice.resource_id == resource_id
    assert notice.change == "exists"
    assert secret_matches(notice.secret, hash_secret(secret))

    factory.unsubscribe(connector, channel_id, resource_id)
    assert channel_id not in em.channels
    em.put_event(CAL, {"summary": "after stop", "start": {"dateTime": "2026-11-25T09:00:00Z"},
                       "end": {"dateTime": "2026-11-25T10:00:00Z"}})
    assert len(receiver.received) == 2
    factory.unsubscribe(connector, channel_id, resource_id)  # already gone: fine


def test_forged_notification_carries_a_token_that_does_not_match(
        google_emulator: GoogleEmulator) -> None:
    factory = load_connector_factory("google")
    forged = {"X-Goog-Channel-ID": "1f0c7a9e-0000-4000-8000-000000000000",
              "X-Goog-Channel-Token": "guessed", "X-Goog-Resource-ID": "r1",
              "X-Goog-Resource-State": "exists", "X-Goog-Message-Number": "7"}
    (notice,) = factory.parse_notification(forged, {}, b"").notices
    assert not secret_matches(notice.secret, hash_secret("the real channel token"))


def test_notification_headers_are_read_case_insensitively_and_required(
        google_emulator: GoogleEmulator) -> None:
    factory = load_connector_factory("google")
    lower = {"x-goog-channel-id": "c1", "x-goog-channel-token": "t",
             "x-goog-resource-state": "not_exists", "x-goog-resource-id": "r"}
    (notice,) = factory.parse_notification(lower, {}, b"").notices
    assert (notice.subscription_id, notice.secret, notice.change) == ("c1", "t", "not_exists")
    with pytest.raises(UserError, match="X-Goog-Channel-ID"):
        factory.parse_notification({"X-Goog-Resource-State": "exists"}, {}, b"")
