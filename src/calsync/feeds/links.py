"""Signed feed links. The token is HMAC-SHA256(feed-link key, "feed", user id, feed
version), base64url, 256 bits; the key is derived from the configured secret for this one
purpose (calsync.secrets). The database stores only the version: nothing usable.
Regenerating bumps the version (the old link dies at once); revoking disables the feed."""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote

from calsync.config import Settings
from calsync.db.models import User
from calsync.secrets import FeedLinkKeys, feed_link_keys, redact


def feed_token(key: bytes, user_id: str, version: int) -> str:
    mac = hmac.new(key, f"feed\x00{user_id}\x00{version}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def check_feed_token(keys: FeedLinkKeys, user: User | None, token: str) -> bool:
    """Constant time in the token; the same work whether or not the user exists. Links
    signed the way earlier versions did (``keys.legacy``) are still accepted."""
    uid = user.id if user is not None else "\x00missing"
    version = user.feed_version if user is not None else -1
    given = token.encode("utf-8", "replace")
    current = hmac.compare_digest(feed_token(keys.current, uid, version).encode(), given)
    legacy = hmac.compare_digest(feed_token(keys.legacy, uid, version).encode(), given)
    ok = current | legacy  # both always computed: no early exit
    return ok and user is not None and user.feed_enabled and user.deleted_at is None


def feed_url(settings: Settings, user: User) -> str:
    token = feed_token(feed_link_keys(settings).current, user.id, user.feed_version)
    base = settings.server.base_url.rstrip("/")
    return f"{base}/feeds/{quote(user.id, safe='')}/{token}.ics"


def redacted_feed_path(user_id: str, token: str) -> str:
    return f"/feeds/{user_id}/{redact(token)}.ics"


def issue_feed(user: User) -> None:
    """Issue a link, or regenerate it: a new version kills the old token."""
    user.feed_version += 1
    user.feed_enabled = True


def revoke_feed(user: User) -> None:
    user.feed_enabled = False
