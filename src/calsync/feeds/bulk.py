"""Rendering the feeds of many users in one transaction, with Core statements and batched
writes: what the nightly rebuild, the dirty-feed pass and the on-demand render share.

For a set of users: one narrow read of their items in the window (per item one short
text, ``pk|stored fragment key|updated_at``, its zone, and an out-of-date flag worked out
in SQL; no fragment text, no datetime conversion), then per feed its source digest
(:mod:`calsync.feeds.assembly`). A feed whose digest equals the stored one keeps its body,
ETag and Last-Modified (one UPDATE moves the window of all of them): that is the whole
warm rebuild. For the others, the stale fragments are rendered from full rows read by
primary key, the current ones read by primary key, and the bodies assembled; then the
fragments are stored in batches (PostgreSQL: ``UPDATE ... FROM unnest(...)``, only rows
whose content still has the fragment's key; SQLite: an executemany) and the feeds with one
upsert (``INSERT ... ON CONFLICT``). The serving processes' memory is told about every
feed that changed (:func:`calsync.feeds.memo.note_feeds_changed`).

Many stale fragments (a cold rebuild) are rendered by worker processes
(:mod:`calsync.feeds.parallel`): they read the rows by primary key themselves, the parent
stores each batch as it comes back and, while it finishes a chunk, the workers already
render the next chunk's stale items (:class:`Ahead`). A fragment from a worker is used
only when its key is the one this transaction expects; otherwise it is rendered again
in-process.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
from collections import namedtuple
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import (
    Integer,
    String,
    Table,
    any_,
    bindparam,
    case,
    func,
    or_,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from calsync.config import Settings
from calsync.db.models import FeedCache, ItemAssignee, ScheduleItem, User
from calsync.feeds import assembly, ics
from calsync.feeds.memo import note_feeds_changed
from calsync.timezones import UTC

if TYPE_CHECKING:
    from concurrent.futures import Future

    from calsync.feeds.parallel import RenderPool

_items = cast(Table, ScheduleItem.__table__)
_assignees = cast(Table, ItemAssignee.__table__)
_users = cast(Table, User.__table__)
_feeds = cast(Table, FeedCache.__table__)

PHASES = ("query", "render", "assemble", "fragments", "feed_cache", "commit")
IN_BATCH = 4000  # primary keys per IN list (SQLite allows 32,766 parameters)
_RENDER_NAMES = ("pk", "kind", "ext_id", "title", "job_type", "account", "location", "notes",
                 "reason", "status", "all_day", "start_at", "end_at", "start_date",
                 "end_date", "tzid", "sequence", "created_at", "updated_at", "content_hash")
_RENDER_COLUMNS = [_items.c[name] for name in _RENDER_NAMES]
_RenderRow = namedtuple("_RenderRow", _RENDER_NAMES)  # type: ignore[misc]


@dataclass
class Phases:
    """Wall-clock and CPU seconds per phase, summed over calls (for the benchmark)."""

    wall: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    cpu: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    unchanged: int = 0
    assembled: int = 0
    fragments_rendered: int = 0

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] += time.perf_counter() - wall
            self.cpu[name] += time.process_time() - cpu


def _batches(values: Sequence[Any], size: int = IN_BATCH) -> Iterator[Sequence[Any]]:
    for i in range(0, len(values), size):
        yield values[i:i + size]


def _is_pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _among(session: Session, column: Any, values: Sequence[Any]) -> ColumnElement[bool]:
    """``column IN values``; on PostgreSQL ``= ANY(array)``, one parameter however many
    values (psycopg parses each placeholder of a long IN list)."""
    return _among_on(_is_pg(session), column, values)


def _among_on(pg: bool, column: Any, values: Sequence[Any]) -> ColumnElement[bool]:
    if pg:
        kind = Integer() if isinstance(column.type, Integer) else String()
        return cast(ColumnElement[bool], column == any_(
            bindparam(None, list(values), type_=postgresql.ARRAY(kind))))
    return cast(ColumnElement[bool], column.in_(list(values)))


# A fragment is stored only while its item has the content hash and sequence it was
# rendered from (its key says so): on PostgreSQL another transaction may change the item
# between the read and this UPDATE, which then sees the new row (READ COMMITTED) and must
# leave it out of date. The texts go as one string split by the server (client and server
# CPU: a text[] parameter is quoted and parsed value by value).
_PG_STORE_WHERE = ("WHERE s.pk = v.pk AND substr(s.content_hash, 1, 32) || ':' "
                   "|| CAST(s.sequence AS text) || :suffix = v.k")
_PG_STORE_FRAGMENTS = text(
    "UPDATE schedule_items AS s SET ics_fragment = v.f, fragment_key = v.k "
    "FROM unnest(CAST(:pks AS integer[]), string_to_array(:fragments, chr(30)), "
    "string_to_array(:keys, chr(30))) AS v(pk, f, k) " + _PG_STORE_WHERE)
_PG_STORE_FRAGMENT_ARRAYS = text(  # when a text holds the separator
    "UPDATE schedule_items AS s SET ics_fragment = v.f, fragment_key = v.k "
    "FROM unnest(CAST(:pks AS integer[]), CAST(:fragments AS text[]), "
    "CAST(:keys AS text[])) AS v(pk, f, k) " + _PG_STORE_WHERE)
_SEPARATOR = "\x1e"  # RFC 5545 TEXT has no control characters (ics.escape_text drops them)
STORE_BATCH = 5000


@dataclass
class _Feed:
    """One user's items in the window, as ``_feed_rows`` reads them."""

    pks: list[int] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)  # "pk|stored fragment key|updated_at"
    zones: set[str] = field(default_factory=set)
    stale: bool = False


