"""HTTP for CalDAV: one httpx client with Basic auth, a request counter, the mapping of
HTTP failures to calsync's error tree, and the one retry layer (the connector's edge).

Every request goes through :class:`calsync.sync.retry.RetryPolicy`: 429/503/5xx and
network failures are retried here and nowhere above; a ``Retry-After`` beyond the policy's
total cap is raised at once as ``Throttled(retry_after)`` for the runner to reschedule.
Answers are read streaming and refused past :data:`MAX_RESPONSE_BYTES` (any URL a user
types is untrusted), before they are ever held whole.

Passwords go only into the Authorization header; they are never logged or put into
error messages.
"""

from __future__ import annotations

import email.utils
import functools
import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from calsync.errors import (
    AuthFailed,
    CalsyncError,
    NeedsReauth,
    NotCaldav,
    ProviderError,
    ProviderUnavailable,
    Throttled,
    Unreachable,
)
from calsync.sync.retry import RetryPolicy

log = logging.getLogger("calsync.connectors.caldav")
XML = "application/xml; charset=utf-8"
# A calendar of years of events is a few MB; an answer past this is refused unread.
MAX_RESPONSE_BYTES = 50 * 1024 * 1024
_REDIRECTS = (301, 302, 303, 307, 308)
# Framing of the body as sent; the body kept is already decoded and complete.
_FRAMING_HEADERS = ("content-encoding", "content-length", "transfer-encoding")


class TlsWhenNeeded(httpx.BaseTransport):
    """httpx's transport, with the TLS context (the CA bundle: ~0.1 s of CPU to load)
    made at the first https request rather than up front: a plain-http server (a LAN
    Radicale) never needs it, and a process doing one no-op sync is that much shorter."""

    def __init__(self, verify: bool = True) -> None:
        self._verify = verify
        self._plain: httpx.HTTPTransport | None = None
        self._tls: httpx.HTTPTransport | None = None
        self._lock = threading.Lock()

    def _for(self, scheme: str) -> httpx.HTTPTransport:
        with self._lock:
            if scheme == "https":
                if self._tls is None:
                    self._tls = httpx.HTTPTransport(verify=self._verify)
                return self._tls
            if self._plain is None:  # no certificates are checked on plain http
                self._plain = httpx.HTTPTransport(verify=False)
            return self._plain

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._for(request.url.scheme).handle_request(request)

    def close(self) -> None:
        for transport in (self._plain, self._tls):
            if transport is not None:
                transport.close()


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date relative to ``now``."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


