"""Secrets at rest: credentials encrypted with keys derived from the settings secret
(old secrets kept for rotation), API tokens stored as SHA-256 hashes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets as _random
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from calsync.config import Settings
from calsync.errors import CalsyncError


def _fernet(secret: str) -> Fernet:
    key = hashlib.sha256(b"calsync-credentials\x00" + secret.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


class CredentialBox:
    """Encrypts with the current secret; decrypts with current or previous ones."""

    def __init__(self, secret_key: str, previous: tuple[str, ...] = ()) -> None:
        self._box = MultiFernet([_fernet(secret_key), *(_fernet(p) for p in previous)])

    @classmethod
    def from_settings(cls, settings: Settings) -> CredentialBox:
        return cls(settings.security.secret_key, settings.security.previous_secret_keys)

    def seal(self, data: dict[str, Any]) -> bytes:
        return self._box.encrypt(json.dumps(data, sort_keys=True).encode())

    def open(self, blob: bytes) -> dict[str, Any]:
        try:
            return dict(json.loads(self._box.decrypt(blob)))
        except InvalidToken:
            raise CalsyncError("stored credentials cannot be decrypted with the configured "
                               "secret_key (add the old key to security.previous_secret_keys)"
                               ) from None

    def rotate(self, blob: bytes) -> bytes:
        """Re-encrypt ``blob`` under the current secret."""
        return self._box.rotate(blob)


def new_api_token() -> str:
    return "cst_" + _random.token_urlsafe(32)


def hash_api_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge) per RFC 7636."""
    verifier = _random.token_urlsafe(64)[:96]
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def redact(token: str, keep: int = 6) -> str:
    """What a log line may show of a secret."""
    return token[:keep] + "…" if len(token) > keep else "…"