def _key_sql(settings_hash: str) -> ColumnElement[str]:
    """``ics.fragment_key`` of each row, in SQL (the two must agree)."""
    head = type_coerce(func.substr(_items.c.content_hash, 1, 32), String())
    return head.concat(":").concat(sql_cast(_items.c.sequence, String())) \
        .concat(f":r{ics.RENDERER_VERSION}:{settings_hash}")


def _updated_text(session: Session) -> ColumnElement[str]:
    """``updated_at`` as text, as stored (SQLite) or in UTC (PostgreSQL)."""
    if _is_pg(session):
        return cast(ColumnElement[str], func.to_char(
            func.timezone("UTC", _items.c.updated_at), "YYYY-MM-DD HH24:MI:SS.US"))
    return type_coerce(_items.c.updated_at, String())


def _item_line(session: Session) -> ColumnElement[str]:
    """``pk|stored fragment key|updated_at`` of each item (see ``assembly.source_digest``)."""
    return sql_cast(_items.c.pk, String()).concat("|") \
        .concat(func.coalesce(_items.c.fragment_key, "")).concat("|") \
        .concat(_updated_text(session))


def _stale_fragment(settings_hash: str) -> ColumnElement[bool]:
    return or_(_items.c.ics_fragment.is_(None), _items.c.fragment_key.is_(None),
               _items.c.fragment_key != _key_sql(settings_hash))


def _out_of_date(settings_hash: str) -> ColumnElement[int]:
    return case((_stale_fragment(settings_hash), 1), else_=0)


def _stale_pks(session: Session, user_ids: Sequence[str],
               window: tuple[dt.datetime, dt.datetime],
               settings_hash: str) -> tuple[list[int], set[str]]:
    """The items in the window of ``user_ids`` whose fragment is missing or out of date,
    and the users they belong to."""
    q = _in_window(session, select(_items.c.pk, _assignees.c.user_id), user_ids, window) \
        .where(_stale_fragment(settings_hash))
    rows = session.execute(q).all()
    return sorted({pk for pk, _ in rows}), {uid for _, uid in rows}


