"""Secrets: the keys calsync signs and encrypts with, and API tokens.

There is no built-in secret. The configured ``[security] secret_key`` (or
``CALSYNC_SECRET_KEY``) is key material only; HKDF-SHA256 derives one key per purpose from
it, so no two purposes share a key:

    feed links     HMAC-SHA256 key of the signed feed URLs        ``feed_key`` overrides
    credentials    Fernet key of stored provider credentials and  ``credential_key`` overrides
                   of pending sign-ins' PKCE verifiers

With the overrides each key can be rotated alone (docs/configuration.md). When no secret is
configured and the database is the embedded SQLite file, :func:`resolve_secret_key` makes a
random one on first use and keeps it next to that file (mode 0600); PostgreSQL needs one
configured, and so does serving beyond loopback (:func:`require_configured_secret`).

Earlier versions used the raw secret: credentials sealed with
``SHA-256("calsync-credentials\\0" + secret)`` and feed links HMAC'd with the secret itself.
Both are still accepted, never produced, so an upgrade loses no credential and no link;
credentials sealed under the published default of those versions still open too.
API tokens are stored as SHA-256 hashes.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import ipaddress
import json
import os
import secrets as _random
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from calsync.config import PUBLIC_SECRETS, Settings
from calsync.errors import CalsyncError, UserError

# HKDF "info" strings: the purpose a derived key serves. Changing one changes that key.
FEED_LINKS_PURPOSE = b"calsync/v1/feed-links"
CREDENTIALS_PURPOSE = b"calsync/v1/credentials"

SECRET_FILE_SUFFIX = ".secret"

_NO_SECRET = ("no secret key is configured: set [security] secret_key or CALSYNC_SECRET_KEY "
              "(for example the output of `python3 -c 'import secrets; "
              "print(secrets.token_urlsafe(32))'`)")


@functools.lru_cache(maxsize=64)
def derive_key(secret: str, purpose: bytes) -> bytes:
    """The 32-byte key for ``purpose`` derived from ``secret`` (HKDF-SHA256, no salt)."""
    if not secret:
        raise UserError(_NO_SECRET)
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose)
    return hkdf.derive(secret.encode("utf-8"))


# --- feed links ---------------------------------------------------------------------------

@dataclass(frozen=True)
class FeedLinkKeys:
    """``current`` signs and checks links; ``legacy`` (the raw secret, as earlier versions
    used it) only checks links handed out before the upgrade."""

    current: bytes
    legacy: bytes


def feed_link_keys(settings: Settings) -> FeedLinkKeys:
    secret = settings.security.feed_key or settings.security.secret_key
    return FeedLinkKeys(current=derive_key(secret, FEED_LINKS_PURPOSE),
                        legacy=secret.encode("utf-8"))


# --- credentials --------------------------------------------------------------------------

def _fernet(secret: str) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(derive_key(secret, CREDENTIALS_PURPOSE)))


def _legacy_fernet(secret: str) -> Fernet:
    # The scheme of earlier versions; kept to open what they stored, never to seal.
    key = hashlib.sha256(b"calsync-credentials\x00" + secret.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


class CredentialBox:
    """Seals with the key derived from ``secret_key``; opens with it or with the keys of
    ``previous`` secrets, each in the derived and then the legacy form."""

    def __init__(self, secret_key: str, previous: tuple[str, ...] = ()) -> None:
        if not secret_key:
            raise UserError(_NO_SECRET)
        keys: list[Fernet] = []
        for secret in dict.fromkeys((secret_key, *previous)):  # in order, once each
            if secret:
                keys += [_fernet(secret), _legacy_fernet(secret)]
        # Installations that never set a secret sealed with the published default: those
        # credentials were never protected, but an upgrade must not lose them. Opened
        # only; `calsync secrets rotate` re-seals them under the configured key.
        keys += [_legacy_fernet(public) for public in sorted(PUBLIC_SECRETS)]
        self._box = MultiFernet(keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> CredentialBox:
        sec = settings.security
        if sec.credential_key:
            # Data sealed before credential_key was set is under secret_key: still opens.
            return cls(sec.credential_key, (sec.secret_key, *sec.previous_secret_keys))
        return cls(sec.secret_key, sec.previous_secret_keys)

    def seal(self, data: dict[str, Any]) -> bytes:
        return self._box.encrypt(json.dumps(data, sort_keys=True).encode())

    def open(self, blob: bytes) -> dict[str, Any]:
        try:
            return dict(json.loads(self._box.decrypt(blob)))
        except InvalidToken:
            raise CalsyncError("stored credentials cannot be decrypted with the configured "
                               "keys (add the old secret to security.previous_secret_keys)"
                               ) from None

    def rotate(self, blob: bytes) -> bytes:
        """Re-encrypt ``blob`` under the current key (legacy ciphertexts included)."""
        return self._box.rotate(blob)


# --- where the secret comes from -----------------------------------------------------------

def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URL; None for PostgreSQL and in-memory SQLite."""
    if not url.startswith("sqlite"):
        return None
    path = url.split("///", 1)[1] if "///" in url else ""
    path = path.split("?", 1)[0]
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return Path(path)


