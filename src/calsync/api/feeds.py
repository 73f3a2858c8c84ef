"""Serving feeds: ``GET|HEAD /feeds/{user_id}/{token}.ics``.

The token is the only auth. Unknown user, bad token, revoked or disabled feed all get the
same 404 body after the same work (one user lookup, one constant-time HMAC check). Full
tokens are never logged. Responses carry a strong ETag and Last-Modified, answer
conditional requests with 304, and are gzipped when the client asks. The time of the last
fetch is written to ``users.feed_last_fetched_at`` at most once a minute.

Each serving process keeps the feeds it served in memory (:mod:`calsync.feeds.memo`);
:class:`FeedFastPath`, in front of the whole application, answers requests for them (200,
304, HEAD, gzip) without the framework or the database while nothing they depend on has
changed. Everything else (unknown users, bad tokens, feeds not held, a fetch time due to be
written) goes to the route below, which refills the memo. Every answer is counted in
``calsync_feed_requests`` by outcome and client family.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import hmac
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from email.utils import format_datetime, parsedate_to_datetime
from types import SimpleNamespace
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import or_, update

from calsync import metrics
from calsync.db.models import User, utcnow
from calsync.feeds.links import check_feed_token, redacted_feed_path
from calsync.feeds.memo import FeedMemo, MemoEntry, memo_for
from calsync.feeds.service import (
    FeedSnapshot,
    FeedValidators,
    current_feed,
    current_validators,
    feed_window,
)
from calsync.secrets import feed_link_keys

router = APIRouter()
log = logging.getLogger("calsync.api.feeds")

FETCH_WRITE_INTERVAL = dt.timedelta(seconds=60)
_FETCH_WRITE_SECONDS = FETCH_WRITE_INTERVAL.total_seconds()
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
    if header == etag or (header.endswith('-gzip"') and header[:-6] == etag[:-1]):
        return True  # what a client sends back most of the time
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


def _not_modified(request: Request, feed: FeedSnapshot | FeedValidators | MemoEntry) -> bool:
    return _conditional_match(request.headers.get("if-none-match"),
                              request.headers.get("if-modified-since"), feed)


def _conditional_match(inm: str | None, ims: str | None,
                       feed: FeedSnapshot | FeedValidators | MemoEntry) -> bool:
    if inm is not None:  # takes precedence over If-Modified-Since (RFC 9110 13.2.2)
        return _etag_matches(inm, feed.etag)
    if ims:
        try:
            since = parsedate_to_datetime(ims)
        except (TypeError, ValueError, IndexError):
            return False
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.timezone.utc)
        return feed.last_modified.replace(microsecond=0) <= since
    return False


def _memo(request: Request) -> FeedMemo:
    state = request.app.state
    return memo_for(state.db.engine, state.settings.feeds.memory_cache_mb * 1024 * 1024)


def _record_fetch(request: Request, user: User, now: dt.datetime) -> None:
    last = user.feed_last_fetched_at
    if last is not None and now - last < FETCH_WRITE_INTERVAL:
        return
    cutoff = now - FETCH_WRITE_INTERVAL
    with request.app.state.db.session() as s:
        s.execute(update(User).where(User.id == user.id, or_(
            User.feed_last_fetched_at.is_(None), User.feed_last_fetched_at <= cutoff))
            .values(feed_last_fetched_at=now))


def _headers(feed: FeedSnapshot | FeedValidators | MemoEntry,
             use_gzip: bool) -> dict[str, str]:
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
    response = _serve_feed(user_id, token, request)
    metrics.FEED_REQUESTS.labels(str(response.status_code), metrics.client_family(
        request.headers.get("user-agent"))).inc()
    return response


def _serve_feed(user_id: str, token: str, request: Request) -> Response:
    app_state = request.app.state
    now = utcnow()
    memo = _memo(request)
    stamp = memo.stamp(user_id)  # before any read: a change after it drops the entry
    with app_state.db.session() as s:
        user = s.get(User, user_id)
        if user is not None:
            s.expunge(user)
    if not check_feed_token(feed_link_keys(app_state.settings), user, token):
        log.info("feed 404 for %r", redacted_feed_path(user_id[:64], token))
        return JSONResponse(_NOT_FOUND, status_code=404)
    assert user is not None
    _record_fetch(request, user, now)
    recorded = time.monotonic()
    use_gzip = _accepts_gzip(request.headers.get("accept-encoding"))
    # A current cache answers 304 without reading the body; the feed held in memory, if
    # any, may then answer again for another minute. Without one (a client that only
    # sends conditional requests never gets a 200 to refill it), the body is read below.
    validators = current_validators(app_state.settings, app_state.db, user.id, now)
    if validators is not None and _not_modified(request, validators) and (
            memo.refresh(user.id, validators.etag, recorded) or not memo.usable()):
        return Response(status_code=304, headers=_headers(validators, use_gzip))
    feed = current_feed(app_state.settings, app_state.db, user.id, now)
    entry = MemoEntry(user.id, user.feed_version, True, feed.etag, feed.last_modified,
                      feed_window(app_state.settings, now), feed.body, fetch_recorded=recorded)
    memo.put(entry, stamp)  # the next requests are answered from memory (FeedFastPath)
    headers = _headers(feed, use_gzip)
    if _not_modified(request, feed):
        return Response(status_code=304, headers=headers)
    body = _gzip.get(feed.etag, feed.body) if use_gzip else feed.body
    if use_gzip:
        memo.add_gzip(entry, body)
    if use_gzip:
        headers["Content-Encoding"] = "gzip"
    headers["Content-Disposition"] = 'inline; filename="calendar.ics"'
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(body))
        return Response(status_code=200, headers=headers, media_type=CONTENT_TYPE)
    return Response(content=body, status_code=200, headers=headers, media_type=CONTENT_TYPE)


@router.api_route("/feeds/{rest:path}", methods=["GET", "HEAD"], include_in_schema=False)
def feed_not_found(rest: str, request: Request) -> Response:
    """Any other path under /feeds/: the same 404 as a bad token."""
    metrics.FEED_REQUESTS.labels("404", metrics.client_family(
        request.headers.get("user-agent"))).inc()
    return JSONResponse(_NOT_FOUND, status_code=404)


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
_STATIC_HEADERS = [(b"cache-control", b"private, no-cache"), (b"vary", b"Accept-Encoding"),
                   (b"referrer-policy", b"no-referrer"), (b"x-robots-tag", b"noindex")]
_REASONS = {200: b"OK", 304: b"Not Modified"}
_ASKED = ("accept-encoding", "user-agent", "if-none-match", "if-modified-since")


@dataclasses.dataclass(frozen=True)
class Prepared:
    """One answer from memory: status, headers (ASGI form, and the same lines as the
    bytes uvicorn writes after its own ``date`` and ``server``), body (empty for 304 and
    HEAD)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    status_line: bytes
    header_lines: bytes  # every header line, then the blank line
    body: bytes