def _in_window(session: Session, query: Any, user_ids: Sequence[str],
               window: tuple[dt.datetime, dt.datetime]) -> Any:
    """``query`` over the live items of ``user_ids`` in the window (what a feed shows)."""
    start, end = window
    return (query.select_from(_items.join(_assignees, _assignees.c.item_pk == _items.c.pk))
            .where(_among(session, _assignees.c.user_id, user_ids),
                   _items.c.deleted_at.is_(None), _items.c.status != "cancelled",
                   _items.c.end_at > start, _items.c.start_at < end))


def _feed_summaries(session: Session, user_ids: Sequence[str],
                    window: tuple[dt.datetime, dt.datetime],
                    settings_hash: str) -> dict[str, tuple[list[str], bool, set[str]]]:
    """Per user with items in the window: their item lines, whether any is out of date,
    and the zones of their timed items, aggregated by the database (one row per user: the
    warm rebuild moves no per-item row into Python)."""
    inner = _in_window(session, select(
        _assignees.c.user_id.label("user_id"), _item_line(session).label("line"),
        _out_of_date(settings_hash).label("stale"),
        case((_items.c.all_day, None), else_=_items.c.tzid).label("zone")),
        user_ids, window).subquery()
    if _is_pg(session):
        lines = func.string_agg(inner.c.line, "\n")
        zones = func.string_agg(inner.c.zone.distinct(), ",")
    else:
        lines = func.group_concat(inner.c.line, "\n")
        zones = func.group_concat(inner.c.zone.distinct())
    q = select(inner.c.user_id, lines, func.max(inner.c.stale), zones) \
        .group_by(inner.c.user_id)
    return {uid: (text_lines.split("\n"), bool(any_stale),
                  set(text_zones.split(",")) - ics.UTC_ZONES if text_zones else set())
            for uid, text_lines, any_stale, text_zones in session.execute(q).all()}


def _feed_rows(session: Session, user_ids: Sequence[str],
               window: tuple[dt.datetime, dt.datetime], settings_hash: str,
               stale: dict[int, str]) -> dict[str, _Feed]:
    """Each user's live items in the window, in feed order: one short text per item, its
    zone, and whether its stored fragment is missing or out of date (then added to
    ``stale`` with the key its fragment must have). No fragment text and no datetime is
    converted here."""
    out = {uid: _Feed() for uid in user_ids}
    q = _in_window(session, select(
        _assignees.c.user_id, _items.c.pk, _item_line(session), _out_of_date(settings_hash),
        _items.c.tzid, type_coerce(_items.c.all_day, Integer()), _key_sql(settings_hash)),
        user_ids, window) \
        .order_by(_assignees.c.user_id, _items.c.start_at, _items.c.pk)
    utc_zones = ics.UTC_ZONES
    last, feed = None, _Feed()
    for uid, pk, text_line, is_stale, tzid, all_day, key in session.execute(q).all():
        if uid != last:
            last, feed = uid, out[uid]
        feed.pks.append(pk)
        feed.lines.append(text_line)
        if is_stale:
            stale[pk] = key
            feed.stale = True
        if not all_day and tzid not in utc_zones:
            feed.zones.add(tzid)
    return out


