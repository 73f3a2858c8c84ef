"""Marking users' feeds for re-rendering. The scheduler picks dirty feeds up within a tick."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from calsync.db.models import FeedCache
from calsync.feeds.memo import note_feeds_changed


def mark_feeds_dirty(session: Session, user_ids: Iterable[str]) -> None:
    ids = sorted(set(user_ids))
    if not ids:
        return
    session.execute(update(FeedCache).where(FeedCache.user_id.in_(ids)).values(dirty=True))
    note_feeds_changed(session, ids)  # serving processes drop what they hold of these
    existing = set(session.scalars(select(FeedCache.user_id).where(FeedCache.user_id.in_(ids))))
    for uid in ids:
        if uid not in existing:
            session.add(FeedCache(user_id=uid, dirty=True))
