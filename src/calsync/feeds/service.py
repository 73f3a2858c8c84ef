"""The feed service: assembling a user's feed from cached per-item fragments, keeping
``feed_cache`` current, and the two scheduled passes (dirty feeds, nightly rebuild).

Cost follows change: an item's VEVENT is rendered once per change (its ``fragment_key``
moves with content hash, sequence, renderer version and settings) and stored on the item;
a feed render is one query, the stale fragments, a join and a hash. Every render goes
through :mod:`calsync.feeds.bulk` (one user or a chunk of them), which leaves a feed whose
sources did not change as it is: the nightly rebuild reads keys, not fragments.

Dirty feeds are claimed before they are rendered (``dirty`` is cleared first, in its own
transaction), so a change that lands during a render marks the feed dirty again and the
next tick picks it up: no change is lost between read and write.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from calsync.config import Settings
from calsync.db.models import FeedCache, User
from calsync.db.session import Database
from calsync.feeds import bulk
from calsync.feeds.assembly import (
    FEED_SCHEMA_VERSION,
    calendar_name,
    feed_window,
    make_etag,
)

if TYPE_CHECKING:
    from calsync.feeds.parallel import RenderPool

__all__ = ["FEED_SCHEMA_VERSION", "FeedRunReport", "FeedSnapshot", "FeedValidators",
           "calendar_name", "current_feed", "current_validators", "feed_window",
           "is_current", "make_etag", "rebuild_all_feeds", "refresh_dirty_feeds",
           "render_feed", "render_users"]

log = logging.getLogger("calsync.feeds")

CHUNK = 500  # users per transaction of a bulk render


@dataclass(frozen=True)
class FeedSnapshot:
    """What the HTTP layer serves."""

    user_id: str
    body: bytes
    etag: str  # quoted, strong
    last_modified: dt.datetime


@dataclass
class FeedRunReport:
    rendered: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    phases: bulk.Phases = field(default_factory=bulk.Phases)

    def as_dict(self) -> dict[str, Any]:
        return {"rendered": len(self.rendered), "failed": self.failed}


def _chunks(seq: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


def render_feed(session: Session, settings: Settings, user: User,
                now: dt.datetime) -> FeedCache:
    """Bring ``user``'s feed in ``feed_cache`` up to date for ``now`` (the same path as the
    bulk render, so both give the same bytes). Leaves ``dirty`` alone (the caller claimed
    the feed). Returns the cache row, read again."""
    bulk.render_feeds(session, settings, [user.id], now)
    row = session.get(FeedCache, user.id, populate_existing=True)
    assert row is not None
    return row


def is_current(cache: FeedCache | None, settings: Settings, now: dt.datetime) -> bool:
    """True when ``cache`` can be served as is for ``now``."""
    if cache is None or cache.dirty or cache.body is None or cache.etag is None:
        return False
    if cache.schema_version != FEED_SCHEMA_VERSION or cache.last_modified is None:
        return False
    return (cache.window_start, cache.window_end) == feed_window(settings, now)


@dataclass(frozen=True)
class FeedValidators:
    """ETag and Last-Modified of a current cached feed, read without its body."""

    user_id: str
    etag: str
    last_modified: dt.datetime


def current_validators(settings: Settings, db: Database, user_id: str,
                       now: dt.datetime) -> FeedValidators | None:
    """The validators of ``user_id``'s cached feed when it can be served as is, else None
    (then ``current_feed`` renders). Lets a conditional request be answered with 304
    without reading the body."""
    with db.read_session() as s:
        row = s.execute(select(
            FeedCache.dirty, FeedCache.etag, FeedCache.last_modified, FeedCache.window_start,
            FeedCache.window_end, FeedCache.schema_version,
            FeedCache.body.is_(None).label("body_missing"))
            .where(FeedCache.user_id == user_id)).first()
    if row is None or row.dirty or row.body_missing or row.etag is None \
            or row.last_modified is None or row.schema_version != FEED_SCHEMA_VERSION:
        return None
    if (row.window_start, row.window_end) != feed_window(settings, now):
        return None
    return FeedValidators(user_id, row.etag, row.last_modified)


def _snapshot(cache: FeedCache) -> FeedSnapshot:
    assert cache.body is not None and cache.etag is not None and cache.last_modified is not None
    return FeedSnapshot(cache.user_id, bytes(cache.body), cache.etag, cache.last_modified)


def _claim(db: Database, user_ids: Sequence[str]) -> None:
    with db.session() as s:
        s.execute(update(FeedCache).where(FeedCache.user_id.in_(user_ids)).values(dirty=False))


def _mark_dirty_again(db: Database, user_ids: Sequence[str]) -> None:
    from calsync.feeds.dirty import mark_feeds_dirty

    try:
        with db.session() as s:
            mark_feeds_dirty(s, user_ids)
    except Exception:  # noqa: BLE001 - the next nightly rebuild renders them anyway
        log.exception("could not mark %d failed feed(s) dirty again", len(user_ids))


def current_feed(settings: Settings, db: Database, user_id: str,
                 now: dt.datetime) -> FeedSnapshot:
    """The feed to serve: the cached one when current, else rendered on the spot (a
    change is never served late). When rendering fails, a previous body is served if
    there is one; otherwise the error propagates."""
    with db.read_session() as s:
        cache = s.get(FeedCache, user_id)
        if cache is not None and is_current(cache, settings, now):
            return _snapshot(cache)
        stale = _snapshot(cache) if cache is not None and cache.body is not None \
            and cache.etag and cache.last_modified else None
    _claim(db, [user_id])
    for attempt in range(2):
        try:
            with db.session() as s:
                user = s.get(User, user_id)
                if user is None:
                    raise LookupError(user_id)
                return _snapshot(render_feed(s, settings, user, now))
        except IntegrityError:
            if attempt:  # two writers created the row at once: the second try updates it
                raise
        except Exception:
            _mark_dirty_again(db, [user_id])
            if stale is None:
                raise
            log.exception("feed of user %s failed to render; serving the previous body",
                          user_id)
            return stale
    raise AssertionError("unreachable")


def render_users(settings: Settings, db: Database, user_ids: Sequence[str],
                 now: dt.datetime, claim: bool = True,
                 pool: RenderPool | None = None) -> FeedRunReport:
    """Render the feeds of ``user_ids`` in chunks of ``CHUNK``, one transaction each (see
    :mod:`calsync.feeds.bulk`); when something in a chunk fails, its users are rendered one
    by one, each in its own savepoint, so one user's failure is logged with the user id
    and the others go on. With ``pool``, a chunk with many stale fragments has them
    rendered by worker processes; when a worker fails, nothing of that chunk is written,
    its users are reported failed and marked dirty again (the dirty pass renders them
    in-process, one by one if need be), and one line says so."""
    from calsync.feeds.parallel import FeedRenderError

    report = FeedRunReport()
    phases = report.phases
    chunks = list(_chunks(list(user_ids), CHUNK))
    # With workers, the next chunk's stale items are sent while this one is finished; the
    # next chunk checks each fragment's key in its own transaction before it uses it.
    ahead = bulk.Ahead()
    for n, chunk in enumerate(chunks):
        following = chunks[n + 1] if n + 1 < len(chunks) else ()
        if claim:
            _claim(db, chunk)
        failed: list[str] = []
        # A write transaction from the start: on SQLite a read that later writes could
        # lose its snapshot to another writer ("database is locked").
        with db.session() as s:
            try:
                with s.begin_nested():
                    report.rendered.extend(bulk.render_feeds(
                        s, settings, chunk, now, phases, pool, ahead, following))
            except FeedRenderError as exc:
                log.error("feeds of %d user(s) (%s to %s) not rendered, marked dirty "
                          "again: %s", len(chunk), chunk[0], chunk[-1], exc)
                failed.extend(chunk)
            except Exception:  # noqa: BLE001 - find the culprit one user at a time
                log.debug("a feed in a chunk of %d failed; rendering them one by one",
                          len(chunk))
                for uid in chunk:
                    try:
                        with s.begin_nested():
                            report.rendered.extend(
                                bulk.render_feeds(s, settings, [uid], now, phases))
                    except Exception:  # noqa: BLE001 - isolate one user's failure
                        log.exception("feed of user %s failed to render", uid)
                        failed.append(uid)
            committing = (time.perf_counter(), time.process_time())
        phases.wall["commit"] += time.perf_counter() - committing[0]
        phases.cpu["commit"] += time.process_time() - committing[1]
        if failed:
            report.failed.extend(failed)
            _mark_dirty_again(db, failed)
    if pool is not None:
        ahead.drop(pool)
    return report


def _enabled_users() -> Any:
    return select(User.id).where(User.feed_enabled.is_(True), User.deleted_at.is_(None))


def refresh_dirty_feeds(settings: Settings, db: Database, now: dt.datetime,
                        limit: int = 2000) -> FeedRunReport:
    """Re-render the enabled feeds marked dirty (claimed first: with several workers on
    PostgreSQL each dirty feed goes to one of them). Disabled feeds stay dirty until they
    are issued again."""
    with db.session() as s:
        q = (select(FeedCache.user_id)
             .where(FeedCache.dirty.is_(True), FeedCache.user_id.in_(_enabled_users()))
             .order_by(FeedCache.user_id).limit(limit))
        if db.dialect == "postgresql":
            q = q.with_for_update(skip_locked=True)
        ids = list(s.scalars(q))
        if ids:
            s.execute(update(FeedCache).where(FeedCache.user_id.in_(ids)).values(dirty=False))
    if not ids:
        return FeedRunReport()
    report = render_users(settings, db, ids, now, claim=False)
    log.info("re-rendered %d dirty feed(s), %d failed", len(report.rendered), len(report.failed))
    return report


def rebuild_all_feeds(settings: Settings, db: Database, now: dt.datetime,
                      pool: RenderPool | None = None) -> FeedRunReport:
    """Render every enabled feed (nightly: moves the window, picks up settings changes).
    Chunks with many stale fragments (a cold rebuild) are rendered by worker processes,
    forked once for the whole rebuild when the first such chunk comes (``pool``: a pool
    of the caller's, else one of one worker per core)."""
    from calsync.feeds.parallel import RenderPool

    with db.session() as s:
        ids = list(s.scalars(_enabled_users().order_by(User.id)))
    if pool is None:
        with RenderPool() as own:
            report = render_users(settings, db, ids, now, claim=True, pool=own)
    else:
        report = render_users(settings, db, ids, now, claim=True, pool=pool)
    log.info("rebuilt %d feed(s), %d failed", len(report.rendered), len(report.failed))
    return report
