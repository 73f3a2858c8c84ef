"""Writes to one CalDAV calendar: in parallel until the server refuses one as locked.

The engine may run several writes to a calendar at once (``parallel_writes``). Some
servers take them (Radicale queues them behind its storage lock); Xandikos commits each
write to the collection's git index under a lock file and answers ``423 Locked`` at once
to a write that arrives while another holds it. Such an answer means "not written, try
again": the write is sent again after a short wait, and from then on writes to that
calendar go one at a time (the server cannot take them faster anyway). What is learnt is
kept per calendar for the life of the process, like the write ledger.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import httpx

log = logging.getLogger("calsync.connectors.caldav")
LOCKED = 423
# Waits between attempts of a write the server refused as locked (about 3 s in all): a
# git index lock is held for milliseconds; a WebDAV LOCK by another client outlasts this.
RETRY_WAITS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)


class WriteGate:
    """Per calendar: writes go straight out until one is answered 423, then one at a time."""

    def __init__(self, calendars: int = 10_000, waits: Sequence[float] = RETRY_WAITS,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._serial: OrderedDict[str, threading.Lock] = OrderedDict()
        self._limit = calendars
        self._waits = tuple(waits)
        self._sleep = sleep
        self._lock = threading.Lock()

    def one_at_a_time(self, key: str) -> bool:
        """Whether writes to ``key`` go one at a time (the server refused one as locked)."""
        with self._lock:
            return key in self._serial

    def _serial_lock(self, key: str, learn: bool) -> threading.Lock | None:
        with self._lock:
            lock = self._serial.get(key)
            if lock is None and learn:
                lock = self._serial[key] = threading.Lock()
                while len(self._serial) > self._limit:
                    self._serial.popitem(last=False)
            if lock is not None:
                self._serial.move_to_end(key)
            return lock

    def send(self, key: str, attempt: Callable[[], httpx.Response]) -> httpx.Response:
        """The answer to ``attempt`` (one write to the calendar ``key``), sent again while
        the server answers 423; the last answer (423 too, when it stays locked)."""
        lock = self._serial_lock(key, learn=False)
        refused = lock is None
        if lock is None:
            resp = attempt()
            if resp.status_code != LOCKED:
                return resp
            lock = self._serial_lock(key, learn=True)
            assert lock is not None
            log.info("%s: the server refused a write as locked (HTTP 423); writing to "
                     "this calendar one at a time", key.replace("\n", ": "))
        with lock:
            if not refused:
                resp = attempt()
                if resp.status_code != LOCKED:
                    return resp
            for wait in self._waits:
                self._sleep(wait)
                resp = attempt()
                if resp.status_code != LOCKED:
                    return resp
            return resp

    def forget(self) -> None:
        """Drop everything (what a process restart does)."""
        with self._lock:
            self._serial.clear()


PROCESS_GATE = WriteGate()
