"""``/app/dispatch``: the dispatcher's board.

A week of technicians x days, from :func:`calsync.availability.check.schedule_of` (the
function behind ``GET /api/schedule``, so external events arrive already masked for the
signed-in dispatcher), each technician's entries placed on the days of their own time
zone. "Find a free slot" is a GET form run through ``search_availability`` (as ``POST
/api/availability/search``); each slot's "Book" posts to :func:`book` (as ``POST
/api/bookings``: atomic, refused with the conflicts when someone is busy or stale).
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytz
from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from calsync.availability.booking import BookingRefused, book, parse_booking
from calsync.availability.check import schedule_of, search_availability
from calsync.db.models import User, utcnow
from calsync.errors import AlreadyExists, ValidationError
from calsync.timezones import UTC, is_valid_tz, zone
from calsync.web.formatting import day_label, hhmm, local, parse_iso, span
from calsync.web.pages import (
    Visit,
    app_db,
    app_settings,
    current_visit,
    handle_form,
    render,
    see_other,
    signed_out_page,
    wrong_role_page,
)

router = APIRouter(include_in_schema=False)

MAX_TECHNICIANS = 200
MAX_SLOTS_SHOWN = 16
SEARCH_KEYS = ("week", "users", "duration", "from", "to", "tz", "title")
KIND_LABELS = {"job": "Job", "time_off": "Time off", "blocked": "Blocked", "external": "Busy"}


@dataclass
class BoardEntry:
    kind: str
    label: str
    summary: str
    times: str


@dataclass
class BoardRow:
    user_id: str
    name: str
    timezone: str
    stale_calendars: list[str]
    days: list[list[BoardEntry]] = field(default_factory=list)


@dataclass
class SlotSearch:
    """The "Find a free slot" form: what was typed, what was wrong, what was found."""

    users: list[str] = field(default_factory=list)
    duration: str = "60"
    start: str = ""
    end: str = ""
    tz: str = "UTC"
    title: str = "Job"
    errors: dict[str, str] = field(default_factory=dict)
    ran: bool = False
    results: list[dict[str, Any]] = field(default_factory=list)


def _stale_after(request: Request) -> dt.timedelta:
    return dt.timedelta(seconds=app_settings(request).sync.stale_after_seconds)


def technicians(request: Request) -> list[tuple[str, str, str]]:
    """(id, name, timezone) of every live user, by name."""
    with app_db(request).read_session() as s:
        rows = s.execute(select(User.id, User.name, User.timezone)
                         .where(User.deleted_at.is_(None))
                         .order_by(User.name, User.id).limit(MAX_TECHNICIANS)).all()
    return [(r[0], r[1], r[2]) for r in rows]


def week_of(value: str | None, today: dt.date) -> dt.date:
    """The Monday of the week holding ``value`` (an ISO date), else of ``today``."""
    day = today
    if value:
        try:
            day = dt.date.fromisoformat(value)
        except ValueError:
            day = today
    return day - dt.timedelta(days=day.weekday())


def _entry(view: Mapping[str, Any], tzid: str) -> BoardEntry:
    kind = str(view.get("kind"))
    start, end = parse_iso(str(view["start"])), parse_iso(str(view["end"]))
    times = "All day" if view.get("all_day") else f"{hhmm(local(start, tzid))}–" \
                                                   f"{hhmm(local(end, tzid))}"
    summary = str(view.get("summary") or KIND_LABELS.get(kind, kind))
    return BoardEntry(kind, KIND_LABELS.get(kind, kind), summary, times)


def _place(view: Mapping[str, Any], tzid: str, days: list[dt.date]) -> list[int]:
    """Indexes of the week's days (in the technician's zone) that ``view`` covers."""
    start = local(parse_iso(str(view["start"])), tzid)
    end = local(parse_iso(str(view["end"])), tzid)
    last = (end - dt.timedelta(microseconds=1)).date() if end > start else start.date()
    return [i for i, d in enumerate(days) if start.date() <= d <= last]


def board_rows(results: list[dict[str, Any]], days: list[dt.date]) -> list[BoardRow]:
    """Rows of the board from ``schedule_of`` results (already masked)."""
    rows = []
    for r in results:
        tzid = str(r["timezone"])
        row = BoardRow(str(r["user_id"]), str(r["name"]), tzid, list(r["stale_calendars"]),
                       [[] for _ in days])
        views = sorted([*r["items"], *r["external"]], key=lambda v: str(v["start"]))
        for view in views:
            for i in _place(view, tzid, days):
                row.days[i].append(_entry(view, tzid))
        rows.append(row)
    return rows


def _parse_local(value: str, tzid: str) -> dt.datetime | None:
    try:
        naive = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if naive.tzinfo is None:
        naive = naive.replace(tzinfo=zone(tzid))
    return naive.astimezone(UTC)


def run_search(request: Request, visit: Visit, query: Mapping[str, Any],
               known: dict[str, tuple[str, str, str]], now: dt.datetime) -> SlotSearch:
    form = SlotSearch(users=[u for u in query.get("users", []) if u in known],
                      duration=str(query.get("duration") or "60"),
                      start=str(query.get("from") or ""), end=str(query.get("to") or ""),
                      tz=str(query.get("tz") or "UTC"), title=str(query.get("title") or "Job"))
    if not any(k in query for k in ("from", "to", "duration")):
        return form
    form.ran = True
    if not form.users:
        form.errors["users"] = "Choose at least one technician."
    if not is_valid_tz(form.tz):
        form.errors["tz"] = "Choose a time zone from the list."
        form.tz = "UTC"
    minutes = int(form.duration) if form.duration.isdigit() else 0
    if not 5 <= minutes <= 24 * 60:
        form.errors["duration"] = "Enter a length in whole minutes, from 5 to 1440."
    start, end = _parse_local(form.start, form.tz), _parse_local(form.end, form.tz)
    if start is None:
        form.errors["from"] = "Enter the date and time to search from."
    if end is None:
        form.errors["to"] = "Enter the date and time to search until."
    elif start is not None and end <= start:
        form.errors["to"] = "This must be later than From."
    elif start is not None and end - start > dt.timedelta(days=62):
        form.errors["to"] = "Search at most 62 days at a time."
    if form.errors:
        return form
    assert start is not None and end is not None
    with app_db(request).read_session() as s:
        results = search_availability(s, form.users, start, end, dt.timedelta(minutes=minutes),
                                      now, _stale_after(request))
    for r in results:
        uid, name, tzid = known[r["user_id"]]
        slots = [{"start": x["start"], "end": x["end"],
                  "label": span(parse_iso(x["start"]), parse_iso(x["end"]), form.tz),
                  "job_id": f"job_{secrets.token_hex(6)}"} for x in r["slots"]]
        form.results.append({"user_id": uid, "name": name, "stale": r["stale"],
                             "stale_calendars": r["stale_calendars"],
                             "slots": slots[:MAX_SLOTS_SHOWN],
                             "more": max(0, len(slots) - MAX_SLOTS_SHOWN)})
    return form


def _query_of(request: Request) -> dict[str, Any]:
    q = request.query_params
    out: dict[str, Any] = {k: q.get(k) for k in SEARCH_KEYS if k != "users" and k in q}
    out["users"] = q.getlist("users")
    if q.get("booked"):
        out["booked"] = q["booked"]
    return out


def _board(request: Request, visit: Visit, query: Mapping[str, Any],
           status_code: int = 200, refusal: dict[str, Any] | None = None) -> Response:
    now = utcnow()
    week = week_of(query.get("week"), now.date())
    days = [week + dt.timedelta(days=i) for i in range(7)]
    people = technicians(request)
    known = {p[0]: p for p in people}
    # One UTC range that covers the week in every zone (UTC-12 .. UTC+14).
    start = dt.datetime.combine(week, dt.time(), UTC) - dt.timedelta(hours=14)
    end = dt.datetime.combine(week + dt.timedelta(days=7), dt.time(), UTC) + dt.timedelta(hours=12)
    results: list[dict[str, Any]] = []
    if people:
        with app_db(request).read_session() as s:
            results = schedule_of(s, list(known), start, end, visit.principal, now,
                                  _stale_after(request))
    rows = board_rows(results, days)
    search = run_search(request, visit, query, known, now)
    if not search.ran and not query.get("tz") and people:
        search.tz = people[0][2]
    booked = None
    if query.get("booked"):
        booked = _booked_entry(results, str(query["booked"]))
    search_query = {k: v for k, v in query.items() if k in SEARCH_KEYS}
    return render(request, "dispatch.html", {
        "title": "Dispatch board", "week": week, "days": days, "rows": rows,
        "people": people, "search": search,
        "prev_week": (week - dt.timedelta(days=7)).isoformat(),
        "next_week": (week + dt.timedelta(days=7)).isoformat(),
        "week_label": f"{day_label(days[0])} – {day_label(days[-1])} {days[-1].year}",
        "timezones": _zones(), "refusal": refusal, "booked": booked,
        "back": urlencode(search_query, doseq=True),
    }, status_code, visit)


def _booked_entry(results: list[dict[str, Any]], job_id: str) -> str:
    """The confirmation of a booking, from the board's own data for the week."""
    for r in results:
        for item in r["items"]:
            if item.get("id") == job_id:
                return (f"Booked “{item['summary']}” for {r['name']}, "
                        f"{span(parse_iso(item['start']), parse_iso(item['end']), r['timezone'])}"
                        f" ({r['timezone']}).")
    return "Booked."


