"""What the current thread is working on: the connection a sync runs for and its
provider. The runner sets it around each connection sync (each in its own thread), and
the log formatter (:mod:`calsync.logs`) and the provider request counters
(:mod:`calsync.sync.retry`) read it, so neither has to be handed the connection."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

CONNECTION: ContextVar[str | None] = ContextVar("calsync_connection", default=None)
PROVIDER: ContextVar[str | None] = ContextVar("calsync_provider", default=None)


@contextlib.contextmanager
def working_on(connection: str, provider: str | None = None) -> Iterator[None]:
    """Mark log lines and provider metrics of this thread with ``connection`` (its public
    id) and ``provider`` until the block ends."""
    conn_token = CONNECTION.set(connection)
    provider_token = PROVIDER.set(provider)
    try:
        yield
    finally:
        PROVIDER.reset(provider_token)
        CONNECTION.reset(conn_token)
