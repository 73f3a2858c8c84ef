"""HTTP for CalDAV: one httpx client with Basic auth, a request counter, and the mapping
of HTTP failures to calsync's error tree (the connector's edge).

Passwords go only into the Authorization header; they are never logged or put into
error messages.
"""

from __future__ import annotations

import email.utils
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

from calsync.errors import (
    CalsyncError,
    NeedsReauth,
    ProviderError,
    ProviderUnavailable,
    Throttled,
    UserError,
)

log = logging.getLogger("calsync.connectors.caldav")
XML = "application/xml; charset=utf-8"


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
    failures into UserError (connect time) instead of NeedsReauth/ProviderUnavailable."""

    def __init__(self, username: str, password: str, *, http: Any = None,
                 timeout: float = 30.0, verify_tls: bool = True, label: str = "") -> None:
        self.label = label  # which connection, for messages
        self.requests = 0
        self.verifying = False
        auth = httpx.BasicAuth(username, password) if username or password else None
        if isinstance(http, httpx.Client):
            self._client = http
            self._own = False
            self._auth = auth
        else:
            kwargs: dict[str, Any] = {"timeout": timeout, "verify": verify_tls,
                                      "follow_redirects": False}
            if isinstance(http, httpx.BaseTransport):
                kwargs["transport"] = http
            self._client = httpx.Client(**kwargs)
            self._own = True
            self._auth = auth

    def close(self) -> None:
        if self._own:
            self._client.close()

    def request(self, method: str, url: str, *, body: bytes | None = None,
                headers: dict[str, str] | None = None, depth: str | None = None,
                what: str = "") -> httpx.Response:
        """Send one request (following up to 5 redirects by hand, each counted).
        Network failures and throttling raise; any HTTP status is returned."""
        hdrs = dict(headers or {})
        if body is not None and "Content-Type" not in hdrs:
            hdrs["Content-Type"] = XML
        if depth is not None:
            hdrs["Depth"] = depth
        for _ in range(6):
            self.requests += 1
            try:
                resp = self._client.request(method, url, content=body, headers=hdrs,
                                            auth=self._auth)
            except httpx.TimeoutException as exc:
                raise self._unreachable(url, f"timed out ({type(exc).__name__})") from exc
            except httpx.TransportError as exc:
                raise self._unreachable(url, f"{type(exc).__name__}: {exc}") from exc
            if resp.status_code in (301, 302, 303, 307, 308) and "location" in resp.headers:
                url = str(resp.url.join(resp.headers["location"]))
                if resp.status_code == 303:
                    method, body = "GET", None
                continue
            log.debug("%s %s -> %s", method, url, resp.status_code)
            self._raise_for_throttling(resp, url, what)
            return resp
        raise ProviderError(f"{self.label}: too many redirects at {url}", url=url)

    def _unreachable(self, url: str, why: str) -> CalsyncError:
        host = urlsplit(url).netloc
        if self.verifying:
            return UserError(f"cannot reach the CalDAV server at {url} ({why}); "
                             f"check the URL and that {host} is reachable", url=url)
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
        if code >= 500:
            raise ProviderUnavailable(f"{self.label}: {what or url} failed with HTTP {code}; "
                                      "will retry", url=url, status=code)

    def auth_failed(self, resp: httpx.Response, url: str, what: str) -> CalsyncError:
        """The error for a 401 (or 403 at connect time)."""
        detail = f"HTTP {resp.status_code} {resp.reason_phrase}".strip()
        if self.verifying:
            return UserError(f"wrong username or app password for {url}: {detail}", url=url,
                             status=resp.status_code)
        return NeedsReauth(f"{self.label}: the server refused the stored password ({detail}) "
                           f"at {what or url}; reconnect the account", url=url)

    def unexpected(self, resp: httpx.Response, url: str, what: str) -> CalsyncError:
        if resp.status_code == 401 or (self.verifying and resp.status_code == 403):
            return self.auth_failed(resp, url, what)
        if self.verifying:
            return UserError(f"{url} did not answer {what or 'the request'} as a CalDAV server "
                             f"(HTTP {resp.status_code} {resp.reason_phrase}); check the URL",
                             url=url, status=resp.status_code)
        return ProviderError(f"{self.label}: {what or 'request'} at {url} failed with HTTP "
                             f"{resp.status_code} {resp.reason_phrase}", url=url,
                             status=resp.status_code)