def _zones() -> list[str]:
    return list(pytz.common_timezones)


def _page(request: Request) -> Response:
    visit = current_visit(request)
    if visit is None:
        return signed_out_page(request)
    if visit.principal.role not in ("dispatcher", "admin"):
        return wrong_role_page(request, visit, "dispatch board")
    return _board(request, visit, _query_of(request))


@router.get("/app/dispatch")
async def dispatch_page(request: Request) -> Response:
    return await run_in_threadpool(_page, request)


def _back_query(form: FormData) -> dict[str, Any]:
    parsed = parse_qs(str(form.get("back") or ""))
    out: dict[str, Any] = {k: v[0] for k, v in parsed.items() if k in SEARCH_KEYS and v}
    out["users"] = parsed.get("users", [])
    return out


def _book(request: Request, visit: Visit, form: FormData) -> Response:
    if visit.principal.role not in ("dispatcher", "admin"):
        return wrong_role_page(request, visit, "dispatch board")
    query = _back_query(form)
    user_id = str(form.get("user_id") or "")
    body = {"id": str(form.get("job_id") or f"job_{secrets.token_hex(6)}"),
            "title": str(form.get("title") or "Job")[:200] or "Job",
            "start": str(form.get("start") or ""), "end": str(form.get("end") or ""),
            "assignees": [user_id]}
    try:
        req = parse_booking(body)
        outcome = book(app_db(request), req, visit.principal, visit.principal.actor, utcnow(),
                       _stale_after(request))
    except BookingRefused as exc:
        return _board(request, visit, query, 409, _refusal(exc, request))
    except AlreadyExists:
        return _board(request, visit, query, 409, {
            "message": "This slot was booked already (the form was sent twice).",
            "conflicts": []})
    except ValidationError as exc:
        return _board(request, visit, query, 422, {
            "message": f"Could not book: {exc.why}", "conflicts": []})
    params = {**query, "booked": outcome.job["id"]}
    return see_other("/app/dispatch?" + urlencode(params, doseq=True))


def _refusal(exc: BookingRefused, request: Request) -> dict[str, Any]:
    names = {p[0]: (p[1], p[2]) for p in technicians(request)}
    conflicts = []
    for r in exc.conflicts:
        name, tzid = names.get(r["user_id"], (r["user_id"], "UTC"))
        for c in r["conflicts"]:
            conflicts.append({"name": name, "summary": c["summary"],
                              "label": KIND_LABELS.get(c["kind"], c["kind"]),
                              "times": span(parse_iso(c["start"]), parse_iso(c["end"]), tzid)})
        if r["stale"]:
            conflicts.append({"name": name, "summary": ", ".join(r["stale_calendars"]),
                              "label": "Calendar not synced", "times": ""})
    return {"message": "Not booked: the technician is not free then.", "conflicts": conflicts}


@router.post("/app/dispatch/book")
async def book_slot(request: Request) -> Response:
    return await handle_form(request, _book)
