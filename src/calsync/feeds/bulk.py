"""Rendering the feeds of many users in one transaction, with Core statements and batched
writes: what the nightly rebuild, the dirty-feed pass and the on-demand render share.

For a set of users: one narrow read of their items in the window (keys and spans, no
text), then per feed its source digest (:mod:`calsync.feeds.assembly`). A feed whose
digest equals the stored one keeps its body, ETag and Last-Modified (one UPDATE moves the
window of all of them). For the others, the stale fragments are rendered from full rows
read by primary key, the current ones read by primary key, and the bodies assembled; then
one executemany stores the fragments and one upsert the feeds. The serving processes'
memory is told about every feed whose ETag moved (:func:`calsync.feeds.memo.note_feeds_changed`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections import namedtuple
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from calsync.config import Settings
from calsync.db.models import FeedCache, ItemAssignee, ScheduleItem, User
from calsync.feeds import assembly, ics
from calsync.feeds.memo import note_feeds_changed

_items = cast(Table, ScheduleItem.__table__)
_assignees = cast(Table, ItemAssignee.__table__)
_users = cast(Table, User.__table__)
_feeds = cast(Table, FeedCache.__table__)

PHASES = ("query", "render", "assemble", "fragments", "feed_cache", "commit")
IN_BATCH = 4000  # primary keys per IN list (SQLite allows 32,766 parameters)
_RENDER_NAMES = ("pk", "kind", "ext_id", "title", "job_type", "account", "location", "notes",
                 "reason", "status", "all_day", "start_at", "end_at", "start_date",
                 "end_date", "tzid", "sequence", "created_at", "updated_at")
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


class _Item(NamedTuple):
    """One feed item as ``_feed_rows`` gives it."""

    pk: int
    key: str  # the fragment key it must have now
    tzid: str
    all_day: bool
    updated_at: dt.datetime


def _feed_rows(session: Session, user_ids: Sequence[str],
               window: tuple[dt.datetime, dt.datetime], settings_hash: str,
               stale: set[int]) -> dict[str, list[_Item]]:
    """Each user's live items in the window, in feed order: keys and spans only. Adds the
    items whose stored fragment is missing or out of date to ``stale``."""
    start, end = window
    out: dict[str, list[_Item]] = {uid: [] for uid in user_ids}
    keys: dict[int, str] = {}
    q = (select(_assignees.c.user_id, _items.c.pk, _items.c.content_hash, _items.c.sequence,
                _items.c.fragment_key, _items.c.ics_fragment.is_(None).label("no_fragment"),
                _items.c.tzid, _items.c.all_day, _items.c.updated_at)
         .select_from(_items.join(_assignees, _assignees.c.item_pk == _items.c.pk))
         .where(_assignees.c.user_id.in_(list(user_ids)), _items.c.deleted_at.is_(None),
                _items.c.status != "cancelled", _items.c.end_at > start,
                _items.c.start_at < end)
         .order_by(_assignees.c.user_id, _items.c.start_at, _items.c.pk))
    fragment_key = ics.fragment_key
    for uid, pk, content_hash, sequence, stored, missing, tzid, all_day, updated in \
            session.execute(q).all():
        key = keys.get(pk)
        if key is None:  # an item with several assignees is looked at once
            key = keys[pk] = fragment_key(content_hash, sequence, settings_hash)
            if missing or stored != key:
                stale.add(pk)
        out[uid].append(_Item(pk, key, tzid, bool(all_day), updated))
    return out


def _render_fragments(session: Session, pks: list[int], template: str) -> dict[int, bytes]:
    """Render the fragments of ``pks`` from their full rows (UTF-8)."""
    out: dict[int, bytes] = {}
    render = ics.render_event
    for batch in _batches(pks):
        for row in session.execute(select(*_RENDER_COLUMNS).where(_items.c.pk.in_(batch))):
            item: Any = _RenderRow._make(row)  # plain attributes: Row's cost 2x the render
            out[item.pk] = render(item, template).encode("utf-8")
    return out


def _store_fragments(session: Session, fresh: dict[int, bytes], keys: dict[int, str]) -> None:
    params = [{"b_pk": pk, "ics_fragment": text.decode("utf-8"), "fragment_key": keys[pk]}
              for pk, text in fresh.items()]
    stmt = (update(_items).where(_items.c.pk == bindparam("b_pk"))
            .values(ics_fragment=bindparam("ics_fragment"),
                    fragment_key=bindparam("fragment_key")))
    for batch in _batches(params, 5000):
        session.connection().execute(stmt, list(batch))


def _read_fragments(session: Session, pks: list[int]) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for batch in _batches(pks):
        for pk, text in session.execute(select(_items.c.pk, _items.c.ics_fragment)
                                        .where(_items.c.pk.in_(batch))):
            out[pk] = text.encode("utf-8")
    return out


def _upsert(session: Session) -> Any:
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" \
        else sqlite.insert
    stmt = insert(_feeds)
    return stmt.on_conflict_do_update(
        index_elements=[_feeds.c.user_id],
        set_={name: stmt.excluded[name] for name in (
            "body", "etag", "last_modified", "generated_at", "window_start", "window_end",
            "schema_version", "source_digest")})


def render_feeds(session: Session, settings: Settings, user_ids: Sequence[str],
                 now: dt.datetime, phases: Phases | None = None) -> list[str]:
    """Bring the feeds of ``user_ids`` up to date for ``now`` in ``session``'s transaction
    (all or nothing). Leaves ``dirty`` alone (the caller claimed the feeds). Returns the
    ids of the users that exist."""
    phases = phases or Phases()
    session.flush()
    window = assembly.feed_window(settings, now)
    template = settings.feeds.job_url_template
    settings_hash = ics.settings_digest(template)
    stale: set[int] = set()
    with phases.timed("query"):
        users = {u.id: u for u in session.execute(
            select(_users.c.id, _users.c.name, _users.c.timezone, _users.c.updated_at)
            .where(_users.c.id.in_(list(user_ids))))}
        ids = [uid for uid in user_ids if uid in users]
        caches = {c.user_id: c for c in session.execute(
            select(_feeds.c.user_id, _feeds.c.etag, _feeds.c.last_modified,
                   _feeds.c.schema_version, _feeds.c.source_digest,
                   _feeds.c.body.is_(None).label("body_missing"))
            .where(_feeds.c.user_id.in_(ids)))} if ids else {}
        rows = _feed_rows(session, ids, window, settings_hash, stale) if ids else {}

    with phases.timed("assemble"):
        plans: list[tuple[Any, str, list[str], str]] = []  # user, header, zones, digest
        unchanged: list[str] = []
        for uid in ids:
            user, items = users[uid], rows[uid]
            header = assembly.header_for(settings, user)
            tzids = assembly.zones_of([(i.tzid, i.all_day) for i in items])
            digest = assembly.source_digest(header, tzids, window,
                                            [(i.pk, i.key, i.updated_at) for i in items])
            cache = caches.get(uid)
            if cache is not None and cache.source_digest == digest and not cache.body_missing \
                    and cache.etag and cache.last_modified is not None \
                    and cache.schema_version == assembly.FEED_SCHEMA_VERSION \
                    and not any(i.pk in stale for i in items):
                unchanged.append(uid)
            else:
                plans.append((user, header, tzids, digest))

    needed = sorted({i.pk for plan in plans for i in rows[plan[0].id]} - stale)
    with phases.timed("query"):
        texts = _read_fragments(session, needed) if needed else {}
    with phases.timed("render"):
        fresh = _render_fragments(session, sorted(stale), template) if stale else {}
    texts.update(fresh)
    with phases.timed("fragments"):
        if fresh:
            _store_fragments(session, fresh, {i.pk: i.key for items in rows.values()
                                              for i in items if i.pk in fresh})

    with phases.timed("assemble"):
        full: list[dict[str, Any]] = []
        meta: list[dict[str, Any]] = []
        moved: list[str] = []
        for user, header, tzids, digest in plans:
            items = rows[user.id]
            body = ics.assemble(header, assembly.vtimezones(tzids, window),
                                [texts[i.pk] for i in items])
            etag = assembly.make_etag(body)
            cache = caches.get(user.id)
            same = cache is not None and cache.etag == etag
            newest = max([user.updated_at, *(i.updated_at for i in items)])
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
            conn.execute(update(_feeds).where(_feeds.c.user_id.in_(list(batch)))
                         .values(generated_at=now, window_start=window[0],
                                 window_end=window[1]))
        # The serving processes drop what they hold of these (a feed left unchanged keeps
        # its body, ETag and Last-Modified, so what they hold of it stays right).
        note_feeds_changed(session, moved + [p["user_id"] for p in meta])
    phases.unchanged += len(unchanged)
    phases.assembled += len(plans)
    phases.fragments_rendered += len(fresh)
    return ids
