"""Serving feeds: ``GET|HEAD /feeds/{user_id}/{token}.ics``.

The token is the only auth. Unknown user, bad token, revoked or disabled feed all get the
same 404 body after the same work (one user lookup, one constant-time HMAC check). Full
tokens are never logged. Responses carry a strong ETag and Last-Modified, answer
conditional requests with 304, and are gzipped when the client asks. The time of the last
fetch is written to ``users.feed_last_fetched_at`` at most once a minute.
"""

from __future__ import annotations

import datetime as dt
import gzip
import logging
import threading
from collections import OrderedDict
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import or_, update

from calsync.db.models import User, utcnow
from calsync.feeds.links import check_feed_token, redacted_feed_path
from calsync.feeds.service import (
    FeedSnapshot,
    FeedValidators,
    current_feed,
    current_validators,
)
from calsync.secrets import feed_link_keys

router = APIRouter()
log = logging.getLogger("calsync.api.feeds")

FETCH_WRITE_INTERVAL = dt.timedelta(seconds=60)
CONTENT_TYPE = "text/calendar; charset=utf-8"
_NOT_FOUND = {"error": "not_found", "detail": "no such feed"}


class _GzipCache:
    """Compressed bodies by ETag, so a popular feed is compressed once per change."""

    def __init__(self, size: int = 256) -> None:
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def peek(self, etag: str) -> bytes | None:
        with self._lock:
            hit = self._items.get(etag)
            if hit is not None:
                self._items.move_to_end(etag)
            return hit

    def get(self, etag: str, body: bytes) -> bytes:
        with self._lock:
            hit = self._items.get(etag)
            if hit is not None:
                self._items.move_to_end(etag)
                return hit
        packed = gzip.compress(body, compresslevel=6, mtime=0)
        with self._lock:
            self._items[etag] = packed
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return packed


_gzip = _GzipCache()


def _accepts_gzip(header: str | None) -> bool:
    if not header:
        return False
    for part in header.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        q = 1.0
        for p in params.split(";"):
            name, _, value = p.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        return q > 0
    return False


def _etag_matches(header: str, etag: str) -> bool:
    """If-None-Match uses weak comparison; our gzip variant's tag matches its content too."""
    if header.strip() == "*":
        return True
    opaque = etag.strip('"')
    for tag in header.split(","):
        tag = tag.strip()
        if tag.startswith("W/"):
            tag = tag[2:]
        tag = tag.strip('"')
        if tag in (opaque, opaque + "-gzip"):
            return True
    return False


def _not_modified(request: Request, feed: FeedSnapshot | FeedValidators) -> bool:
    inm = request.headers.get("if-none-match")
    if inm is not None:  # takes precedence over If-Modified-Since (RFC 9110 13.2.2)
        return _etag_matches(inm, feed.etag)
    ims = request.headers.get("if-modified-since")
    if ims:
        try:
            since = parsedate_to_datetime(ims)
        except (TypeError, ValueError, IndexError):
            return False
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.timezone.utc)
        return feed.last_modified.replace(microsecond=0) <= since
    return False


def _record_fetch(request: Request, user: User, now: dt.datetime) -> None:
    last = user.feed_last_fetched_at
    if last is not None and now - last < FETCH_WRITE_INTERVAL:
        return
    cutoff = now - FETCH_WRITE_INTERVAL
    with request.app.state.db.session() as s:
        s.execute(update(User).where(User.id == user.id, or_(
            User.feed_last_fetched_at.is_(None), User.feed_last_fetched_at <= cutoff))
            .values(feed_last_fetched_at=now))


def _headers(feed: FeedSnapshot | FeedValidators, use_gzip: bool) -> dict[str, str]:
    etag = feed.etag[:-1] + '-gzip"' if use_gzip else feed.etag
    return {"ETag": etag, "Last-Modified": format_datetime(feed.last_modified, usegmt=True),
            "Cache-Control": "private, no-cache", "Vary": "Accept-Encoding",
            "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex"}


_FEED_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/calendar": {}}}, 304: {"description": "not modified"},
    404: {"description": "no such feed"}}


# GET and HEAD as two routes: one route with both methods shares one OpenAPI operation id.
@router.head("/feeds/{user_id}/{token}.ics", tags=["feeds"], response_class=Response,
             responses=_FEED_RESPONSES)
@router.get("/feeds/{user_id}/{token}.ics", tags=["feeds"], response_class=Response,
            responses=_FEED_RESPONSES)
def get_feed(user_id: str, token: str, request: Request) -> Response:
    """The user's iCalendar feed (no auth but the signed token in the path)."""
    app_state = request.app.state
    now = utcnow()
    with app_state.db.session() as s:
        user = s.get(User, user_id)
        if user is not None:
            s.expunge(user)
    if not check_feed_token(feed_link_keys(app_state.settings), user, token):
        log.info("feed 404 for %r", redacted_feed_path(user_id[:64], token))
        return JSONResponse(_NOT_FOUND, status_code=404)
    assert user is not None
    _record_fetch(request, user, now)
    use_gzip = _accepts_gzip(request.headers.get("accept-encoding"))
    # A current cache answers 304, or a gzip hit, without reading the body.
    validators = current_validators(app_state.settings, app_state.db, user.id, now)
    if validators is not None and _not_modified(request, validators):
        return Response(status_code=304, headers=_headers(validators, use_gzip))
    packed = _gzip.peek(validators.etag) if validators is not None and use_gzip else None
    if validators is not None and packed is not None:
        headers = _headers(validators, use_gzip)
        body = packed
    else:
        feed = current_feed(app_state.settings, app_state.db, user.id, now)
        headers = _headers(feed, use_gzip)
        if _not_modified(request, feed):
            return Response(status_code=304, headers=headers)
        body = _gzip.get(feed.etag, feed.body) if use_gzip else feed.body
    if use_gzip:
        headers["Content-Encoding"] = "gzip"
    headers["Content-Disposition"] = 'inline; filename="calendar.ics"'
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(body))
        return Response(status_code=200, headers=headers, media_type=CONTENT_TYPE)
    return Response(content=body, status_code=200, headers=headers, media_type=CONTENT_TYPE)


@router.api_route("/feeds/{rest:path}", methods=["GET", "HEAD"], include_in_schema=False)
def feed_not_found(rest: str) -> Response:
    """Any other path under /feeds/: the same 404 as a bad token."""
    return JSONResponse(_NOT_FOUND, status_code=404)
