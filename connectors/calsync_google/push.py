"""Google push notifications (watch channels) as the webhook sees them.

Google POSTs to the channel address with an empty body and these headers:
``X-Goog-Channel-ID`` (our channel id = PushSubscription.remote_id),
``X-Goog-Channel-Token`` (the secret we gave; its SHA-256 is PushSubscription.secret_hash),
``X-Goog-Resource-ID``, ``X-Goog-Resource-State`` (``sync`` right after the channel opens:
a handshake, nothing to do; ``exists``/``not_exists``: the calendar changed),
``X-Goog-Message-Number``. :func:`parse_notification` turns them into a
:class:`GoogleNotification`; checking the token against the stored hash is the core's job
(constant time), and so is answering 200 quickly and syncing in the background.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from calsync.errors import UserError

CHANGE_STATES = frozenset({"exists", "not_exists"})


@dataclass(frozen=True)
class ChannelMessage:
    """One notification: which channel, the secret it carried, what happened."""

    remote_id: str  # channel id
    secret: str  # the channel token as received (compare with secret_hash)
    resource_id: str | None
    state: str  # sync | exists | not_exists
    message_number: int | None = None

    @property
    def triggers_sync(self) -> bool:
        return self.state in CHANGE_STATES


@dataclass(frozen=True)
class GoogleNotification:
    """What the webhook does with one POST: ``response`` is the body to answer with
    (always empty for Google: status 200), ``notifications`` the messages to check and
    act on (``handshake`` ones only confirm the channel)."""

    notifications: list[ChannelMessage] = field(default_factory=list)
    response: str | None = None
    handshake: bool = False
    status: int = 200


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, val in headers.items():
            if key.lower() == lowered:
                return val
    return value


def parse_notification(headers: Mapping[str, str], query: Mapping[str, str],
                       body: bytes) -> GoogleNotification:
    """Read a Google channel notification. Raises UserError when a required header is
    missing (the webhook answers 400 and syncs nothing)."""
    channel = _header(headers, "X-Goog-Channel-ID")
    state = _header(headers, "X-Goog-Resource-State")
    if not channel or not state:
        raise UserError("not a Google push notification: X-Goog-Channel-ID and "
                        "X-Goog-Resource-State are required")
    number = _header(headers, "X-Goog-Message-Number")
    message = ChannelMessage(
        remote_id=channel, secret=_header(headers, "X-Goog-Channel-Token") or "",
        resource_id=_header(headers, "X-Goog-Resource-ID"), state=state,
        message_number=int(number) if number and number.isdigit() else None)
    return GoogleNotification(notifications=[message], handshake=state == "sync")
