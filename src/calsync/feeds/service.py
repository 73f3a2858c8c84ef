"""The feed service: assembling a user's feed from cached per-item fragments, keeping
``feed_cache`` current, and the two scheduled passes (dirty feeds, nightly rebuild).

Cost follows change: an item's VEVENT is rendered once per change (its ``fragment_key``
moves with content hash, sequence, renderer version and settings) and stored on the item;
a feed render is one query, the stale fragments, a join and a hash.

Dirty feeds are claimed before they are rendered (``dirty`` is cleared first, in its own
transaction), so a change that lands during a render marks the feed dirty again and the
next tick picks it up: no change is lost between read and write.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from dateutil.relativedelta import relativedelta
from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from calsync.config import Settings
from calsync.db.models import FeedCache, ItemAssignee, ScheduleItem, User
from calsync.db.session import Database
from calsync.feeds import ics
from calsync.timezones import UTC

log = logging.getLogger("calsync.feeds")

FEED_SCHEMA_VERSION = 1
CHUNK = 50

_items = cast(Table, ScheduleItem.__table__)
_FRAGMENT_COLUMNS = (ScheduleItem.pk, ScheduleItem.content_hash, ScheduleItem.sequence,
                     ScheduleItem.fragment_key, ScheduleItem.ics_fragment, ScheduleItem.tzid,
                     ScheduleItem.all_day, ScheduleItem.updated_at)


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

    def as_dict(self) -> dict[str, Any]:
        return {"rendered": len(self.rendered), "failed": self.failed}


def feed_window(settings: Settings, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """``history_months`` back to ``future_months`` ahead, whole UTC days (stable in a day)."""
    day = now.astimezone(UTC).date()
    start = day - relativedelta(months=settings.feeds.history_months)
    end = day + relativedelta(months=settings.feeds.future_months) + dt.timedelta(days=1)
    return (dt.datetime(start.year, start.month, start.day, tzinfo=UTC),
            dt.datetime(end.year, end.month, end.day, tzinfo=UTC))


def calendar_name(settings: Settings, user: User) -> str:
    template = settings.feeds.calendar_name_template
    try:
        return template.format(name=user.name, id=user.id, user_id=user.id)
    except (KeyError, IndexError, ValueError):
        return template


def make_etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:40] + '"'


def _chunks(seq: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


def _refresh_fragments(session: Session, pks: list[int], job_url_template: str,
                       settings_hash: str) -> dict[int, str]:
    """Render the fragments of ``pks`` and store them on the items."""
    out: dict[int, str] = {}
    for chunk in _chunks(pks, 500):
        rows = session.execute(select(_items).where(_items.c.pk.in_(chunk))).all()
        params = []
        for row in rows:
            text = ics.render_event(row, job_url_template)
            out[row.pk] = text
            params.append({"b_pk": row.pk, "ics_fragment": text,
                           "fragment_key": ics.fragment_key(row.content_hash, row.sequence,
                                                            settings_hash)})
        if params:
            session.execute(update(_items).where(_items.c.pk == bindparam("b_pk"))
                            .values(ics_fragment=bindparam("ics_fragment"),
                                    fragment_key=bindparam("fragment_key")), params)
    return out


def load_feed_rows(session: Session, user_ids: Sequence[str], start: dt.datetime,
                   end: dt.datetime) -> dict[str, list[Any]]:
    """The feed rows (fragment columns) of each user's live items in [start, end), in
    feed order, with one query for all of ``user_ids``."""
    out: dict[str, list[Any]] = {uid: [] for uid in user_ids}
    q = (select(ItemAssignee.user_id, *_FRAGMENT_COLUMNS)
         .select_from(ScheduleItem)
         .join(ItemAssignee, ItemAssignee.item_pk == ScheduleItem.pk)
         .where(ItemAssignee.user_id.in_(list(user_ids)), ScheduleItem.deleted_at.is_(None),
                ScheduleItem.status != "cancelled", ScheduleItem.end_at > start,
                ScheduleItem.start_at < end)
         .order_by(ScheduleItem.start_at, ScheduleItem.pk))
    for row in session.execute(q):
        out[row.user_id].append(row)
    return out


def _render_stale(session: Session, settings: Settings, rows: Iterable[Any]) -> dict[int, str]:
    """Render (and store) the fragments among ``rows`` whose key is out of date."""
    template = settings.feeds.job_url_template
    settings_hash = ics.settings_digest(template)
    stale = sorted({r.pk for r in rows if r.ics_fragment is None or r.fragment_key
                    != ics.fragment_key(r.content_hash, r.sequence, settings_hash)})
    return _refresh_fragments(session, stale, template, settings_hash) if stale else {}


def _store_feed(session: Session, settings: Settings, user: User, now: dt.datetime,
                rows: list[Any], fresh: dict[int, str], cache: FeedCache | None,
                window: tuple[dt.datetime, dt.datetime]) -> FeedCache:
    start, end = window
    fragments = [(fresh.get(r.pk) or r.ics_fragment).encode("utf-8") for r in rows]
    tzids = sorted({r.tzid for r in rows if not r.all_day and ics.needs_vtimezone(r.tzid)})
    vtimezones = [ics.vtimezone(t, start.year - 1, end.year + 2) for t in tzids]
    header = ics.calendar_header(calendar_name(settings, user), user.timezone,
                                 settings.feeds.refresh_interval_minutes)
    body = ics.assemble(header, vtimezones, fragments)
    etag = make_etag(body)

    if cache is None:
        cache = session.get(FeedCache, user.id)
    if cache is None:
        cache = FeedCache(user_id=user.id, dirty=False)
        session.add(cache)
    newest = max([user.updated_at, *(r.updated_at for r in rows)]).replace(microsecond=0)
    previous = cache.last_modified
    if cache.etag == etag and previous is not None:
        last_modified = previous
    else:
        # Deletions and reassignments can make the newest remaining change older than what
        # was served before, and HTTP dates have whole seconds: Last-Modified must still
        # move forward whenever the body changes, or If-Modified-Since would answer 304.
        last_modified = newest
        if previous is not None and last_modified <= previous:
            last_modified = max(now.replace(microsecond=0), previous + dt.timedelta(seconds=1))
    if cache.etag != etag or cache.body is None:
        cache.body = body
        cache.etag = etag
    cache.last_modified = last_modified
    cache.generated_at = now
    cache.window_start, cache.window_end = start, end
    cache.schema_version = FEED_SCHEMA_VERSION
    return cache


def render_feed(session: Session, settings: Settings, user: User, now: dt.datetime,
                cache: FeedCache | None = None) -> FeedCache:
    """Assemble ``user``'s feed for ``now`` from fragments (rendering the stale ones) and
    store body, ETag and Last-Modified in ``feed_cache``. Leaves ``dirty`` alone (the
    caller claimed the feed). Returns the cache row."""
    window = feed_window(settings, now)
    rows = load_feed_rows(session, [user.id], *window)[user.id]
    fresh = _render_stale(session, settings, rows)
    cache = _store_feed(session, settings, user, now, rows, fresh, cache, window)
    session.flush()
    return cache


def _render_chunk(session: Session, settings: Settings, users: list[User],
                  caches: dict[str, FeedCache], now: dt.datetime) -> None:
    """Render several feeds with one query and one batch of writes (all or nothing)."""
    window = feed_window(settings, now)
    rows = load_feed_rows(session, [u.id for u in users], *window)
    fresh = _render_stale(session, settings, (r for rs in rows.values() for r in rs))
    for user in users:
        _store_feed(session, settings, user, now, rows[user.id], fresh, caches.get(user.id),
                    window)
    session.flush()


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
            with db.locked_session() as s:
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
                 now: dt.datetime, claim: bool = True) -> FeedRunReport:
    """Render the feeds of ``user_ids`` in chunks: one query and one batch of writes per
    chunk; when something in a chunk fails, its users are rendered one by one, each in its
    own savepoint, so one user's failure is logged with the user id and the others go on."""
    report = FeedRunReport()
    for chunk in _chunks(list(user_ids), CHUNK):
        if claim:
            _claim(db, chunk)
        failed: list[str] = []
        # A write transaction from the start: on SQLite a read that later writes could
        # lose its snapshot to another writer ("database is locked").
        with db.locked_session() as s:
            users = {u.id: u for u in s.scalars(select(User).where(User.id.in_(chunk)))}
            caches = {c.user_id: c for c in
                      s.scalars(select(FeedCache).where(FeedCache.user_id.in_(chunk)))}
            present = [users[uid] for uid in chunk if uid in users]
            try:
                with s.begin_nested():
                    _render_chunk(s, settings, present, caches, now)
            except Exception:  # noqa: BLE001 - find the culprit one user at a time
                log.debug("a feed in a chunk of %d failed; rendering them one by one",
                          len(present))
            else:
                report.rendered.extend(u.id for u in present)
                present = []
            for user in present:
                try:
                    with s.begin_nested():
                        render_feed(s, settings, user, now)
                except Exception:  # noqa: BLE001 - isolate one user's failure
                    log.exception("feed of user %s failed to render", user.id)
                    failed.append(user.id)
                else:
                    report.rendered.append(user.id)
        if failed:
            report.failed.extend(failed)
            _mark_dirty_again(db, failed)
    return report


def _enabled_users() -> Any:
    return select(User.id).where(User.feed_enabled.is_(True), User.deleted_at.is_(None))


def refresh_dirty_feeds(settings: Settings, db: Database, now: dt.datetime,
                        limit: int = 2000) -> FeedRunReport:
    """Re-render the enabled feeds marked dirty (claimed first: with several workers on
    PostgreSQL each dirty feed goes to one of them). Disabled feeds stay dirty until they
    are issued again."""
    with db.locked_session() as s:
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


def rebuild_all_feeds(settings: Settings, db: Database, now: dt.datetime) -> FeedRunReport:
    """Render every enabled feed (nightly: moves the window, picks up settings changes)."""
    with db.session() as s:
        ids = list(s.scalars(_enabled_users().order_by(User.id)))
    report = render_users(settings, db, ids, now, claim=True)
    log.info("rebuilt %d feed(s), %d failed", len(report.rendered), len(report.failed))
    return report
