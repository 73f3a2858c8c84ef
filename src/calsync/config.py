"""Settings: one typed object from a TOML file plus ``CALSYNC_*`` environment overrides.

Lookup order for the file: ``--config FILE``, ``$CALSYNC_CONFIG``, ``./calsync.toml``,
then built-in defaults. Every key is documented in ``config.example.toml``. A bad value
raises :class:`ConfigError` naming the key, the value and what is expected.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from calsync.errors import ConfigError

# Secrets that were published (the example config of earlier versions): never accepted.
PUBLIC_SECRETS = frozenset({"dev-insecure-change-me"})


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite:///./var/calsync.db"
    echo: bool = False


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    base_url: str = "http://127.0.0.1:8080"
    # Request bodies beyond these are refused with 413 while they arrive (api/limits.py).
    max_body_bytes: int = 1_048_576
    max_webhook_body_bytes: int = 65_536
    # Origins (scheme://host[:port]) besides base_url's that an OAuth sign-in started through
    # the API may send the browser back to (``return_to``): e.g. the platform's own site.
    allowed_return_origins: tuple[str, ...] = ()


@dataclass(frozen=True)
class SecuritySettings:
    # No built-in value: see calsync.secrets.resolve_secret_key for what happens without one.
    secret_key: str = ""
    # Older secrets still accepted to decrypt stored credentials (key rotation).
    previous_secret_keys: tuple[str, ...] = ()
    # Optional: sign feed links / encrypt credentials with their own secret instead of
    # secret_key, so that each can be rotated without touching the other.
    feed_key: str = ""
    credential_key: str = ""


@dataclass(frozen=True)
class FeedSettings:
    history_months: int = 1
    future_months: int = 12
    refresh_interval_minutes: int = 15
    calendar_name_template: str = "{name} — schedule"
    job_url_template: str = ""
    refresh_seconds: int = 5
    rebuild_cron_hour: int = 3
    # Served feeds each serving process keeps in memory (calsync.feeds.memo), in MB.
    memory_cache_mb: int = 256


@dataclass(frozen=True)
class SyncSettings:
    interval_seconds: int = 300
    history_months: int = 1
    future_months: int = 12
    conflict_policy: str = "newest_wins"
    stale_after_seconds: int = 1800
    max_occurrences: int = 1000
    request_timeout_seconds: float = 30.0
    max_retries: int = 4
    retry_max_seconds: float = 60.0
    lease_seconds: int = 600
    window_resync_days: int = 7
    # Connection syncs one worker process runs at once (threads), and how much of the
    # interval is taken off at random from each next due time (spreads the load).
    concurrency: int = 8
    jitter_fraction: float = 0.1
    # Remote writes in flight to one calendar at once (CalDAV and Google; Outlook batches).
    calendar_write_concurrency: int = 4


@dataclass(frozen=True)
class CaldavSettings:
    verify_tls: bool = True


@dataclass(frozen=True)
class IcloudSettings:
    url: str = "https://caldav.icloud.com/"


@dataclass(frozen=True)
class OutlookSettings:
    client_id: str = ""
    client_secret: str = ""
    tenant: str = "common"
    authority_host: str = "https://login.microsoftonline.com"
    graph_url: str = "https://graph.microsoft.com/v1.0"
    redirect_uri: str = ""
    max_concurrency: int = 4


@dataclass(frozen=True)
class GoogleSettings:
    client_id: str = ""
    client_secret: str = ""
    token_uri: str = "https://oauth2.googleapis.com/token"
    auth_uri: str = "https://accounts.google.com/o/oauth2/v2/auth"
    device_auth_uri: str = "https://oauth2.googleapis.com/device/code"
    api_root: str = "https://www.googleapis.com/"
    redirect_uri: str = ""


@dataclass(frozen=True)
class WebhookSettings:
    # Per delivery attempt: a receiver that does not answer in time counts as failed.
    timeout_seconds: float = 10.0
    # Requests in flight to one endpoint at a time (across every worker).
    max_concurrency_per_endpoint: int = 4
    # Delivery threads per worker process (shared by all endpoints).
    delivery_threads: int = 16
    # A worker's claim on a delivery; a crashed worker's deliveries are retried after this.
    lease_seconds: int = 60
    # How often the worker looks for events to deliver.
    poll_seconds: float = 1.0
    # Events (with their deliveries and attempts) are deleted this many days after they
    # were made, once none of their deliveries is pending; change-feed cursors from before
    # that are answered "cursor expired" (docs/webhooks.md).
    retention_days: int = 30
    # An endpoint whose every attempt failed for this many days is disabled.
    disable_after_days: int = 5


@dataclass(frozen=True)
class IcsSettings:
    # Subscribed calendars (calsync connect ics): the largest feed read, in bytes.
    max_bytes: int = 10 * 1024 * 1024
    # A feed's REFRESH-INTERVAL / X-PUBLISHED-TTL is followed up to this; never under 300.
    max_refresh_seconds: int = 86400


@dataclass(frozen=True)
class LoggingSettings:
    # "text" (one readable line) or "json" (one JSON object a line, for log collectors);
    # lines logged during a sync carry its connection's public id either way.
    format: str = "text"


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    feeds: FeedSettings = field(default_factory=FeedSettings)
    sync: SyncSettings = field(default_factory=SyncSettings)
    caldav: CaldavSettings = field(default_factory=CaldavSettings)
    icloud: IcloudSettings = field(default_factory=IcloudSettings)
    outlook: OutlookSettings = field(default_factory=OutlookSettings)
    google: GoogleSettings = field(default_factory=GoogleSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    ics: IcsSettings = field(default_factory=IcsSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    source: str = "<defaults>"


_ENV_OVERRIDES = {
    "CALSYNC_DATABASE_URL": ("database", "url"),
    "CALSYNC_SECRET_KEY": ("security", "secret_key"),
    "CALSYNC_FEED_KEY": ("security", "feed_key"),
    "CALSYNC_CREDENTIAL_KEY": ("security", "credential_key"),
    "CALSYNC_BASE_URL": ("server", "base_url"),
}

_CONFLICT_POLICIES = ("newest_wins", "calsync_wins", "remote_wins")


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check ``value`` against the type of ``default``; raise ConfigError on mismatch."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(key, value, "true or false")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(key, value, "an integer")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(key, value, "a number")
    if isinstance(default, tuple):
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(key, value, "a list of strings")
    if isinstance(value, str):
        return value
    raise ConfigError(key, value, "a string")


def _section(name: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(name, raw, "a table")
    defaults = cls()
    known = {f.name for f in fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{name}.{key}", value, f"one of the keys {sorted(known)}")
        values[key] = _coerce(f"{name}.{key}", value, getattr(defaults, key))
    return replace(defaults, **values)


def _validate(s: Settings) -> None:
    def positive(key: str, value: int | float) -> None:
        if value <= 0:
            raise ConfigError(key, value, "a number greater than 0")

    def non_negative(key: str, value: int) -> None:
        if value < 0:
            raise ConfigError(key, value, "an integer of 0 or more")

    if urlparse(s.database.url).scheme.split("+")[0] not in ("sqlite", "postgresql", "postgres"):
        raise ConfigError("database.url", s.database.url, "a sqlite:/// or postgresql:// URL")
    if not 0 < s.server.port < 65536:
        raise ConfigError("server.port", s.server.port, "a TCP port from 1 to 65535")
    base = urlparse(s.server.base_url)
    if base.scheme not in ("http", "https") or not base.netloc:
        raise ConfigError("server.base_url", s.server.base_url, "an http(s):// URL")
    for key in ("secret_key", "feed_key", "credential_key"):
        value = getattr(s.security, key)
        if value in PUBLIC_SECRETS:
            raise ConfigError(f"security.{key}", "<hidden>",
                              "a secret of your own, not the published example value")
        if value and len(value) < 16:
            raise ConfigError(f"security.{key}", "<hidden>", "at least 16 characters")
    for i, value in enumerate(s.security.previous_secret_keys):
        if not value:
            raise ConfigError(f"security.previous_secret_keys[{i}]", "", "a non-empty secret")
    positive("server.max_body_bytes", s.server.max_body_bytes)
    positive("server.max_webhook_body_bytes", s.server.max_webhook_body_bytes)
    for i, origin in enumerate(s.server.allowed_return_origins):
        parts = urlparse(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or \
                parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError(f"server.allowed_return_origins[{i}]", origin,
                              "an origin like https://platform.example.com (no path)")
    non_negative("feeds.history_months", s.feeds.history_months)
    positive("feeds.future_months", s.feeds.future_months)
    positive("feeds.refresh_interval_minutes", s.feeds.refresh_interval_minutes)
    positive("feeds.refresh_seconds", s.feeds.refresh_seconds)
    non_negative("feeds.memory_cache_mb", s.feeds.memory_cache_mb)
    if not 0 <= s.feeds.rebuild_cron_hour <= 23:
        raise ConfigError("feeds.rebuild_cron_hour", s.feeds.rebuild_cron_hour, "an hour 0-23")
    if s.feeds.job_url_template and "{job_id}" not in s.feeds.job_url_template:
        raise ConfigError("feeds.job_url_template", s.feeds.job_url_template,
                          "a URL containing {job_id}, or empty")
    positive("sync.interval_seconds", s.sync.interval_seconds)
    non_negative("sync.history_months", s.sync.history_months)
    positive("sync.future_months", s.sync.future_months)
    positive("sync.stale_after_seconds", s.sync.stale_after_seconds)
    positive("sync.max_occurrences", s.sync.max_occurrences)
    positive("sync.request_timeout_seconds", s.sync.request_timeout_seconds)
    positive("sync.lease_seconds", s.sync.lease_seconds)
    positive("sync.retry_max_seconds", s.sync.retry_max_seconds)
    positive("sync.window_resync_days", s.sync.window_resync_days)
    if s.logging.format not in ("text", "json"):
        raise ConfigError("logging.format", s.logging.format, "text or json")
    positive("sync.concurrency", s.sync.concurrency)
    positive("sync.calendar_write_concurrency", s.sync.calendar_write_concurrency)
    if not 0 <= s.sync.jitter_fraction < 1:
        raise ConfigError("sync.jitter_fraction", s.sync.jitter_fraction,
                          "a number from 0 up to (not including) 1")
    if s.sync.conflict_policy not in _CONFLICT_POLICIES:
        raise ConfigError("sync.conflict_policy", s.sync.conflict_policy,
                          f"one of {', '.join(_CONFLICT_POLICIES)}")
    positive("outlook.max_concurrency", s.outlook.max_concurrency)
    positive("ics.max_bytes", s.ics.max_bytes)
    positive("ics.max_refresh_seconds", s.ics.max_refresh_seconds)
    positive("webhooks.timeout_seconds", s.webhooks.timeout_seconds)
    positive("webhooks.max_concurrency_per_endpoint", s.webhooks.max_concurrency_per_endpoint)
    positive("webhooks.delivery_threads", s.webhooks.delivery_threads)
    positive("webhooks.lease_seconds", s.webhooks.lease_seconds)
    positive("webhooks.poll_seconds", s.webhooks.poll_seconds)
    for key in ("retention_days", "disable_after_days"):
        if getattr(s.webhooks, key) < 1:
            raise ConfigError(f"webhooks.{key}", getattr(s.webhooks, key),
                              "a whole number of days, 1 or more")
    if s.webhooks.lease_seconds <= s.webhooks.timeout_seconds:
        # a delivery still waiting for its answer must not be claimed by another worker
        raise ConfigError("webhooks.lease_seconds", s.webhooks.lease_seconds,
                          f"more than webhooks.timeout_seconds ({s.webhooks.timeout_seconds})")


def load_settings(path: str | os.PathLike[str] | None = None,
                  env: dict[str, str] | None = None) -> Settings:
    """Load settings from ``path`` (or the default lookup) and apply env overrides."""
    env = dict(os.environ if env is None else env)
    candidate = path or env.get("CALSYNC_CONFIG")
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if candidate:
        file = Path(candidate)
        if not file.is_file():
            raise ConfigError("--config", str(file), "an existing TOML file")
    else:
        file = Path("calsync.toml")
    if file.is_file():
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(file), "<file>", f"valid TOML ({exc})") from exc
        source = str(file)

    sections: dict[str, Any] = {}
    known = {f.name: f for f in fields(Settings) if f.name != "source"}
    for name, value in raw.items():
        if name not in known:
            raise ConfigError(name, value, f"one of the tables {sorted(known)}")
    defaults = Settings()
    for name in known:
        cls = type(getattr(defaults, name))
        sections[name] = _section(name, cls, raw.get(name, {}))
    settings = Settings(**sections, source=source)

    for var, (section, key) in _ENV_OVERRIDES.items():
        if env.get(var):
            settings = replace(settings, **{section: replace(getattr(settings, section),
                                                             **{key: env[var]})})
    _validate(settings)
    return settings
