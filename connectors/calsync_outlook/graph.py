"""The Graph HTTP edge: auth header, retries, throttling, per-mailbox concurrency, $batch.

- Every request holds the mailbox's semaphore (``outlook.max_concurrency``, Graph allows 4
  concurrent requests per app per mailbox); semaphores are shared by all connectors of the
  same mailbox in this process.
- 401: one forced token refresh, then NeedsReauth.
- Retries: each request is one :class:`calsync.sync.retry.RetryPolicy` call (the only retry
  layer; nothing above retries again). 429/503 are ``Throttled(Retry-After)``, other 5xx and
  transport errors ``ProviderUnavailable``; the policy retries at most ``sync.max_retries``
  times and waits at most ``sync.retry_max_seconds`` in all, and a ``Retry-After`` beyond
  that cap is raised at once as ``Throttled(retry_after)`` so the runner reschedules the
  calendar instead of a worker sleeping on it.
- ``batch()``: JSON batching, at most 20 requests per POST; throttled items (429/503) are
  retried alone after their Retry-After under the same caps (attempts and total wait); items
  still throttled at the cap are answered with their 429/503 for the caller to map to
  ``Throttled``.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import httpx

from calsync.errors import NeedsReauth, ProviderUnavailable, Throttled
from calsync.sync.retry import RetryPolicy
from calsync_outlook.auth import TokenSource, reauth_message

MAX_BATCH = 20
RETRY_STATUSES = (429, 503)

_semaphores: dict[str, threading.BoundedSemaphore] = {}
_semaphores_lock = threading.Lock()


def mailbox_semaphore(mailbox: str, limit: int) -> threading.BoundedSemaphore:
    with _semaphores_lock:
        key = f"{mailbox.lower()}|{limit}"
        if key not in _semaphores:
            _semaphores[key] = threading.BoundedSemaphore(limit)
        return _semaphores[key]


@dataclass
class GraphResponse:
    status: int
    headers: dict[str, str]
    body: Any  # parsed JSON (dict) or None

    def error_code(self) -> str:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return str(self.body["error"].get("code") or "")
        return ""

    def error_message(self) -> str:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return str(self.body["error"].get("message") or "")[:300]
        return ""


def retry_after(headers: dict[str, str]) -> float | None:
    for k, v in headers.items():
        if k.lower() == "retry-after":
            try:
                return max(0.0, float(v))
            except ValueError:
                return None
    return None


class GraphClient:
    def __init__(self, settings: Any, http: httpx.Client, tokens: TokenSource, mailbox: str,
                 sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None) -> None:
        self.base = settings.outlook.graph_url.rstrip("/")
        self._base_path = urlparse(self.base).path.rstrip("/")
        self.http = http
        self.tokens = tokens
        self.mailbox = mailbox
        self.retry = RetryPolicy.from_settings(settings, sleep=sleep, rng=rng)
        self.retry.sleep = sleep  # from_settings drops a falsy recorder (an empty list)
        self.timeout = settings.sync.request_timeout_seconds
        self.semaphore = mailbox_semaphore(mailbox or "?", settings.outlook.max_concurrency)
        self.requests = 0  # HTTP requests sent (for the no-op budget and the benchmark)
        self._count_lock = threading.Lock()

    def url(self, path: str) -> str:
        return path if path.startswith("https://") or path.startswith("http://") \
            else self.base + path

    def _send(self, method: str, url: str, token: str, json_body: Any,
              headers: dict[str, str]) -> GraphResponse:
        with self.semaphore:
            with self._count_lock:
                self.requests += 1
            try:
                resp = self.http.request(method, url, json=json_body, timeout=self.timeout,
                                         headers={"Authorization": f"Bearer {token}",
                                                  "Accept": "application/json", **headers})
            except httpx.HTTPError as exc:
                raise ProviderUnavailable(f"Microsoft Graph unreachable ({self.mailbox}): "
                                          f"{type(exc).__name__}") from exc
        body: Any = None
        if resp.content:
            try:
                body = resp.json()
            except ValueError:
                body = None
        return GraphResponse(resp.status_code, dict(resp.headers), body)

    def request(self, method: str, path: str, json_body: Any = None,
                headers: dict[str, str] | None = None,
                ok: tuple[int, ...] = (200, 201, 204)) -> GraphResponse:
        """Send through the retry policy. Returns responses with a status in ``ok`` or any
        4xx other than 401/429 (the caller maps those); raises on the rest."""
        url = self.url(path)
        extra = headers or {}
        token = [self.tokens.token()]
        refreshed = [False]

        def attempt() -> GraphResponse:
            resp = self._send(method, url, token[0], json_body, extra)
            if resp.status == 401:
                if refreshed[0]:
                    raise NeedsReauth(reauth_message(self.mailbox),
                                      error=resp.error_code() or "401")
                token[0] = self.tokens.token(force_refresh=True, stale=token[0])
                refreshed[0] = True
                return attempt()
            if resp.status in ok or (400 <= resp.status < 500 and resp.status != 429):
                return resp
            if resp.status in RETRY_STATUSES:
                raise Throttled(f"Microsoft Graph throttled {method} for {self.mailbox} "
                                f"(HTTP {resp.status}); calsync retries later",
                                retry_after=retry_after(resp.headers))
            raise ProviderUnavailable(f"Microsoft Graph error HTTP {resp.status} "
                                      f"{resp.error_code()} for {self.mailbox}; calsync "
                                      "retries later")

        return self.retry.call(attempt)

    def batch(self, items: list[dict[str, Any]]) -> list[GraphResponse]:
        """Run requests ``{"method", "url", "headers"?, "body"?}`` (url relative to the
        version root, e.g. ``/me/events``) in $batch POSTs of at most 20; returns one
        response per item, in order. Throttled items are retried after their Retry-After
        within the policy's caps; those still throttled keep their 429/503 answer."""
        results: list[GraphResponse | None] = [None] * len(items)
        pending = list(range(len(items)))
        attempt = 0
        spent = 0.0
        while pending:
            throttled: list[int] = []
            waits: list[float] = []
            for start in range(0, len(pending), MAX_BATCH):
                chunk = pending[start:start + MAX_BATCH]
                payload = {"requests": [
                    {"id": str(i), "method": items[i]["method"], "url": items[i]["url"],
                     **({"headers": items[i]["headers"]} if items[i].get("headers") else {}),
                     **({"body": items[i]["body"]} if items[i].get("body") is not None
                        else {})}
                    for i in chunk]}
                resp = self.request("POST", "/$batch", json_body=payload)
                if resp.status != 200 or not isinstance(resp.body, dict):
                    raise ProviderUnavailable(f"Microsoft Graph $batch failed: HTTP "
                                              f"{resp.status} {resp.error_code()}")
                for answer in resp.body.get("responses", []):
                    i = int(answer["id"])
                    item = GraphResponse(int(answer["status"]),
                                         dict(answer.get("headers") or {}), answer.get("body"))
                    if isinstance(item.body, str):
                        try:
                            item.body = json.loads(item.body)
                        except ValueError:
                            pass
                    if item.status in RETRY_STATUSES:
                        throttled.append(i)
                        waits.append(self.retry.backoff(attempt, retry_after(item.headers)))
                    results[i] = item
            if not throttled:
                break
            wait = max(waits)
            if attempt >= self.retry.max_retries or spent + wait > self.retry.max_total_seconds:
                break  # the caller maps the 429/503 answers to Throttled(retry_after)
            self.retry.waits.append(wait)
            self.retry.sleep(wait)
            spent += wait
            attempt += 1
            pending = sorted(throttled)
        return [r if r is not None else GraphResponse(599, {}, None) for r in results]