class DavSession:
    """Requests against one CalDAV account. ``verifying`` turns auth and network
    failures into the user errors of connect time (AuthFailed, NotCaldav, Unreachable)
    instead of NeedsReauth/ProviderUnavailable."""

    def __init__(self, username: str, password: str, *, http: Any = None,
                 timeout: float = 30.0, verify_tls: bool = True, label: str = "",
                 retry: RetryPolicy | None = None,
                 max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self.label = label  # which connection, for messages
        self.requests = 0
        self._count_lock = threading.Lock()  # writes to one calendar run in parallel
        self.verifying = False
        self.retry = retry or RetryPolicy()
        self.max_response_bytes = max_response_bytes
        auth = httpx.BasicAuth(username, password) if username or password else None
        if isinstance(http, httpx.Client):
            self._client = http
            self._own = False
            self._auth = auth
        else:
            kwargs: dict[str, Any] = {"timeout": timeout, "follow_redirects": False,
                                      "transport": http if isinstance(
                                          http, httpx.BaseTransport) else TlsWhenNeeded(
                                          verify_tls)}
            self._client = httpx.Client(**kwargs)
            self._own = True
            self._auth = auth

    def close(self) -> None:
        if self._own:
            self._client.close()

    def request(self, method: str, url: str, *, body: bytes | None = None,
                headers: dict[str, str] | None = None, depth: str | None = None,
                what: str = "") -> httpx.Response:
        """Send one request (following up to 5 redirects by hand, each counted), each hop
        retried by the policy. Network failures, throttling and 5xx that outlast the
        retries raise; any other HTTP status is returned with its body read."""
        hdrs = dict(headers or {})
        if body is not None and "Content-Type" not in hdrs:
            hdrs["Content-Type"] = XML
        if depth is not None:
            hdrs["Depth"] = depth
        for _ in range(6):
            resp = self.retry.call(functools.partial(self._attempt, method, url, body, hdrs,
                                                     what))
            if resp.status_code in _REDIRECTS and "location" in resp.headers:
                url = str(resp.url.join(resp.headers["location"]))
                if resp.status_code == 303:
                    method, body = "GET", None
                continue
            return resp
        raise ProviderError(f"{self.label}: too many redirects at {url}", url=url)

    def _attempt(self, method: str, url: str, body: bytes | None, headers: dict[str, str],
                 what: str) -> httpx.Response:
        """One HTTP exchange: the answer with its body read (capped), or a typed error."""
        with self._count_lock:
            self.requests += 1
        request = self._client.build_request(method, url, content=body, headers=headers)
        try:
            streamed = self._client.send(request, auth=self._auth, stream=True)
        except httpx.TimeoutException as exc:
            raise self._unreachable(url, f"timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise self._unreachable(url, f"{type(exc).__name__}: {exc}") from exc
        try:
            content = self._read_capped(streamed, url, what)
        except httpx.TimeoutException as exc:
            raise self._unreachable(url, f"timed out reading the answer "
                                         f"({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise self._unreachable(url, f"answer cut off ({type(exc).__name__})") from exc
        finally:
            streamed.close()
        resp = httpx.Response(streamed.status_code, content=content, request=request,
                              headers=[(k, v) for k, v in streamed.headers.multi_items()
                                       if k.lower() not in _FRAMING_HEADERS],
                              extensions=streamed.extensions)
        log.debug("%s %s -> %s", method, url, resp.status_code)
        if resp.status_code not in _REDIRECTS:
            self._raise_for_throttling(resp, url, what)
        return resp

    def _read_capped(self, resp: httpx.Response, url: str, what: str) -> bytes:
        """The decoded body, refused once it passes the cap (never held whole)."""
        limit = self.max_response_bytes
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit \
                and "content-encoding" not in resp.headers:
            raise self._too_large(url, what, f"it announces {int(declared):,} bytes")
        chunks: list[bytes] = []
        size = 0
        for chunk in resp.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise self._too_large(url, what, f"it passed {limit:,} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, url: str, what: str, why: str) -> CalsyncError:
        message = (f"the answer of {url} to {what or 'a request'} is too large ({why}; the "
                   f"limit is {self.max_response_bytes // (1024 * 1024)} MB); not read")
        if self.verifying:
            return NotCaldav(message + "; check the URL", field="url", url=url)
        return ProviderError(f"{self.label}: {message}", url=url)

    def _unreachable(self, url: str, why: str) -> CalsyncError:
        host = urlsplit(url).netloc
        if self.verifying:
            return Unreachable(f"cannot reach the CalDAV server at {url} ({why}); "
                               f"check the URL and that {host} is reachable", field="url",
                               url=url)
        return ProviderUnavailable(f"{self.label}: CalDAV server {host} unreachable ({why}); "
                                   "will retry", url=url)

    def _raise_for_throttling(self, resp: httpx.Response, url: str, what: str) -> None:
        code = resp.status_code
        if code in (429, 503):
            seconds = retry_after_seconds(resp.headers.get("retry-after"))
            if code == 429 or seconds is not None:
                raise Throttled(f"{self.label}: {what or url} throttled (HTTP {code})"
                                + (f", retry after {seconds:.0f}s" if seconds is not None else ""),
                                retry_after=seconds, url=url)
        if code >= 500 and code != 501:  # 501: the method is not there; retrying won't help
            raise ProviderUnavailable(f"{self.label}: {what or url} failed with HTTP {code}; "
                                      "will retry", url=url, status=code)

    def auth_failed(self, resp: httpx.Response, url: str, what: str) -> CalsyncError:
        """The error for a 401 (or 403 at connect time)."""
        detail = f"HTTP {resp.status_code} {resp.reason_phrase}".strip()
        if self.verifying:
            return AuthFailed(f"wrong username or app password for {url}: {detail}",
                              field="password", url=url, status=resp.status_code)
        return NeedsReauth(f"{self.label}: the server refused the stored password ({detail}) "
                           f"at {what or url}; reconnect the account", url=url)

    def unexpected(self, resp: httpx.Response, url: str, what: str) -> CalsyncError:
        if resp.status_code == 401 or (self.verifying and resp.status_code == 403):
            return self.auth_failed(resp, url, what)
        if self.verifying:
            return NotCaldav(f"{url} did not answer {what or 'the request'} as a CalDAV server "
                             f"(HTTP {resp.status_code} {resp.reason_phrase}); check the URL",
                             field="url", url=url, status=resp.status_code)
        return ProviderError(f"{self.label}: {what or 'request'} at {url} failed with HTTP "
                             f"{resp.status_code} {resp.reason_phrase}", url=url,
                             status=resp.status_code)