def secret_file_for(database: Path) -> Path:
    """Where the generated secret of an embedded database lives: next to it."""
    return database.with_name(database.name + SECRET_FILE_SUFFIX)


def resolve_secret_key(settings: Settings) -> Settings:
    """``settings`` with a secret to use: the configured one; for the embedded SQLite file
    without one, the generated secret kept next to it (made on first use). Raises
    :class:`UserError` when none is configured and the database is not a SQLite file."""
    if settings.security.secret_key:
        return settings
    database = sqlite_file(settings.database.url)
    if database is None:
        raise UserError(f"{_NO_SECRET}; it is required with a PostgreSQL or in-memory "
                        f"database (a generated one is only kept for the embedded SQLite file)")
    secret = load_or_create_secret_file(secret_file_for(database))
    return replace(settings, security=replace(settings.security, secret_key=secret))


def load_or_create_secret_file(path: Path) -> str:
    """Read the secret in ``path``, or write a new random one there (mode 0600) when there
    is none. Concurrent first uses agree on one secret: the file appears complete or not
    at all (written aside, then hard-linked into place)."""
    try:
        return _read_secret_file(path)
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        aside = path.with_name(f".{path.name}.{os.getpid()}.{_random.token_hex(4)}")
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(_random.token_urlsafe(48) + "\n")
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(aside, path)
            except FileExistsError:
                pass  # another process was first: use its secret
        finally:
            aside.unlink(missing_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the secret key file {path}: "
                        f"{exc.strerror or exc}; set [security] secret_key or "
                        f"CALSYNC_SECRET_KEY instead") from None
    return _read_secret_file(path)


def _read_secret_file(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the secret key file {path}: "
                        f"{getattr(exc, 'strerror', None) or exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UserError(f"the secret key file {path} is open to other users "
                        f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}`")
    secret = text.strip()
    if len(secret) < 16:
        raise UserError(f"the secret key file {path} holds no usable secret (under 16 "
                        f"characters); delete it to have a new one made")
    return secret


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name to bind) is reachable only from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_configured_secret(settings: Settings, host: str) -> None:
    """Serving on ``host`` beyond loopback needs a secret set explicitly (a generated one
    lives in a file anyone with a copy of the data folder has). ``settings`` are the
    configured ones, before :func:`resolve_secret_key`."""
    if not settings.security.secret_key and not is_loopback(host):
        raise UserError(f"refusing to serve on {host} without a configured secret key: set "
                        f"[security] secret_key or CALSYNC_SECRET_KEY (a generated key is "
                        f"used only on 127.0.0.1)")


# --- API tokens and other helpers ---------------------------------------------------------

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
