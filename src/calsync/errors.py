"""The one error tree of calsync.

    CalsyncError                      root of everything calsync raises on purpose
    +-- UserError                     bad input or usage; shown without a traceback
    |   +-- ConfigError               a config key has a bad value (names key, value, expected)
    |   +-- ValidationError           a record failed validation (names record, field, why)
    |   +-- NotFound                  the thing named does not exist
    |   +-- AuthError                 missing/invalid credentials (401)
    |   +-- Forbidden                 authenticated but not allowed (403)
    |   +-- ConnectFailed             credentials checked at connect time did not work (422)
    |       +-- AuthFailed            the server refused the username/password
    |       +-- NotCaldav             the URL answers, but not as a CalDAV server
    |       +-- Unreachable           the server cannot be reached (DNS, refused, timeout, TLS)
    +-- PreconditionFailed            a conditional write lost (etag mismatch)
    |   +-- AlreadyExists             a create met an existing object
    +-- SyncError                     a sync run cannot proceed safely
    |   +-- SyncTokenInvalid          the remote forgot our sync token: full resync
    |   +-- CalendarSuddenlyEmpty     a calendar that had items lists none: refuse to mirror
    |   +-- CalendarGone              the calendar's collection answered 404/410: choose another
    |   +-- BookingConflict           a booking would double-book someone
    +-- ProviderError                 a remote service failed: which connection, calendar, next step
        +-- Throttled                 429/503 with an optional retry_after (seconds)
        +-- NeedsReauth               credentials revoked/expired: the user must reconnect
        +-- ProviderUnavailable       timeouts, 5xx: retry later

Vendor exceptions are mapped to these at the connector's edge (``raise X(...) from exc``).
"""

from __future__ import annotations

from typing import Any


class CalsyncError(Exception):
    """Root of every error calsync raises on purpose."""

    code = "error"
    http_status = 500

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = context

    def __str__(self) -> str:
        return self.message


class UserError(CalsyncError):
    code = "bad_request"
    http_status = 400


class ConfigError(UserError):
    code = "config_error"

    def __init__(self, key: str, value: Any, expected: str) -> None:
        super().__init__(
            f"config key {key!r} has value {value!r}: expected {expected}",
            key=key, value=value, expected=expected,
        )
        self.key = key
        self.value = value
        self.expected = expected


class ValidationError(UserError):
    """A record failed validation. ``record`` is e.g. ``jobs[3] (id='j9')``."""

    code = "invalid"
    http_status = 422

    def __init__(self, record: str, field: str, why: str) -> None:
        super().__init__(f"{record}: field {field!r}: {why}", record=record, field=field, why=why)
        self.record = record
        self.field = field
        self.why = why

    def as_dict(self) -> dict[str, str]:
        return {"record": self.record, "field": self.field, "error": self.why}


class NotFound(UserError):
    code = "not_found"
    http_status = 404


class AuthError(UserError):
    code = "unauthorized"
    http_status = 401


class Forbidden(UserError):
    code = "forbidden"
    http_status = 403


class ConnectFailed(UserError):
    """Connecting an account failed while its credentials were checked. ``field`` names the
    form field the user should look at again (``password``, ``url``, ...)."""

    code = "connect_failed"
    http_status = 422

    def __init__(self, message: str, field: str = "", **context: Any) -> None:
        super().__init__(message, field=field, **context)
        self.field = field


class AuthFailed(ConnectFailed):
    code = "auth_failed"


class NotCaldav(ConnectFailed):
    code = "not_caldav"


class Unreachable(ConnectFailed):
    code = "unreachable"


class PreconditionFailed(CalsyncError):
    code = "precondition_failed"
    http_status = 412


class AlreadyExists(PreconditionFailed):
    code = "already_exists"
    http_status = 409


class SyncError(CalsyncError):
    code = "sync_error"
    http_status = 409


class SyncTokenInvalid(SyncError):
    code = "sync_token_invalid"


class CalendarSuddenlyEmpty(SyncError):
    code = "calendar_suddenly_empty"


class CalendarGone(SyncError):
    """The remote calendar itself no longer exists (its collection answered 404/410). Only
    that calendar stops; the connection's other calendars go on syncing."""

    code = "calendar_gone"
    http_status = 410


class BookingConflict(SyncError):
    code = "conflict"
    http_status = 409

    def __init__(self, message: str, conflicts: Any = None) -> None:
        super().__init__(message, conflicts=conflicts)
        self.conflicts = conflicts


class ProviderError(CalsyncError):
    code = "provider_error"
    http_status = 502


class Throttled(ProviderError):
    code = "throttled"
    http_status = 503

    def __init__(self, message: str, retry_after: float | None = None, **context: Any) -> None:
        super().__init__(message, retry_after=retry_after, **context)
        self.retry_after = retry_after


class NeedsReauth(ProviderError):
    code = "needs_reauth"
    http_status = 401


class ProviderUnavailable(ProviderError):
    code = "provider_unavailable"
    http_status = 503
