"""``/app/settings``: a technician's Calendar settings (DESIGN 4.6).

Everything goes through the functions behind the API: ``calsync.selfservice`` (connections,
calendars, partial user updates, with their role checks) and ``calsync.feeds.links`` (the
feed link, as ``POST|DELETE /api/users/{id}/feed``). A failed form is shown again with
the error next to the field it concerns (never the password typed), status 422; a
successful one redirects back (303) with a short confirmation.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytz
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from calsync.audit import audit
from calsync.availability.check import schedule_of
from calsync.db.models import utcnow
from calsync.errors import CalsyncError, ConnectFailed, ValidationError
from calsync.feeds.links import feed_url, issue_feed, revoke_feed
from calsync.selfservice.access import live_user
from calsync.selfservice.connections import (
    connect_caldav,
    connect_icloud,
    connect_ics,
    disconnect,
    list_calendars,
    list_connections,
    request_sync,
    set_calendars,
)
from calsync.selfservice.oauth import start_oauth
from calsync.selfservice.users import patch_user, user_view
from calsync.web.formatting import WEEKDAY_NAMES, parse_iso, span
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

BUSY_AHEAD = dt.timedelta(days=14)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
PROVIDERS = {"outlook": "Outlook", "google": "Google", "icloud": "iCloud", "caldav": "CalDAV",
             "ics": "Calendar link"}
DONE = {
    "feed_regenerated": "New feed link made. The old link no longer works: subscribe "
                        "again with the new one.",
    "feed_off": "Your feed is turned off. Calendar apps subscribed to it stop updating.",
    "feed_on": "Your feed is on. Subscribe to the link below in your calendar app.",
    "connected": "Calendar account connected. Now choose your calendars below.",
    "subscribed": "Calendar link added: its events now count as busy (it is read-only).",
    "disconnected": "Calendar account disconnected.",
    "calendars": "Calendars saved. Your schedule is being synced now.",
    "private_on": "Private mode is on: others see your own events only as Busy.",
    "private_off": "Private mode is off: dispatchers can see the titles of your own events.",
    "hours": "Working hours saved.",
    "sync": "A sync was started; changes appear within a minute.",
}


@dataclass
class FormState:
    """A form shown again after an error: which one, its errors, what was typed."""

    form: str = ""
    errors: dict[str, str] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)


def _uid(visit: Visit) -> str:
    assert visit.principal.user_id is not None
    return visit.principal.user_id


def _wake(request: Request) -> Callable[[], None] | None:
    wake: Callable[[], None] | None = getattr(request.app.state, "wake_sync", None)
    return wake


def _hours_text(spans: list[list[str]]) -> str:
    return ", ".join(f"{a}–{b}" for a, b in spans)


def _page(request: Request, visit: Visit, state: FormState | None = None,
          status_code: int = 200) -> Response:
    state = state or FormState()
    uid = _uid(visit)
    settings = app_settings(request)
    with app_db(request).read_session() as s:
        user = live_user(s, uid)
        profile = user_view(user)
        link = feed_url(settings, user) if user.feed_enabled else None
        connections = list_connections(s, uid, visit.principal)["connections"]
        calendars = list_calendars(s, uid, visit.principal)
        fetched = user.feed_last_fetched_at
        now = utcnow()
        # What the connected calendars make busy, as the technician (their owner) sees it.
        week = schedule_of(s, [uid], now, now + BUSY_AHEAD, visit.principal, now,
                           dt.timedelta(seconds=settings.sync.stale_after_seconds))[0]
    busy = [{"span": span(parse_iso(v["start"]), parse_iso(v["end"]), profile["timezone"]),
             "summary": v.get("summary") or "Busy", "source": v.get("source") or ""}
            for v in sorted(week["external"], key=lambda v: str(v["start"]))]
    accounts = {c["id"]: c for c in connections}
    for cal in calendars["calendars"]:
        conn = accounts.get(cal["connection"], {})
        cal["where"] = f"{PROVIDERS.get(conn.get('provider', ''), '')}: {conn.get('account', '')}"
    reconnect = request.query_params.get("reconnect")
    if reconnect in accounts and not state.form:
        conn = accounts[reconnect]
        if conn["provider"] in ("caldav", "icloud"):
            state = FormState(form=conn["provider"], values={"account": conn["account"]})
    done = DONE.get(request.query_params.get("done", ""))
    back_from = request.query_params.get("provider", "")
    if back_from in ("outlook", "google") and not state.form:
        # Back from the provider's sign-in (the OAuth callback's redirect).
        if request.query_params.get("connection") in accounts:
            done = f"{PROVIDERS[back_from]} connected. Now choose your calendars below."
        elif request.query_params.get("error"):
            state = FormState(form="oauth", errors={back_from: (
                f"{PROVIDERS[back_from]} sign-in did not finish, so nothing was connected. "
                f"Try again; if it keeps failing, ask your office.")})
    hours = {d: _hours_text(profile["working_hours"].get(d, [])) for d in WEEKDAYS}
    if state.form == "hours":
        hours.update({d: str(state.values.get(f"hours_{d}", "")) for d in WEEKDAYS})
    return render(request, "settings.html", {
        "title": "Calendar settings", "user": profile, "feed_link": link,
        "last_fetched": fetched, "connections": connections, "calendars": calendars,
        "providers": PROVIDERS, "state": state, "done": done,
        "needs_reauth": [c for c in connections if c["status"] == "needs_reauth"],
        "weekdays": list(zip(WEEKDAYS, WEEKDAY_NAMES)), "hours": hours,
        "timezones": list(pytz.common_timezones), "busy": busy,
    }, status_code, visit)


def _get(request: Request) -> Response:
    visit = current_visit(request)
    if visit is None:
        return signed_out_page(request)
    if visit.principal.role != "user":
        return wrong_role_page(request, visit, "Calendar settings page")
    return _page(request, visit)


@router.get("/app/settings")
async def settings_page(request: Request) -> Response:
    return await run_in_threadpool(_get, request)


def _done(key: str, anchor: str) -> Response:
    return see_other(f"/app/settings?done={key}#{anchor}")


# --- feed ---------------------------------------------------------------------------------

def _feed(request: Request, visit: Visit, action: str) -> Response:
    uid = _uid(visit)
    who = visit.principal
    who.require_user_access(uid, write=True)
    with app_db(request).session() as s:
        user = live_user(s, uid)
        if action == "off":
            revoke_feed(user)
            audit(s, who.actor, "feed.revoke", "user", uid)
            return _done("feed_off", "calendar-feed")
        regenerated = user.feed_enabled
        issue_feed(user)
        audit(s, who.actor, "feed.regenerate" if regenerated else "feed.issue", "user", uid)
    return _done("feed_regenerated" if action == "regenerate" else "feed_on", "calendar-feed")


def _user_form(handler: Callable[[Request, Visit, FormData], Response]
               ) -> Callable[[Request, Visit, FormData], Response]:
    """Only a technician's own session reaches the settings forms."""

    def run(request: Request, visit: Visit, form: FormData) -> Response:
        if visit.principal.role != "user":
            return wrong_role_page(request, visit, "Calendar settings page")
        return handler(request, visit, form)

    return run


