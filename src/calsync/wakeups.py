"""Waking sync workers: a push notification marks its calendar's connection due, and the
workers hear of it at once instead of at their next tick.

- In one process (SQLite's one worker, or ``calsync serve`` with its scheduler): the
  process-wide :data:`LOCAL` event, set after the change is committed.
- Across processes on PostgreSQL: ``NOTIFY calsync_sync_due`` sent in the transaction that
  marked the connection due (PostgreSQL delivers it on commit), heard by a
  :class:`PostgresListener` thread in each worker, which sets that worker's event.

A wake-up carries nothing but "look for due work": the claim query decides what is due,
so a lost or doubled notification costs at most one tick or one empty claim.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger("calsync.wakeups")

CHANNEL = "calsync_sync_due"


class Wakeup:
    """A "work is due" signal that a sync loop waits on."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def clear(self) -> None:
        self._event.clear()

    def wait(self, timeout: float | None) -> bool:
        """Wait until set or ``timeout`` passes; True when set (the signal is consumed)."""
        fired = self._event.wait(timeout)
        self._event.clear()
        return fired


LOCAL = Wakeup()


def notify_in(session: Session) -> None:
    """Inside the transaction that made work due: on PostgreSQL, NOTIFY the workers (sent
    on commit, dropped on rollback). Call :func:`wake_local` after the commit."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy import text

        session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})


def wake_local() -> None:
    """Wake this process's sync loop (it shares the API's process under ``serve``)."""
    LOCAL.set()


def libpq_url(sqlalchemy_url: str) -> str:
    """The libpq form of a SQLAlchemy PostgreSQL URL (``postgresql+psycopg://`` → ``postgresql://``)."""
    from sqlalchemy.engine import make_url

    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class PostgresListener:
    """``LISTEN calsync_sync_due`` on a connection of its own (autocommit) in a daemon
    thread; every notification sets ``wakeup``. A lost connection is reopened after a
    growing pause (up to 30 s), and the wakeup is set then too, in case a notification was
    missed meanwhile."""

    def __init__(self, url: str, wakeup: Wakeup = LOCAL) -> None:
        self.url = libpq_url(url)
        self.wakeup = wakeup
        self.listening = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="calsync-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        import psycopg

        pause = 0.5
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    pause = 0.5
                    while not self._stop.is_set():
                        for _note in conn.notifies(timeout=1.0):
                            self.wakeup.set()
            except Exception as exc:  # noqa: BLE001 - keep listening after any failure
                self.listening.clear()
                log.warning("listening for sync wake-ups failed (%s); retrying in %.1f s",
                            type(exc).__name__, pause)
                self.wakeup.set()
                self._stop.wait(pause)
                pause = min(pause * 2, 30.0)
