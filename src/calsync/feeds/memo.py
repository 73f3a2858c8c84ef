"""Feeds held in memory by each serving process, with cheap invalidation.

A :class:`FeedMemo` (one per database engine in a process) keeps, per user, what a feed
request needs: the token-check material (feed version, enabled), the validators (ETag,
Last-Modified), the body and its gzip variant. A request it can answer costs no database
work at all (see ``calsync.api.feeds.FeedFastPath``); any other goes the full way and
refills the memo.

An entry is only served while nothing it depends on can have changed since it was read:

- SQLite: ``PRAGMA data_version`` on a connection of the memo's own changes whenever any
  other connection (of any process) commits. An entry read before that commit is checked
  again before it is served: one primary-key read of what the answer depends on (the
  user's link material, the cached feed's ETag and dirty mark); when they are as the entry
  has them it is served and re-stamped, else dropped. A busy database (a sync worker
  commits many times a second) so costs one small read per feed request instead of
  emptying the memo at every commit. One pragma per request otherwise.
- PostgreSQL: every transaction that changes a user or a feed (flushed ``User`` /
  ``FeedCache`` rows, :func:`note_feeds_changed` for bulk updates) sends ``NOTIFY
  calsync_feeds`` with the user ids; a listener thread drops their entries. Changes
  committed in this process drop them at once (``after_commit``). While the listener is not
  connected the memo serves nothing.

Entries are stamped with the invalidation generation read *before* the database was read,
so a change that lands while a request renders is never hidden by that request's entry.
Memory is bounded (``feeds.memory_cache_mb``, least recently used first).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import sqlite3
import threading
import weakref
from collections import OrderedDict
from typing import Any

from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session

log = logging.getLogger("calsync.feeds")

CHANNEL = "calsync_feeds"
_PAYLOAD_LIMIT = 7000  # NOTIFY payloads must stay under 8,000 bytes
_PENDING = "calsync_feeds_changed"


@dataclasses.dataclass
class MemoEntry:
    """One user's served feed and what serving it again needs."""

    user_id: str
    feed_version: int
    servable: bool  # feed enabled and user not deleted
    etag: str
    last_modified: dt.datetime
    window: tuple[dt.datetime, dt.datetime]
    body: bytes
    gzip_body: bytes | None = None
    fetch_recorded: float = 0.0  # time.monotonic() of the last feed_last_fetched_at write
    stamp: tuple[int, int] = (0, 0)
    # Filled while serving: the link tokens already checked against this entry's feed
    # version, and each answer's status and headers built once (see calsync.api.feeds).
    tokens: list[str] = dataclasses.field(default_factory=list)
    answers: dict[Any, Any] = dataclasses.field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.body) + len(self.gzip_body or b"")

    def same_link(self, feed_version: int, enabled: Any, deleted_at: Any) -> bool:
        """Whether the user's link material, read again, is what this entry was served
        with (a regenerated, disabled or deleted link is not)."""
        return feed_version == self.feed_version \
            and (bool(enabled) and deleted_at is None) == self.servable