class MemoAnswers:
    """Answers feed requests from this process's memo (:mod:`calsync.feeds.memo`), the
    same answers :func:`get_feed` gives, byte for byte in body and headers. Shared by
    :class:`FeedFastPath` (ASGI) and ``calsync.api.feedproto`` (straight from the parsed
    request). ``answer`` returns None for anything the memo cannot answer (the route then
    does: renders, refills, or answers 404 and logs it)."""

    def __init__(self, settings: Any, db: Any) -> None:
        self.settings, self.db = settings, db
        self.memo = memo_for(db.engine, settings.feeds.memory_cache_mb * 1024 * 1024)
        self._keys: Any = None
        self._window: tuple[dt.datetime, dt.datetime] | None = None
        self._window_until = 0.0  # time.time() of the next UTC midnight
        self._families: dict[str | None, str] = {}
        self._gzip: dict[str | None, bool] = {}
        self._counters: dict[tuple[str, str], Callable[[], None]] = {}

    def _current_window(self) -> tuple[dt.datetime, dt.datetime]:
        """The feed window of today (UTC days: it changes at midnight UTC)."""
        clock = time.time()
        if self._window is None or clock >= self._window_until:
            now = dt.datetime.fromtimestamp(clock, dt.timezone.utc)
            self._window = feed_window(self.settings, now)
            midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(),
                                           dt.timezone.utc)
            self._window_until = midnight.timestamp()
        return self._window

    def _wants_gzip(self, header: str | None) -> bool:
        known = self._gzip.get(header)
        if known is None:
            known = _accepts_gzip(header)
            if len(self._gzip) >= 1024:
                self._gzip.clear()
            self._gzip[header] = known
        return known

    def _count(self, outcome: str, user_agent: str | None) -> None:
        family = self._families.get(user_agent)
        if family is None:
            family = metrics.client_family(user_agent)
            if len(self._families) >= 1024:
                self._families.clear()
            self._families[user_agent] = family
        inc = self._counters.get((outcome, family))
        if inc is None:
            inc = self._counters[(outcome, family)] = metrics.FEED_REQUESTS.labels(
                outcome, family).inc
        inc()

    def _link_ok(self, entry: MemoEntry, token: str) -> bool:
        for known in entry.tokens:
            if hmac.compare_digest(known, token):
                return True
        if self._keys is None:
            self._keys = feed_link_keys(self.settings)
        holder = SimpleNamespace(id=entry.user_id, feed_version=entry.feed_version,
                                 feed_enabled=entry.servable, deleted_at=None)
        if not check_feed_token(self._keys, holder, token):  # type: ignore[arg-type]
            return False
        if len(entry.tokens) < 4:
            entry.tokens.append(token)  # checked against this very feed version
        return True

    def answer(self, method: str, path: str, asked: dict[str, str]) -> Prepared | None:
        """``asked``: the request's accept-encoding, user-agent, if-none-match and
        if-modified-since headers (lower-case names, the ones present)."""
        user_id, slash, name = path[len("/feeds/"):].partition("/")
        if not slash or "/" in name or not name.endswith(".ics"):
            return None
        entry = self.memo.get(user_id)
        if entry is None or time.monotonic() - entry.fetch_recorded >= _FETCH_WRITE_SECONDS:
            return None
        window = self._current_window()
        if entry.window is not window and entry.window != window:
            return None
        if not self._link_ok(entry, name[:-4]):
            return None  # the route answers 404 (and logs it)
        use_gzip = self._wants_gzip(asked.get("accept-encoding"))
        if use_gzip and entry.gzip_body is None:
            return None
        agent = asked.get("user-agent")
        if _conditional_match(asked.get("if-none-match"), asked.get("if-modified-since"),
                              entry):
            self._count("304", agent)
            return self._prepared(entry, use_gzip, 304)
        self._count("200", agent)
        return self._prepared(entry, use_gzip, 200 if method == "GET" else 0)

    def _prepared(self, entry: MemoEntry, use_gzip: bool, kind: int) -> Prepared:
        key = (use_gzip, kind)
        done: Prepared | None = entry.answers.get(key)
        if done is not None:
            return done
        etag = entry.etag[:-1] + '-gzip"' if use_gzip else entry.etag
        out = [(b"etag", etag.encode()),
               (b"last-modified", format_datetime(entry.last_modified, usegmt=True).encode()),
               *_STATIC_HEADERS]
        body = b""
        if kind != 304:
            full = entry.gzip_body if use_gzip and entry.gzip_body is not None else entry.body
            if use_gzip:
                out.append((b"content-encoding", b"gzip"))
            out += [(b"content-disposition", b'inline; filename="calendar.ics"'),  # the route's
                    (b"content-length", str(len(full)).encode()),  # order, too
                    (b"content-type", CONTENT_TYPE.encode())]
            if kind == 200:
                body = full
        status = 304 if kind == 304 else 200
        done = Prepared(status, out, b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status]),
                        b"".join(b"%s: %s\r\n" % pair for pair in out) + b"\r\n", body)
        entry.answers[key] = done
        return done


