"""Fetching one feed over HTTP: conditional GET (``If-None-Match``/``If-Modified-Since``),
a cap on the answer's size, and calsync's errors for every way it can fail.

The feed URL is treated as a secret (private calendar addresses carry their key in the
path or query): messages name the feed by its :func:`feed_label`, never by the URL.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit, urlunsplit

import httpx

from calsync.errors import (
    CalsyncError,
    ConnectFailed,
    NeedsReauth,
    ProviderError,
    ProviderUnavailable,
    Throttled,
    Unreachable,
    UserError,
)
from calsync.sync.retry import RetryPolicy

DEFAULT_MAX_BYTES = 10 * 1024 * 1024


def retry_after_seconds(value: str | None, now: dt.datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, (when - (now or dt.datetime.now(dt.timezone.utc))).total_seconds())


def normalise_url(url: str) -> str:
    """``webcal://`` and ``webcals://`` are https; anything but http(s) is refused."""
    text = url.strip()
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme in ("webcal", "webcals"):
        parts = parts._replace(scheme="https")
    elif scheme not in ("http", "https"):
        raise UserError(f"--url: a subscribed calendar needs an http://, https:// or "
                        f"webcal:// address, got a {scheme or 'relative'!s} address")
    if not parts.netloc:
        raise UserError("--url: the address has no host name")
    return urlunsplit(parts)


def feed_digest(url: str) -> str:
    """A short stable name of the feed (the calendar's remote id), revealing nothing."""
    return hashlib.sha256(url.encode()).hexdigest()[:12]


def feed_label(url: str) -> str:
    """How the feed is shown: its host and a digest (the path and query may hold its key)."""
    return f"{urlsplit(url).hostname or 'feed'} [{feed_digest(url)}]"


@dataclass(frozen=True)
class Fetched:
    """One answer: ``body`` is None for ``304 Not Modified``."""

    body: bytes | None
    etag: str | None
    last_modified: str | None


class FeedFetcher:
    """GETs one feed URL through the one retry layer. ``verifying`` (connect time) turns
    failures into :class:`ConnectFailed` errors that say what to fix."""

    def __init__(self, url: str, *, http: httpx.Client | None = None, timeout: float = 30.0,
                 max_bytes: int = DEFAULT_MAX_BYTES, retry: RetryPolicy | None = None) -> None:
        self.url = url
        self.label = f"subscribed calendar {feed_label(url)}"
        self.max_bytes = max_bytes
        self.retry = retry or RetryPolicy()
        self.verifying = False
        self._own = http is None
        self.http = http or httpx.Client(timeout=timeout, follow_redirects=True,
                                         headers={"User-Agent": "calsync (subscribed calendar)",
                                                  "Accept": "text/calendar, */*;q=0.5"})

    def close(self) -> None:
        if self._own:
            self.http.close()

    def get(self, etag: str | None = None, last_modified: str | None = None) -> Fetched:
        headers = {}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        fetched: Fetched = self.retry.call(lambda: self._attempt(headers))
        return fetched

    def _attempt(self, headers: dict[str, str]) -> Fetched:
        try:
            with self.http.stream("GET", self.url, headers=headers) as resp:
                if resp.status_code == 304:
                    return Fetched(None, resp.headers.get("etag") or headers.get(
                        "If-None-Match"), resp.headers.get("last-modified") or headers.get(
                        "If-Modified-Since"))
                self._raise_for_status(resp)
                body = self._read_capped(resp)
                return Fetched(body, resp.headers.get("etag"),
                               resp.headers.get("last-modified"))
        except httpx.TimeoutException as exc:
            raise self._unreachable("timed out") from exc
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise self._unreachable(type(exc).__name__) from exc

    def _read_capped(self, resp: httpx.Response) -> bytes:
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes \
                and "content-encoding" not in resp.headers:
            raise self._too_large(f"it announces {int(declared):,} bytes")
        chunks: list[bytes] = []
        size = 0
        for chunk in resp.iter_bytes():
            size += len(chunk)
            if size > self.max_bytes:
                raise self._too_large(f"it passed {self.max_bytes:,} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, why: str) -> CalsyncError:
        message = (f"{self.label}: the feed is too large ({why}; the limit is "
                   f"[ics] max_bytes = {self.max_bytes:,}); not read")
        return ConnectFailed(message, field="url") if self.verifying else ProviderError(message)

    def _unreachable(self, why: str) -> CalsyncError:
        if self.verifying:
            return Unreachable(f"cannot fetch {self.label} ({why}); check the address and "
                               f"that the server is reachable", field="url")
        return ProviderUnavailable(f"{self.label}: server unreachable ({why}); the last "
                                   f"fetched busy times are kept, will retry")

    def _raise_for_status(self, resp: httpx.Response) -> None:
        code = resp.status_code
        if code == 200:
            return
        if code in (429, 503):
            seconds = retry_after_seconds(resp.headers.get("retry-after"))
            if code == 429 or seconds is not None:
                raise Throttled(f"{self.label}: throttled (HTTP {code})", retry_after=seconds)
        detail = f"HTTP {code} {resp.reason_phrase}".strip()
        if code >= 500:
            raise ProviderUnavailable(f"{self.label}: the server failed ({detail}); the last "
                                      f"fetched busy times are kept, will retry", status=code)
        if self.verifying:
            raise ConnectFailed(f"{self.label} answered {detail}; check the address "
                                f"(and, for a private feed, that its link is still valid)",
                                field="url", status=code)
        if code in (401, 403):
            raise NeedsReauth(f"{self.label}: the server refused the feed ({detail}); its "
                              f"link may have been reset: subscribe again with the new link")
        if code in (404, 410):
            raise ProviderError(f"{self.label}: the feed is gone ({detail}); subscribe "
                                f"again with its new address or disconnect it", status=code)
        raise ProviderError(f"{self.label}: unexpected answer {detail}", status=code)
