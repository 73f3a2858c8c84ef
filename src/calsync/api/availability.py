"""Availability endpoints: dispatcher schedule, availability check and search, bookings.

Role matrix (``calsync.api.auth.Principal``):

| endpoint                        | admin | dispatcher | user            |
| ------------------------------- | ----- | ---------- | --------------- |
| GET  /api/schedule              | all   | all        | own user only   |
| POST /api/availability/check    | all   | all        | own user only   |
| POST /api/availability/search   | all   | all        | own user only   |
| POST /api/bookings              | yes   | yes        | no (403)        |

External event details go to their owner only (a ``user`` token for that user); everyone
else gets them masked by :func:`calsync.privacy.mask_for_viewer`. Nothing here logs event
data. Bookings write audit entries (``job.create``, and ``booking.force`` when forced).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse

from calsync import metrics
from calsync.api.auth import Principal, PrincipalDep
from calsync.availability.booking import BookingRefused, book, parse_booking
from calsync.availability.check import check_availability, schedule_of, search_availability
from calsync.availability.requests import parse_check, parse_schedule_query, parse_search
from calsync.availability.store import reading
from calsync.db.models import utcnow

router = APIRouter()


def _stale_after(request: Request) -> dt.timedelta:
    return dt.timedelta(seconds=request.app.state.settings.sync.stale_after_seconds)


def _json(content: dict[str, Any]) -> JSONResponse:
    """Results are plain JSON already: skip FastAPI's recursive encoder, which took about
    a second for a 200-user search (15,000 slots) where ``json.dumps`` takes 20 ms."""
    return JSONResponse(content)


def _may_read(who: Principal, user_ids: tuple[str, ...]) -> None:
    for uid in user_ids:
        who.require_user_access(uid)


@router.get("/api/schedule", tags=["availability"])
def get_schedule(request: Request, users: str | None = Query(None),
                 start: str | None = Query(None), end: str | None = Query(None),
                 who: Principal = PrincipalDep) -> JSONResponse:
    """Per user: schedule items and external busy blocks, masked for the caller."""
    q = parse_schedule_query(users, start, end)
    _may_read(who, q.user_ids)
    with reading(request.app.state.db) as s:
        results = schedule_of(s, q.user_ids, q.start, q.end, who, utcnow(),
                              _stale_after(request))
    return _json({"start": q.start.isoformat(), "end": q.end.isoformat(), "users": results})


@router.post("/api/availability/check", tags=["availability"])
def post_check(request: Request, body: Any = Body(...),
               who: Principal = PrincipalDep) -> JSONResponse:
    q = parse_check(body)
    _may_read(who, q.user_ids)
    with reading(request.app.state.db) as s:
        results = check_availability(s, q.user_ids, q.start, q.end, who, utcnow(),
                                     _stale_after(request))
    return _json({"results": results})


@router.post("/api/availability/search", tags=["availability"])
def post_search(request: Request, body: Any = Body(...),
                who: Principal = PrincipalDep) -> JSONResponse:
    q = parse_search(body)
    _may_read(who, q.user_ids)
    assert q.duration is not None
    with reading(request.app.state.db) as s:
        results = search_availability(s, q.user_ids, q.start, q.end, q.duration, utcnow(),
                                      _stale_after(request))
    return _json({"results": results})


@router.post("/api/bookings", tags=["availability"], status_code=201)
def post_booking(request: Request, body: Any = Body(...),
                 who: Principal = PrincipalDep) -> Any:
    """Book a job atomically: 201 with the job, or 409 with every assignee's check."""
    who.require("admin", "dispatcher")
    req = parse_booking(body)
    try:
        outcome = book(request.app.state.db, req, who, who.actor, utcnow(),
                       _stale_after(request))
    except BookingRefused as exc:
        metrics.BOOKINGS.labels("stale" if exc.reason == "stale" else "conflict").inc()
        return JSONResponse({"error": exc.code, "reason": exc.reason, "detail": exc.message,
                             "conflicts": exc.conflicts}, status_code=409)
    metrics.BOOKINGS.labels("forced" if outcome.forced else "created").inc()
    return {**outcome.job, "forced": outcome.forced}