class FeedFastPath:
    """ASGI middleware: feed requests the memo can answer are answered here, the rest (and
    every other path) go to ``app``. Same answers as :func:`get_feed`, byte for byte in
    body and validators."""

    def __init__(self, app: ASGIApp, settings: Any, db: Any) -> None:
        self.app = app
        self.answers = answers_for(settings, db)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD") \
                and scope["path"].startswith("/feeds/"):
            asked = {name: v.decode("latin-1") for k, v in scope.get("headers", [])
                     if (name := k.decode("latin-1").lower()) in _ASKED}
            done = self.answers.answer(scope["method"], scope["path"], asked)
            if done is not None:
                await send({"type": "http.response.start", "status": done.status,
                            "headers": done.headers})
                await send({"type": "http.response.body", "body": done.body})
                return
        await self.app(scope, receive, send)


_answers: weakref.WeakKeyDictionary[Any, MemoAnswers] = weakref.WeakKeyDictionary()
_answers_lock = threading.Lock()


def answers_for(settings: Any, db: Any) -> MemoAnswers:
    """The answerer of ``db`` in this process (one per database, like its memo)."""
    with _answers_lock:
        found = _answers.get(db)
        if found is None or found.settings is not settings:
            found = _answers[db] = MemoAnswers(settings, db)
        return found
