"""The Google API client edge: building the Calendar service and running requests.

The service comes from google-api-python-client's static discovery document;
``client_options.api_endpoint`` replaces the document's ``rootUrl + servicePath``
(``https://www.googleapis.com/calendar/v3/``), so calsync passes ``{api_root}calendar/v3/``.
Requests go through ``google_auth_httplib2.AuthorizedHttp`` over an injected
``httplib2.Http`` (tests give one talking to a loopback emulator), passed to each
``HttpRequest.execute``; it adds the bearer token, refreshes an expired one and replays a
``401`` after refreshing (at most twice). The resources themselves are built once per
endpoint (:func:`calendar_api`).

Threads: ``httplib2.Http`` is not thread-safe (google-api-python-client's "Thread
Safety" page: each thread needs its own, passed to ``execute``). The engine may run a
calendar's writes in several threads, so :class:`RequestRunner` lends each request an
``AuthorizedHttp`` no other request is using: the first one, or one more over an ``Http``
made as the first was (kept for later requests: at most as many as ran at once, their
connections reused). The one ``Credentials`` is shared through
:class:`SharedCredentials`, which refreshes it one thread at a time.

:class:`RequestRunner` maps vendor errors at this edge and runs each request through one
:class:`calsync.sync.retry.RetryPolicy` (the only retry layer: at most ``sync.max_retries``
retries and ``sync.retry_max_seconds`` of waiting in all; sleep and jitter injected):
- ``429``, ``403`` with reason ``rateLimitExceeded``/``userRateLimitExceeded`` and a ``503``
  carrying ``Retry-After`` -> :class:`Throttled` (``Retry-After`` honoured, else exponential
  backoff with jitter); past the caps, or at once when ``Retry-After`` alone exceeds the
  total cap, it is raised with ``retry_after`` set so the runner reschedules the calendar;
- other ``5xx`` and transport failures -> backoff, then ``ProviderUnavailable``;
- ``401`` (after the refresh) and ``invalid_grant`` on refresh -> ``NeedsReauth``, at once,
  and every later call fails fast without touching the network;
- ``409`` -> ``AlreadyExists``, ``412`` -> ``PreconditionFailed``, ``410 fullSyncRequired``
  -> ``SyncTokenInvalid``, ``404``/``410`` -> ``NotFound``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import google_auth_httplib2
import httplib2
from google.auth.exceptions import RefreshError, TransportError
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from calsync.errors import (
    AlreadyExists,
    CalsyncError,
    NeedsReauth,
    NotFound,
    PreconditionFailed,
    ProviderError,
    ProviderUnavailable,
    SyncTokenInvalid,
    Throttled,
)
from calsync.sync.retry import RetryPolicy

log = logging.getLogger("calsync.connectors.google")

SCOPE = "https://www.googleapis.com/auth/calendar"
RATE_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded", "quotaExceeded"})
REAUTH_HINT = "reconnect with `calsync connect google USER`"


def api_endpoint(api_root: str) -> str:
    return api_root.rstrip("/") + "/calendar/v3/"


def make_http(settings: Any, injected: Any = None) -> httplib2.Http:
    if injected is not None:
        return injected() if callable(injected) and not isinstance(injected,
                                                                   httplib2.Http) else injected
    return httplib2.Http(timeout=settings.sync.request_timeout_seconds)


def http_maker(settings: Any, injected: Any = None) -> Callable[[], httplib2.Http] | None:
    """How to make more ``Http`` objects like :func:`make_http` (one per thread): None
    when the caller injected a single ``Http`` object."""
    if injected is None:
        return lambda: httplib2.Http(timeout=settings.sync.request_timeout_seconds)
    if callable(injected) and not isinstance(injected, httplib2.Http):
        return injected  # type: ignore[no-any-return]
    return None


def make_credentials(settings: Any, stored: dict[str, Any]) -> Credentials:
    expiry = None
    if stored.get("expiry"):
        parsed = dt.datetime.fromisoformat(stored["expiry"])
        # google-auth compares expiry with a naive UTC clock.
        expiry = parsed.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return Credentials(  # type: ignore[no-untyped-call]
        token=stored.get("token"),
        refresh_token=stored.get("refresh_token"),
        token_uri=settings.google.token_uri,
        client_id=settings.google.client_id,
        client_secret=settings.google.client_secret or None,
        scopes=[SCOPE],
        expiry=expiry,
    )


def stored_credentials(creds: Credentials) -> dict[str, Any]:
    expiry = creds.expiry.replace(tzinfo=dt.timezone.utc).isoformat() if creds.expiry else None
    return {"token": creds.token, "refresh_token": creds.refresh_token, "expiry": expiry,
            "scopes": [SCOPE], "version": 1}


class _NoTransport(httplib2.Http):  # type: ignore[misc]
    """The transport of the shared service: never used, every request is executed with
    the connector's own authorised http."""

    def request(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("calsync: Google requests must be executed with the connector's "
                           "http")


class CalendarApi:
    """The Calendar v3 resources (events, calendarList, calendars, channels) built once
    per API endpoint. googleapiclient builds every method of a resource (docs included)
    each time one is asked for — ~10 ms for ``events()`` — so connectors share these and
    pass their own ``AuthorizedHttp`` to ``execute``."""

    def __init__(self, endpoint: str) -> None:
        service = build("calendar", "v3", http=_NoTransport(), static_discovery=True,
                        cache_discovery=False, client_options={"api_endpoint": endpoint})
        self.service = service
        self.events = service.events()
        self.calendar_list = service.calendarList()
        self.calendars = service.calendars()
        self.channels = service.channels()


_apis: dict[str, CalendarApi] = {}
_apis_lock = threading.Lock()


def calendar_api(settings: Any) -> CalendarApi:
    endpoint = api_endpoint(settings.google.api_root)
    with _apis_lock:
        if endpoint not in _apis:
            _apis[endpoint] = CalendarApi(endpoint)
        return _apis[endpoint]


class SharedCredentials:
    """One ``Credentials`` used by several threads' ``AuthorizedHttp``: applying and
    refreshing the token take a lock (one refresh at a time, the others then see the new
    token); everything else reads through."""

    def __init__(self, creds: Any) -> None:
        self._creds = creds
        self._lock = threading.Lock()

    def before_request(self, request: Any, method: str, url: str,
                       headers: dict[str, str]) -> None:
        with self._lock:
            self._creds.before_request(request, method, url, headers)

    def refresh(self, request: Any) -> None:
        with self._lock:
            self._creds.refresh(request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._creds, name)


def authorized_http(creds: Any, http: httplib2.Http) -> Any:
    return google_auth_httplib2.AuthorizedHttp(creds, http=http)


def error_reason(exc: HttpError) -> str:
    try:
        data = json.loads(exc.content.decode("utf-8", "replace"))
        errors = data.get("error", {}).get("errors") or []
        if errors:
            return str(errors[0].get("reason", ""))
        return str(data.get("error", {}).get("status", ""))
    except (ValueError, AttributeError):
        return ""


def retry_after(exc: HttpError) -> float | None:
    value = exc.resp.get("retry-after") if exc.resp is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            from email.utils import parsedate_to_datetime

            when = parsedate_to_datetime(value)
            return max(0.0, (when - dt.datetime.now(dt.timezone.utc)).total_seconds())
        except (TypeError, ValueError):
            return None


class RequestRunner:
    """Executes googleapiclient requests through the retry policy, mapping errors."""

    def __init__(self, account: str, retry: RetryPolicy) -> None:
        self.account = account
        self.retry = retry
        self.requests = 0
        self._count_lock = threading.Lock()
        self.dead: NeedsReauth | None = None
        self.http: Any = None  # the connector's AuthorizedHttp (see bind)
        self._more: Callable[[], Any] | None = None  # makes one more (see bind)
        self._free: list[Any] = []  # AuthorizedHttp no request is using
        self.made: list[Any] = []  # the ones made besides ``http``, closed with the connector
        self._pool_lock = threading.Lock()
        # domain-wide delegation: a refused token is the admin's to fix, not a re-sign-in
        self.refusal: Callable[[str], CalsyncError] | None = None

    def bind(self, http: Any, more: Callable[[], Any] | None = None) -> None:
        """Requests go through ``http``; ``more`` makes another for a request that runs
        while ``http`` is in use (without it, one request at a time)."""
        self.http = http
        self._more = more
        self._free = [http]
        self.made = []

    @property
    def threaded(self) -> bool:
        """Whether requests may run from several threads at once."""
        return self._more is not None

    @contextlib.contextmanager
    def _lend(self) -> Iterator[Any]:
        """An AuthorizedHttp for one request, used by no other request meanwhile."""
        if self._more is None:
            yield self.http
            return
        with self._pool_lock:
            http = self._free.pop() if self._free else None
        if http is None:
            http = self._more()
            with self._pool_lock:
                self.made.append(http)
        try:
            yield http
        finally:
            with self._pool_lock:
                self._free.append(http)

    def run(self, request: Any, what: str, calendar_id: str | None = None,
            headers: dict[str, str] | None = None) -> Any:
        where = f"Google account {self.account}" + (f", calendar {calendar_id}"
                                                    if calendar_id else "")
        return self.retry.call(lambda: self._attempt(request, what, where, headers))

    def _attempt(self, request: Any, what: str, where: str,
                 headers: dict[str, str] | None) -> Any:
        """One HTTP request; raises calsync's typed errors."""
        if self.dead is not None:
            raise self.dead
        if headers:
            request.headers.update(headers)
        with self._count_lock:
            self.requests += 1
        try:
            with self._lend() as http:
                return request.execute(http=http, num_retries=0)
        except HttpError as exc:
            status = exc.resp.status
            reason = error_reason(exc)
            hinted = retry_after(exc)
            if status == 429 or (status == 403 and reason in RATE_REASONS) or \
                    (status == 503 and hinted is not None):
                log.info("%s: %s throttled (%s)", where, what, reason or status)
                raise Throttled(f"{where}: {what} throttled by Google ({reason or status}); "
                                "calsync retries later", retry_after=hinted) from exc
            if status >= 500:
                raise ProviderUnavailable(f"{where}: {what} failed: Google answered "
                                          f"{status}; calsync retries later") from exc
            raise self._map(exc, status, reason, what, where) from exc
        except RefreshError as exc:
            raise self._refresh_failed(exc, where) from exc
        except (TransportError, httplib2.HttpLib2Error, OSError) as exc:
            raise ProviderUnavailable(f"{where}: {what} failed: {type(exc).__name__}; "
                                      "calsync retries later") from exc

    def _refresh_failed(self, exc: RefreshError, where: str) -> CalsyncError:
        text = str(exc)
        data = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
        if self.refusal is not None:
            return self.refusal(str(data.get("error") or
                                    ("unauthorized_client" if "unauthorized_client" in text
                                     else "invalid_grant")))
        if data.get("error") in ("invalid_grant", "invalid_client", "unauthorized_client") \
                or "invalid_grant" in text or not getattr(exc, "retryable", False):
            self.dead = NeedsReauth(f"{where}: Google refused the stored sign-in "
                                    f"({data.get('error') or 'refresh failed'}); {REAUTH_HINT}")
            return self.dead
        return ProviderUnavailable(f"{where}: refreshing the access token failed; "
                                   "calsync retries later")

    def _map(self, exc: HttpError, status: int, reason: str, what: str,
             where: str) -> CalsyncError:
        if status == 401:
            self.dead = NeedsReauth(f"{where}: Google rejected the access token after a "
                                    f"refresh; {REAUTH_HINT}")
            return self.dead
        if status == 410 and reason == "fullSyncRequired":
            return SyncTokenInvalid(f"{where}: the sync token expired; full resync")
        if status == 409:
            return AlreadyExists(f"{where}: {what}: the event already exists")
        if status == 412:
            return PreconditionFailed(f"{where}: {what}: the event changed meanwhile (etag)")
        if status in (404, 410):
            return NotFound(f"{where}: {what}: not found", status=status)
        if status == 403:
            return ProviderError(f"{where}: {what}: Google refused access ({reason}); check "
                                 "that the account may write to this calendar")
        return ProviderError(f"{where}: {what}: Google answered {status} ({reason})")
