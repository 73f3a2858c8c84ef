"""Google push notifications (watch channels) as the webhook sees them.

Google POSTs to the channel address with an empty body and these headers:
``X-Goog-Channel-ID`` (our channel id = PushSubscription.remote_id),
``X-Goog-Channel-Token`` (the secret we gave; its SHA-256 is PushSubscription.secret_hash),
``X-Goog-Resource-ID``, ``X-Goog-Resource-State`` (``sync`` right after the channel opens:
a handshake, nothing to do; ``exists``/``not_exists``: the calendar changed),
``X-Goog-Message-Number``. :func:`parse_notification` turns them into the core's
:class:`calsync.push.PushResult`; checking the token against the stored hash is the core's job
(constant time), and so is answering 200 quickly and syncing in the background.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from calsync.errors import UserError

if TYPE_CHECKING:
    from calsync.push import PushResult

CHANGE_STATES = frozenset({"exists", "not_exists"})


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, val in headers.items():
            if key.lower() == lowered:
                return val
    return value


def parse_notification(headers: Mapping[str, str], query: Mapping[str, str],
                       body: bytes) -> PushResult:
    """Read a Google channel notification. The ``sync`` handshake yields no notice (answer
    200, sync nothing); ``exists``/``not_exists`` yield one notice to check and act on.
    Raises UserError when a required header is missing (answer 400, sync nothing)."""
    from calsync.push import PushNotice, PushResult

    channel = _header(headers, "X-Goog-Channel-ID")
    state = _header(headers, "X-Goog-Resource-State")
    if not channel or not state:
        raise UserError("not a Google push notification: X-Goog-Channel-ID and "
                        "X-Goog-Resource-State are required")
    number = _header(headers, "X-Goog-Message-Number")
    extra = {"channel_id": channel, "state": state,
             "message_number": int(number) if number and number.isdigit() else None}
    if state not in CHANGE_STATES:
        return PushResult(notices=(), extra={**extra, "handshake": state == "sync"})
    notice = PushNotice(subscription_id=channel,
                        secret=_header(headers, "X-Goog-Channel-Token") or "",
                        resource_id=_header(headers, "X-Goog-Resource-ID"), change=state)
    return PushResult(notices=(notice,), extra=extra)