@router.post("/app/settings/feed/{action}")
async def feed_action(action: str, request: Request) -> Response:
    if action not in ("regenerate", "off", "on"):
        return see_other("/app/settings")
    return await handle_form(request, _user_form(lambda r, v, _f: _feed(r, v, action)))


# --- connecting -----------------------------------------------------------------------------

_CONNECT_FIELDS = {
    "caldav": {"url": "url", "username": "username", "password": "password"},
    "icloud": {"apple_id": "apple_id", "app_password": "app_password"},
    "ics": {"url": "url"},
}


def _error_state(form_name: str, exc: CalsyncError, values: dict[str, Any],
                 default_field: str) -> FormState:
    fld = getattr(exc, "field", "") or default_field
    if isinstance(exc, ConnectFailed):
        text = str(exc.context.get("advice") or exc.message)
    elif isinstance(exc, ValidationError):
        text = _field_words(exc)
    else:
        text = exc.message
    return FormState(form=form_name, errors={fld: text}, values=values)


def _field_words(exc: ValidationError) -> str:
    why = exc.why
    if why == "is required":
        return "Please fill this in."
    return why[0].upper() + why[1:] + ("" if why.endswith(".") else ".")


def _connect(request: Request, visit: Visit, form: FormData, provider: str) -> Response:
    uid = _uid(visit)
    settings = app_settings(request)
    fields = {k: str(form.get(k) or "") for k in _CONNECT_FIELDS[provider]}
    # What the page may show again: never the password.
    shown = {k: v for k, v in fields.items() if "password" not in k}
    http = (getattr(request.app.state, "connector_http", None) or {}).get(provider)
    try:
        if provider == "caldav":
            connect_caldav(settings, app_db(request), uid, visit.principal, url=fields["url"],
                           username=fields["username"], password=fields["password"],
                           now=utcnow(), http=http)
        elif provider == "icloud":
            connect_icloud(settings, app_db(request), uid, visit.principal,
                           apple_id=fields["apple_id"], app_password=fields["app_password"],
                           now=utcnow(), http=http)
        else:
            connect_ics(settings, app_db(request), uid, visit.principal, url=fields["url"],
                        now=utcnow(), http=http)
            return _done("subscribed", "connected-calendars")
    except CalsyncError as exc:
        default = "apple_id" if provider == "icloud" else "url"
        return _page(request, visit, _error_state(provider, exc, shown, default), 422)
    return _done("connected", "calendar-configuration")


