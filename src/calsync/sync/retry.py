"""The one retry layer: around a single HTTP request, at a connector's edge.

A connector wraps each request (one attempt that raises calsync's typed errors) in
:meth:`RetryPolicy.call`. Nothing above the connector retries again: the runner calls the
connector directly, and a calendar throttled past this layer's cap is rescheduled
(``Calendar.retry_at``) rather than slept on inside a worker.

- ``Throttled``: waits ``retry_after`` when the provider gave one, else exponential backoff
  with jitter.
- ``ProviderUnavailable`` and ``TimeoutError``: exponential backoff with jitter.
- Caps: at most ``max_retries`` retries, and at most ``max_total_seconds`` spent waiting in
  all. A wait that would cross the total cap is not slept: the last error is raised as is
  (a ``Throttled`` keeps the provider's ``retry_after``, so the caller can reschedule).
- Everything else (re-auth, not found, preconditions) is raised at once.

``sleep`` and ``rng`` are injectable (tests pass a sleep that records instead of waiting).

Every attempt is counted in ``calsync_provider_requests`` (labelled with the provider of
the sync this thread runs, :mod:`calsync.runcontext`, and the answer's HTTP status where
the attempt shows one), every throttled answer in ``calsync_provider_throttled`` and its
Retry-After in ``calsync_provider_retry_after_seconds``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from calsync import metrics
from calsync.errors import ProviderUnavailable, Throttled
from calsync.runcontext import PROVIDER

T = TypeVar("T")
BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0


def _status_of(outcome: object) -> str:
    """The HTTP status an attempt's answer or error carries, else a short class name."""
    for obj in (outcome, getattr(outcome, "__cause__", None)):
        if obj is None:
            continue
        code = getattr(obj, "status_code", None)  # httpx.Response
        if code is None:
            resp = getattr(obj, "resp", None) or getattr(obj, "response", None)
            code = getattr(resp, "status", None) or getattr(resp, "status_code", None)
        if isinstance(code, int):
            return str(code)
    if isinstance(outcome, BaseException):
        return {Throttled: "throttled", ProviderUnavailable: "unavailable",
                TimeoutError: "timeout"}.get(type(outcome), "error")
    return "ok"


def _count(outcome: object) -> None:
    provider = PROVIDER.get() or "unknown"
    metrics.PROVIDER_REQUESTS.labels(provider, _status_of(outcome)).inc()
    if isinstance(outcome, Throttled):
        metrics.PROVIDER_THROTTLED.labels(provider).inc()
        if outcome.retry_after is not None:
            metrics.PROVIDER_RETRY_AFTER.labels(provider).observe(outcome.retry_after)


@dataclass
class RetryPolicy:
    max_retries: int = 4
    max_total_seconds: float = 60.0
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)
    waits: list[float] = field(default_factory=list)  # every wait slept, for reports/tests

    @classmethod
    def from_settings(cls, settings: Any, sleep: Callable[[float], None] | None = None,
                      rng: random.Random | None = None) -> RetryPolicy:
        sync = settings.sync
        return cls(max_retries=sync.max_retries,
                   max_total_seconds=float(getattr(sync, "retry_max_seconds", 60.0)),
                   sleep=sleep if sleep is not None else time.sleep,
                   rng=rng if rng is not None else random.Random())

    def backoff(self, attempt: int, hinted: float | None = None) -> float:
        """The wait before retry number ``attempt + 1``: the provider's hint, else
        exponential backoff with "equal jitter"."""
        if hinted is not None:
            return max(0.0, float(hinted))
        base = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** attempt)
        return float(base / 2 + self.rng.random() * base / 2)

    def call(self, attempt_fn: Callable[[], T]) -> T:
        """Run ``attempt_fn`` (one request) until it succeeds or the caps are reached."""
        attempt = 0
        spent = 0.0
        while True:
            try:
                answer = attempt_fn()
            except BaseException as exc:
                _count(exc)
                error: BaseException = exc
            else:
                _count(answer)
                return answer
            try:
                raise error
            except Throttled as exc:
                wait = self.backoff(attempt, exc.retry_after)
                if attempt >= self.max_retries or spent + wait > self.max_total_seconds:
                    if exc.retry_after is None:
                        exc.retry_after = wait
                    raise
            except (ProviderUnavailable, TimeoutError) as exc:
                wait = self.backoff(attempt)
                if attempt >= self.max_retries or spent + wait > self.max_total_seconds:
                    if isinstance(exc, TimeoutError):
                        raise ProviderUnavailable(f"timed out: {exc}") from exc
                    raise
            self.waits.append(wait)
            self.sleep(wait)
            spent += wait
            attempt += 1


__all__ = ["RetryPolicy"]