class FeedMemo:
    """Served feeds of one database, held in this process."""

    def __init__(self, engine: Engine, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, MemoEntry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._generation = 0
        self._user_generation: dict[str, int] = {}
        self.dialect = engine.dialect.name
        self._probe: sqlite3.Connection | None = None
        self._data_version: int | None = None
        self._listener: _FeedListener | None = None
        self._engine: Engine | None = None
        if self.dialect == "sqlite":
            path = engine.url.database
            if path and path != ":memory:":
                self._probe = sqlite3.connect(path, check_same_thread=False)
        elif self.dialect == "postgresql":
            self._engine = engine
            self._listener = _FeedListener(engine.url.render_as_string(hide_password=False),
                                           self)
            self._listener.start()

    # -- validity -------------------------------------------------------------------------
    def usable(self) -> bool:
        """Whether entries may be served now (the invalidation source is working)."""
        if self.dialect == "sqlite":
            return self._probe is not None
        return self._listener is not None and self._listener.listening.is_set()

    def stamp(self, user_id: str) -> tuple[int, int]:
        """The generation now (call before reading the database for an entry)."""
        self._check_data_version()
        with self._lock:
            return self._generation, self._user_generation.get(user_id, 0)

    def _check_data_version(self) -> None:
        probe = self._probe
        if probe is None:
            return
        with self._lock:
            self._check_data_version_locked(probe)

    def _check_data_version_locked(self, probe: sqlite3.Connection) -> None:
        try:
            version = probe.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            version = None
        if version is None or version != self._data_version:
            self._data_version = version
            self._generation += 1

    def get(self, user_id: str) -> MemoEntry | None:
        """The user's entry when it is still valid."""
        if not self.usable():
            return None
        probe = self._probe
        with self._lock:
            if probe is not None:
                self._check_data_version_locked(probe)
            entry = self._entries.get(user_id)
            if entry is None:
                return None
            now = (self._generation, self._user_generation.get(user_id, 0))
            if entry.stamp != now:
                if probe is None or entry.stamp[1] != now[1] \
                        or not self._unchanged_in_sqlite(probe, entry):
                    self._drop(user_id)
                    return None
                entry.stamp = now  # a commit elsewhere left this feed as it was
            if self._engine is None:
                self._entries.move_to_end(user_id)
                return entry
        if not self._link_still_valid(entry):
            with self._lock:
                self._drop(user_id)
            return None
        with self._lock:
            if user_id in self._entries:
                self._entries.move_to_end(user_id)
        return entry

    @staticmethod
    def _unchanged_in_sqlite(probe: sqlite3.Connection, entry: MemoEntry) -> bool:
        """SQLite, after another connection committed: whether what ``entry``'s answer
        depends on is still as read (the caller holds the lock; one primary-key read)."""
        try:
            row = probe.execute(
                "SELECT u.feed_version, u.feed_enabled, u.deleted_at, f.etag, f.dirty "
                "FROM users u LEFT JOIN feed_cache f ON f.user_id = u.id WHERE u.id = ?",
                (entry.user_id,)).fetchone()
        except sqlite3.Error:
            return False
        if row is None:
            return False
        feed_version, enabled, deleted_at, etag, dirty = row
        return entry.same_link(feed_version, enabled, deleted_at) and etag == entry.etag \
            and not dirty

    def _link_still_valid(self, entry: MemoEntry) -> bool:
        """PostgreSQL: NOTIFY arrives a moment after another process commits, so the link
        material (feed version, enabled, deleted) is read synchronously by primary key: a
        regenerated or revoked link is refused at once, not after the notification."""
        assert self._engine is not None
        try:
            with self._engine.connect() as conn:
                row = conn.execute(text(
                    "SELECT feed_version, feed_enabled, deleted_at FROM users WHERE id = :u"),
                    {"u": entry.user_id}).first()
        except Exception:  # noqa: BLE001 - no answer: serve nothing from memory
            return False
        return row is not None and entry.same_link(*row)

    def refresh(self, user_id: str, etag: str, fetch_recorded: float) -> bool:
        """The user's valid entry has ``etag``: note that the fetch time was written at
        ``fetch_recorded`` (time.monotonic()). False when there is no such entry."""
        entry = self.get(user_id)
        if entry is None or entry.etag != etag:
            return False
        entry.fetch_recorded = max(entry.fetch_recorded, fetch_recorded)
        return True

    def put(self, entry: MemoEntry, stamp: tuple[int, int]) -> None:
        """Keep ``entry``, read after ``stamp`` was taken, unless something changed since."""
        if not self.usable() or entry.size > self.max_bytes:
            return
        with self._lock:
            if stamp != (self._generation, self._user_generation.get(entry.user_id, 0)):
                return
            entry.stamp = stamp
            self._drop(entry.user_id)
            self._entries[entry.user_id] = entry
            self._bytes += entry.size
            while self._bytes > self.max_bytes and self._entries:
                self._drop(next(iter(self._entries)))

    def add_gzip(self, entry: MemoEntry, packed: bytes) -> None:
        with self._lock:
            if self._entries.get(entry.user_id) is entry and entry.gzip_body is None:
                entry.gzip_body = packed
                self._bytes += len(packed)

    def _drop(self, user_id: str) -> None:
        old = self._entries.pop(user_id, None)
        if old is not None:
            self._bytes -= old.size

    def invalidate(self, user_ids: list[str] | None) -> None:
        """Drop the entries of ``user_ids`` (all of them when None)."""
        with self._lock:
            if user_ids is None:
                self._generation += 1
                self._entries.clear()
                self._bytes = 0
                return
            for uid in user_ids:
                self._user_generation[uid] = self._user_generation.get(uid, 0) + 1
                self._drop(uid)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.stop()
        if self._probe is not None:
            self._probe.close()
            self._probe = None


class _FeedListener:
    """``LISTEN calsync_feeds``: drop the entries of the users named (all on reconnect)."""

    def __init__(self, url: str, memo: FeedMemo) -> None:
        from calsync.wakeups import libpq_url

        self.url = libpq_url(url)
        self.memo = weakref.ref(memo)
        self.listening = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="calsync-feed-listen",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        import psycopg

        pause = 0.5
        while not self._stop.is_set() and self.memo() is not None:
            try:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    memo = self.memo()
                    if memo is None:
                        return
                    memo.invalidate(None)  # anything may have changed while not listening
                    del memo
                    self.listening.set()
                    pause = 0.5
                    while not self._stop.is_set() and self.memo() is not None:
                        for note in conn.notifies(timeout=1.0):
                            memo = self.memo()
                            if memo is None:
                                return
                            ids = note.payload.split("\x1f") if note.payload != "*" else None
                            memo.invalidate(ids)
                            del memo
            except Exception as exc:  # noqa: BLE001 - keep listening after any failure
                self.listening.clear()
                log.warning("listening for feed changes failed (%s); retrying in %.1f s",
                            type(exc).__name__, pause)
                self._stop.wait(pause)
                pause = min(pause * 2, 30.0)


_memos: weakref.WeakKeyDictionary[Engine, FeedMemo] = weakref.WeakKeyDictionary()
_memos_lock = threading.Lock()


def memo_for(engine: Engine, max_bytes: int) -> FeedMemo:
    """This process's memo for ``engine`` (made on first use)."""
    with _memos_lock:
        memo = _memos.get(engine)
        if memo is None:
            memo = _memos[engine] = FeedMemo(engine, max_bytes)
            event.listen(engine, "engine_disposed", lambda _engine: _close(engine))
        return memo


def _close(engine: Engine) -> None:
    with _memos_lock:
        memo = _memos.pop(engine, None)
    if memo is not None:
        memo.close()


def _engine_of(session: Session) -> Engine | None:
    try:
        bind = session.get_bind()
    except Exception:  # noqa: BLE001 - an unbound session changes nothing we serve
        return None
    return bind if isinstance(bind, Engine) else getattr(bind, "engine", None)


def note_feeds_changed(session: Session, user_ids: list[str]) -> None:
    """The transaction of ``session`` changes these users' feeds (bulk statements the ORM
    does not see): on PostgreSQL, NOTIFY the serving processes (sent on commit)."""
    if not user_ids:
        return
    session.info.setdefault(_PENDING, set()).update(user_ids)
    engine = _engine_of(session)
    if engine is None or engine.dialect.name != "postgresql":
        return
    from sqlalchemy import text

    payload = "\x1f".join(sorted(set(user_ids)))
    if len(payload.encode()) > _PAYLOAD_LIMIT:
        payload = "*"
    session.connection().execute(text("SELECT pg_notify(:channel, :payload)"),
                                 {"channel": CHANNEL, "payload": payload})


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, _context: Any) -> None:
    from calsync.db.models import FeedCache, User

    ids = [obj.id if isinstance(obj, User) else obj.user_id
           for obj in (*session.new, *session.dirty, *session.deleted)
           if isinstance(obj, (User, FeedCache))]
    if ids:
        note_feeds_changed(session, [i for i in ids if i])


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    ids = session.info.pop(_PENDING, None)
    if not ids:
        return
    engine = _engine_of(session)
    memo = _memos.get(engine) if engine is not None else None
    if memo is not None:
        memo.invalidate(sorted(ids))


@event.listens_for(Session, "after_soft_rollback")
def _after_rollback(session: Session, _previous: Any) -> None:
    if not session.in_transaction():
        session.info.pop(_PENDING, None)