@router.post("/app/settings/connect/{provider}")
async def connect(provider: str, request: Request) -> Response:
    if provider in ("outlook", "google"):
        return await handle_form(request, _user_form(
            lambda r, v, _f: _oauth(r, v, provider)))
    if provider not in _CONNECT_FIELDS:
        return see_other("/app/settings")
    return await handle_form(request, _user_form(lambda r, v, f: _connect(r, v, f, provider)))


def _oauth(request: Request, visit: Visit, provider: str) -> Response:
    """Start the provider's sign-in; it comes back to this page."""
    http = (getattr(request.app.state, "connector_http", None) or {}).get(provider)
    try:
        url = str(start_oauth(app_settings(request), app_db(request), _uid(visit),
                              visit.principal, provider=provider, return_to="/app/settings",
                              now=utcnow(), http=http)["authorize_url"])
    except CalsyncError as exc:
        state = FormState(form="oauth", errors={provider: _oauth_words(provider, exc)})
        return _page(request, visit, state, 422)
    return see_other(url)


def _oauth_words(provider: str, exc: CalsyncError) -> str:
    name = PROVIDERS[provider]
    if exc.code in ("not_found", "config", "not_configured"):
        return f"Connecting {name} is not set up on this server yet; ask your office."
    return f"{name} sign-in could not start: {exc.message}"


# --- connections ----------------------------------------------------------------------------

def _connection_action(request: Request, visit: Visit, form: FormData, connection_id: str,
                       action: str) -> Response:
    settings = app_settings(request)
    try:
        if action == "disconnect":
            disconnect(settings, app_db(request), connection_id, visit.principal,
                       remove_copies=form.get("remove_copies") == "on", now=utcnow())
            return _done("disconnected", "connected-calendars")
        request_sync(app_db(request), connection_id, visit.principal, utcnow(),
                     wake=_wake(request))
        return _done("sync", "connected-calendars")
    except CalsyncError as exc:
        state = FormState(form="connection", errors={connection_id: exc.message})
        return _page(request, visit, state, exc.http_status if exc.http_status < 500 else 502)


@router.post("/app/settings/connections/{connection_id}/{action}")
async def connection_action(connection_id: str, action: str, request: Request) -> Response:
    if action not in ("disconnect", "sync"):
        return see_other("/app/settings")
    return await handle_form(request, _user_form(
        lambda r, v, f: _connection_action(r, v, f, connection_id, action)))