def _parse_utc(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


_DATETIMES = frozenset({"start_at", "end_at", "created_at", "updated_at"})
_DATES = frozenset({"start_date", "end_date"})


def _sqlite_render_columns() -> list[Any]:
    """SQLite: dates and datetimes as stored (text), converted by ``_sqlite_item`` with
    ``fromisoformat``: SQLAlchemy's per-value conversion costs more than the render."""
    return [type_coerce(c, String()) if c.name in _DATETIMES | _DATES else c
            for c in _RENDER_COLUMNS]


def _sqlite_item(row: Any) -> Any:
    values = list(row)
    for i in _DATETIME_AT:
        if values[i] is not None:
            values[i] = _parse_utc(values[i])
    for i in _DATE_AT:
        if values[i] is not None:
            values[i] = dt.date.fromisoformat(values[i][:10])
    return _RenderRow._make(values)


_DATETIME_AT = [i for i, name in enumerate(_RENDER_NAMES) if name in _DATETIMES]
_DATE_AT = [i for i, name in enumerate(_RENDER_NAMES) if name in _DATES]


_worker_engines: dict[tuple[int, str], Any] = {}


def _render_stored(url: str, template: str, settings_hash: str,
                   pks: list[int]) -> tuple[list[int], list[str], list[str]]:
    """What a worker process runs: read the full rows of ``pks`` (its own connection,
    what is committed) and render them; returns their primary keys, fragments and keys."""
    engine = _worker_engines.get((os.getpid(), url))
    if engine is None:
        from multiprocessing.util import Finalize

        from calsync.db.session import make_engine

        engine = _worker_engines[os.getpid(), url] = make_engine(url, pool_size=1)
        # close the connection when the worker exits (multiprocessing runs these)
        Finalize(None, engine.dispose, exitpriority=10)
    out_pks: list[int] = []
    fragments: list[str] = []
    keys: list[str] = []
    with engine.connect() as conn:
        for pk, fragment, key in _rendered(conn.execute, engine.dialect.name == "postgresql",
                                           pks, template, settings_hash):
            out_pks.append(pk)
            fragments.append(fragment)
            keys.append(key)
    return out_pks, fragments, keys


def _rendered(execute: Callable[[Any], Any], pg: bool, pks: Sequence[int], template: str,
              settings_hash: str) -> Iterator[tuple[int, str, str]]:
    """Read the full rows of ``pks`` through ``execute`` and render each: its primary key,
    fragment and fragment key (in this process or a render worker)."""
    columns = _RENDER_COLUMNS if pg else _sqlite_render_columns()
    make: Any = _RenderRow._make if pg else _sqlite_item  # plain attributes: Row's cost 2x
    render, fragment_key = ics.render_event, ics.fragment_key
    for batch in _batches(pks):
        for row in execute(select(*columns).where(_among_on(pg, _items.c.pk, batch))):
            item = make(row)
            yield item.pk, render(item, template), fragment_key(item.content_hash,
                                                                item.sequence, settings_hash)


def _render_fragments(session: Session, pks: list[int], template: str, settings_hash: str,
                      keys: dict[int, str]) -> dict[int, str]:
    """Render the fragments of ``pks`` from their full rows; their new fragment keys go
    to ``keys``."""
    out: dict[int, str] = {}
    for pk, fragment, key in _rendered(session.execute, _is_pg(session), pks, template,
                                       settings_hash):
        out[pk] = fragment
        keys[pk] = key
    return out


_WorkerResult = tuple[list[int], list[str], list[str]]


@dataclass
class Ahead:
    """Fragments of the next chunk's stale items, sent to the workers while this chunk is
    being finished (assembled, written, committed), so that they do not wait for it. What
    ``render_feeds`` hands from one call to the next (see its ``ahead_users``)."""

    futures: list[Future[_WorkerResult]] = field(default_factory=list)
    pks: set[int] = field(default_factory=set)
    # users of the next chunk with stale items: their feeds are assembled anyway, so the
    # next call skips their source digests
    stale_users: set[str] = field(default_factory=set)

    def take(self) -> tuple[list[Future[_WorkerResult]], set[int]]:
        futures, pks = self.futures, self.pks
        self.futures, self.pks = [], set()
        return futures, pks

    def drop(self, pool: RenderPool) -> None:
        """Forget what was sent (the render that would use it failed)."""
        self.stale_users = set()
        pool.cancel(self.take()[0])


def _send(pool: RenderPool, render: Any, pks: Sequence[int],
          sent: list[Future[_WorkerResult]]) -> None:
    from calsync.feeds.parallel import WORKER_BATCH

    for batch in _batches(pks, WORKER_BATCH):
        sent.append(pool.submit(render, list(batch)))


def _render_in_workers(session: Session, stale: dict[int, str], template: str,
                       settings_hash: str, keys: dict[int, str], pool: RenderPool,
                       phases: Phases, ahead: Ahead | None = None,
                       ahead_users: Sequence[str] = (),
                       window: tuple[dt.datetime, dt.datetime] | None = None) -> dict[int, str]:
    """``_render_fragments`` by the pool's workers, storing each batch as it comes back
    while the workers render the next ones; ``stale`` maps each primary key to the key its
    fragment must have (read in this transaction). A worker reads what is committed, which
    may be older (sent ahead, before this transaction began) or newer (PostgreSQL) than
    what this transaction read: a fragment whose key is not the expected one is rendered
    again here. With ``ahead_users`` (the next chunk), their stale items are sent to the
    workers too, into ``ahead``, which also holds what an earlier call sent for these."""
    url = session.get_bind().engine.url.render_as_string(hide_password=False)
    render = partial(_render_stored, url, template, settings_hash)
    out: dict[int, str] = {}
    sent, sent_pks = ahead.take() if ahead is not None else ([], set())
    mine = len(sent)
    try:
        with phases.timed("render"):
            _send(pool, render, [pk for pk in sorted(stale) if pk not in sent_pks], sent)
        if ahead is not None and ahead_users and window is not None:
            with phases.timed("query"):
                found, users = _stale_pks(session, ahead_users, window, settings_hash)
                later = [pk for pk in found if pk not in stale]
            if pool.wants(len(later)):
                with phases.timed("render"):
                    _send(pool, render, later, ahead.futures)
                ahead.pks.update(later)
                ahead.stale_users = users
        pending: dict[int, str] = {}
        for n, future in enumerate(sent, 1):
            with phases.timed("render"):
                done_pks, fragments, done_keys = pool.result(future)
            for pk, fragment, key in zip(done_pks, fragments, done_keys):
                if stale.get(pk) == key:
                    pending[pk] = fragment
                    keys[pk] = key
            if len(pending) >= STORE_BATCH or n == len(sent):
                with phases.timed("fragments"):
                    _store_fragments(session, pending, keys, settings_hash)
                out.update(pending)
                pending = {}
    except BaseException:
        pool.cancel(sent[mine:] + sent[:mine])
        if ahead is not None:
            ahead.drop(pool)
        raise
    # changed since a worker read them, or deleted since (PostgreSQL): here, in-process
    again = [pk for pk in sorted(stale) if pk not in out]
    if again:
        with phases.timed("render"):
            redone = _render_fragments(session, again, template, settings_hash, keys)
        with phases.timed("fragments"):
            _store_fragments(session, redone, keys, settings_hash)
        out.update(redone)
    return out


def _store_fragments(session: Session, fresh: dict[int, str], keys: dict[int, str],
                     settings_hash: str) -> None:
    """One statement per batch: ``UPDATE ... FROM unnest(...)`` on PostgreSQL (only rows
    whose content still has the fragment's key), an executemany of the prepared UPDATE on
    SQLite (whose write lock, taken before the read, keeps every other writer out)."""
    conn = session.connection()
    pks = list(fresh)
    if _is_pg(session):
        suffix = f":r{ics.RENDERER_VERSION}:{settings_hash}"
        for batch in _batches(pks, STORE_BATCH):
            fragments = [fresh[pk] for pk in batch]
            batch_keys = [keys[pk] for pk in batch]
            joined = _SEPARATOR.join(fragments)
            joined_keys = _SEPARATOR.join(batch_keys)
            if joined.count(_SEPARATOR) == len(batch) - 1 \
                    and joined_keys.count(_SEPARATOR) == len(batch) - 1:
                conn.execute(_PG_STORE_FRAGMENTS, {"pks": list(batch), "fragments": joined,
                                                   "keys": joined_keys, "suffix": suffix})
            else:
                conn.execute(_PG_STORE_FRAGMENT_ARRAYS, {
                    "pks": list(batch), "fragments": fragments, "keys": batch_keys,
                    "suffix": suffix})
        return
    for batch in _batches(pks, STORE_BATCH):
        conn.exec_driver_sql(
            "UPDATE schedule_items SET ics_fragment = ?, fragment_key = ? WHERE pk = ?",
            [(fresh[pk], keys[pk], pk) for pk in batch])


def _read_fragments(session: Session, pks: list[int]) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for batch in _batches(pks):
        for pk, fragment in session.execute(select(_items.c.pk, _items.c.ics_fragment)
                                            .where(_among(session, _items.c.pk, batch))):
            out[pk] = fragment.encode("utf-8")
    return out


def _upsert(session: Session) -> Any:
    insert = postgresql.insert if _is_pg(session) else sqlite.insert
    stmt = insert(_feeds)
    return stmt.on_conflict_do_update(
        index_elements=[_feeds.c.user_id],
        set_={name: stmt.excluded[name] for name in (
            "body", "etag", "last_modified", "generated_at", "window_start", "window_end",
            "schema_version", "source_digest")})


def render_feeds(session: Session, settings: Settings, user_ids: Sequence[str],
                 now: dt.datetime, phases: Phases | None = None,
                 pool: RenderPool | None = None, ahead: Ahead | None = None,
                 ahead_users: Sequence[str] = ()) -> list[str]:
    """Bring the feeds of ``user_ids`` up to date for ``now`` in ``session``'s transaction
    (all or nothing). Leaves ``dirty`` alone (the caller claimed the feeds). Returns the
    ids of the users that exist. With ``pool``, many stale fragments are rendered by its
    worker processes (:mod:`calsync.feeds.parallel`; raises ``FeedRenderError`` when one
    fails), a few in this process; then the stale items of ``ahead_users`` (the caller's
    next call) are sent to the workers as well, into ``ahead``, for the next call to use
    (with ``pool`` and the same ``ahead``: a caller that does not make that call, e.g.
    after an error, calls ``ahead.drop(pool)``)."""
    phases = phases or Phases()
    session.flush()
    window = assembly.feed_window(settings, now)
    template = settings.feeds.job_url_template
    settings_hash = ics.settings_digest(template)
    stale: dict[int, str] = {}  # primary key -> the key its fragment must have
    with phases.timed("query"):
        users = {u.id: u for u in session.execute(
            select(_users.c.id, _users.c.name, _users.c.timezone, _users.c.updated_at)
            .where(_among(session, _users.c.id, user_ids)))}
        ids = [uid for uid in user_ids if uid in users]
        caches = {c.user_id: c for c in session.execute(
            select(_feeds.c.user_id, _feeds.c.etag, _feeds.c.last_modified,
                   _feeds.c.schema_version, _feeds.c.source_digest,
                   _feeds.c.body.is_(None).label("body_missing"))
            .where(_among(session, _feeds.c.user_id, ids)))} if ids else {}
        # users known to have stale items (found by the previous call) are assembled
        # whatever their digest says: theirs is not worked out
        known = ahead.stale_users if ahead is not None else set()
        if ahead is not None:
            ahead.stale_users = set()
        digested = [uid for uid in ids if uid not in known]
        summaries = _feed_summaries(session, digested, window, settings_hash) \
            if digested else {}

    with phases.timed("assemble"):
        plans: list[tuple[Any, str]] = []  # user, header
        unchanged: list[str] = []
        for uid in ids:
            user, cache = users[uid], caches.get(uid)
            header = assembly.header_for(settings, user)
            lines, any_stale, zones = summaries.get(uid, ([], uid in known, set()))
            if not any_stale and cache is not None and not cache.body_missing \
                    and cache.etag and cache.last_modified is not None \
                    and cache.schema_version == assembly.FEED_SCHEMA_VERSION \
                    and cache.source_digest == assembly.source_digest(
                        header, sorted(zones), window, lines):
                unchanged.append(uid)
            else:
                plans.append((user, header))

    with phases.timed("query"):
        rows = _feed_rows(session, [user.id for user, _ in plans], window, settings_hash,
                          stale) if plans else {}
    needed = sorted({pk for user, _ in plans for pk in rows[user.id].pks} - stale.keys())
    with phases.timed("query"):
        texts = _read_fragments(session, needed) if needed else {}
    keys: dict[int, str] = {}
    if pool is not None and (pool.wants(len(stale)) or (ahead is not None and ahead.pks)):
        fresh = _render_in_workers(session, stale, template, settings_hash, keys, pool,
                                   phases, ahead, ahead_users, window)
    else:
        if ahead is not None and pool is not None:
            ahead.drop(pool)
        with phases.timed("render"):
            fresh = _render_fragments(session, sorted(stale), template, settings_hash,
                                      keys) if stale else {}
        with phases.timed("fragments"):
            if fresh:
                _store_fragments(session, fresh, keys, settings_hash)
    texts.update((pk, fragment.encode("utf-8")) for pk, fragment in fresh.items())

    with phases.timed("assemble"):
        full: list[dict[str, Any]] = []
        meta: list[dict[str, Any]] = []
        moved: list[str] = []
        for user, header in plans:
            feed = rows[user.id]
            tzids = sorted(feed.zones)
            body = ics.assemble(header, assembly.vtimezones(tzids, window),
                                [texts[pk] for pk in feed.pks])
            etag = assembly.make_etag(body)
            stamps = [line.rsplit("|", 1)[1] for line in feed.lines]
            digest = assembly.source_digest(
                header, tzids, window,
                [f"{pk}|{keys[pk]}|{stamp}" if pk in keys else line
                 for pk, line, stamp in zip(feed.pks, feed.lines, stamps)])
            cache = caches.get(user.id)
            same = cache is not None and cache.etag == etag
            newest = max([user.updated_at, *(_parse_utc(stamp) for stamp in stamps)])
            values = {"b_uid": user.id, "user_id": user.id, "dirty": False, "etag": etag,
                      "last_modified": assembly.next_last_modified(
                          cache.last_modified if cache else None, same, newest, now),
                      "generated_at": now, "window_start": window[0],
                      "window_end": window[1], "schema_version": assembly.FEED_SCHEMA_VERSION,
                      "source_digest": digest, "body": body}
            if same and cache is not None and not cache.body_missing:
                del values["body"]
                meta.append(values)
            else:
                full.append(values)
                moved.append(user.id)

    with phases.timed("feed_cache"):
        conn = session.connection()
        if full:
            conn.execute(_upsert(session), [{k: v for k, v in p.items() if k != "b_uid"}
                                            for p in full])
        if meta:
            conn.execute(update(_feeds).where(_feeds.c.user_id == bindparam("b_uid"))
                         .values({k: bindparam(k) for k in (
                             "last_modified", "generated_at", "window_start", "window_end",
                             "schema_version", "source_digest")}),
                         [{k: p[k] for k in ("b_uid", "last_modified", "generated_at",
                                             "window_start", "window_end", "schema_version",
                                             "source_digest")} for p in meta])
        for batch in _batches(unchanged):
            conn.execute(update(_feeds).where(_among(session, _feeds.c.user_id, batch))
                         .values(generated_at=now, window_start=window[0],
                                 window_end=window[1]))
        # The serving processes drop what they hold of these (a feed left unchanged keeps
        # its body, ETag and Last-Modified, so what they hold of it stays right).
        note_feeds_changed(session, moved + [p["user_id"] for p in meta])
    phases.unchanged += len(unchanged)
    phases.assembled += len(plans)
    phases.fragments_rendered += len(fresh)
    return ids