# --- calendars, private mode, working hours ---------------------------------------------------

def _calendars(request: Request, visit: Visit, form: FormData) -> Response:
    primary = str(form.get("primary") or "") or None
    conflict = [str(c) for c in form.getlist("conflict") if str(c) != primary]
    try:
        set_calendars(app_db(request), _uid(visit), visit.principal, primary=primary,
                      conflict=list(dict.fromkeys(conflict)), now=utcnow(), wake=_wake(request))
    except ValidationError as exc:
        fld = "primary" if exc.field == "primary" else "conflict"
        state = FormState(form="calendars", errors={fld: _field_words(exc)})
        return _page(request, visit, state, 422)
    return _done("calendars", "calendar-configuration")


@router.post("/app/settings/calendars")
async def save_calendars(request: Request) -> Response:
    return await handle_form(request, _user_form(_calendars))


def _patch(request: Request, visit: Visit, changes: dict[str, Any]) -> None:
    with app_db(request).session() as s:
        patch_user(s, _uid(visit), visit.principal, changes, utcnow())


def _private_mode(request: Request, visit: Visit, form: FormData) -> Response:
    on = form.get("private_mode") == "on"
    _patch(request, visit, {"private_mode": on})
    return _done("private_on" if on else "private_off", "private-mode")


@router.post("/app/settings/private-mode")
async def save_private_mode(request: Request) -> Response:
    return await handle_form(request, _user_form(_private_mode))


_SPAN = re.compile(r"^\s*(\d{1,2})(?::(\d{2}))?\s*[-–—]\s*(\d{1,2})(?::(\d{2}))?\s*$")


def parse_hours(text: str) -> list[list[str]]:
    """``"08:00-12:00, 13:00-17:00"`` (or ``8-17``) into ``[["08:00", "12:00"], …]``;
    empty means not working that day. Raises ValueError with words for the technician."""
    spans = []
    for part in [p for p in re.split(r"[,;]", text) if p.strip()]:
        m = _SPAN.match(part)
        if m is None:
            raise ValueError(f"“{part.strip()}” is not a time range. Write hours like "
                             f"08:00–17:00, and separate breaks with a comma "
                             f"(08:00–12:00, 13:00–17:00).")
        h1, m1, h2, m2 = int(m[1]), int(m[2] or 0), int(m[3]), int(m[4] or 0)
        if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2):
            raise ValueError(f"“{part.strip()}” has a time that does not exist.")
        start, end = f"{h1:02d}:{m1:02d}", f"{h2:02d}:{m2:02d}"
        if start >= end:
            raise ValueError(f"In “{part.strip()}” the end is not after the start.")
        spans.append([start, end])
    return spans


def _working_hours(request: Request, visit: Visit, form: FormData) -> Response:
    values = {k: str(form.get(k) or "") for k in ["timezone", *(f"hours_{d}" for d in WEEKDAYS)]}
    errors: dict[str, str] = {}
    hours: dict[str, list[list[str]]] = {}
    for d in WEEKDAYS:
        try:
            hours[d] = parse_hours(values[f"hours_{d}"])
        except ValueError as exc:
            errors[f"hours_{d}"] = str(exc)
    if not any(hours.values()):
        hours = {}  # no day set: no working-hours limit
    if not errors:
        try:
            _patch(request, visit, {"timezone": values["timezone"], "working_hours": hours})
        except ValidationError as exc:
            day = re.match(r"working_hours\.(\w{3})", exc.field)
            key = f"hours_{day[1]}" if day else "timezone"
            errors[key] = ("Choose your time zone from the list." if key == "timezone"
                           else f"These hours overlap or are out of order ({exc.why}).")
    if errors:
        return _page(request, visit, FormState(form="hours", errors=errors, values=values), 422)
    return _done("hours", "working-hours")


@router.post("/app/settings/working-hours")
async def save_working_hours(request: Request) -> Response:
    return await handle_form(request, _user_form(_working_hours))

