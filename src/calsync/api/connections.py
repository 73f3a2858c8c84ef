"""Self-service routes of DESIGN 4.5: a user's connections and calendars. Thin over
:mod:`calsync.selfservice` (roles, validation and shapes live there); bodies and answers
are the pydantic models of :mod:`calsync.api.schemas`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Query, Request, Response

from calsync.api.auth import Principal, PrincipalDep
from calsync.api.schemas import (
    CaldavConnect,
    CalendarRolesIn,
    CalendarRolesOut,
    ConnectBody,
    ConnectedOut,
    ConnectionOut,
    ConnectionsOut,
    DisconnectedOut,
    IcloudConnect,
    OAuthStartIn,
    OAuthStartOut,
    RefreshedOut,
    SyncQueuedOut,
    errors,
)
from calsync.selfservice import connections as service
from calsync.selfservice.oauth import start_oauth

router = APIRouter(tags=["connections"])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _http(request: Request, provider: str) -> Any:
    return (getattr(request.app.state, "connector_http", None) or {}).get(provider)


@router.get("/api/users/{user_id}/connections", response_model=ConnectionsOut,
            responses=errors(401, 403, 404))
def list_connections(user_id: str, request: Request,
                     who: Principal = PrincipalDep) -> dict[str, Any]:
    """The user's connections with the health of each calendar (user, dispatcher, admin)."""
    with request.app.state.db.read_session() as s:
        return service.list_connections(s, user_id, who)


@router.post("/api/users/{user_id}/connections", response_model=ConnectedOut,
             status_code=201, responses={200: {"model": ConnectedOut,
                                               "description": "An existing connection "
                                                              "re-authorised"},
                                         **errors(401, 403, 404, 422)})
def connect(user_id: str, body: ConnectBody, request: Request, response: Response,
            who: Principal = PrincipalDep) -> dict[str, Any]:
    """Connect a CalDAV or iCloud account: the credentials are checked and the calendars
    discovered first (422 ``auth_failed``, ``not_caldav`` or ``unreachable`` otherwise, with
    what to do). The new calendars are ``ignored`` until chosen with PUT calendars. Or
    subscribe to an ``.ics`` feed (``ics``): a read-only conflict calendar at once."""
    settings, db = request.app.state.settings, request.app.state.db
    if isinstance(body, CaldavConnect):
        result = service.connect_caldav(settings, db, user_id, who, url=body.url,
                                        username=body.username, password=body.password,
                                        now=_now(), http=_http(request, "caldav"))
    elif isinstance(body, IcloudConnect):
        result = service.connect_icloud(settings, db, user_id, who, apple_id=body.apple_id,
                                        app_password=body.app_password, now=_now(),
                                        http=_http(request, "icloud"))
    else:
        result = service.connect_ics(settings, db, user_id, who, url=body.url, now=_now(),
                                     http=_http(request, "ics"))
    if not result["created"]:
        response.status_code = 200
    return result


@router.post("/api/users/{user_id}/connections/oauth", response_model=OAuthStartOut,
             responses=errors(401, 403, 404, 422))
def connect_oauth(user_id: str, body: OAuthStartIn, request: Request,
                  who: Principal = PrincipalDep) -> dict[str, Any]:
    """Start an Outlook or Google sign-in; send the browser to ``authorize_url``. After the
    provider's callback the browser is redirected to ``return_to``."""
    return start_oauth(request.app.state.settings, request.app.state.db, user_id, who,
                       provider=body.provider, return_to=body.return_to, now=_now(),
                       http=_http(request, body.provider))


@router.get("/api/users/{user_id}/calendars", response_model=CalendarRolesOut,
            tags=["calendars"], responses=errors(401, 403, 404))
def get_calendars(user_id: str, request: Request,
                  who: Principal = PrincipalDep) -> dict[str, Any]:
    """Every calendar of the user's connections with its role."""
    with request.app.state.db.read_session() as s:
        return service.list_calendars(s, user_id, who)


@router.put("/api/users/{user_id}/calendars", response_model=CalendarRolesOut,
            tags=["calendars"], responses=errors(401, 403, 404, 422))
def put_calendars(user_id: str, body: CalendarRolesIn, request: Request,
                  who: Principal = PrincipalDep) -> dict[str, Any]:
    """Choose the primary and conflict calendars; all others become ``ignored``, and a sync
    of the connections concerned is queued at once. 422 for a calendar of someone else or
    a read-only primary."""
    return service.set_calendars(request.app.state.db, user_id, who, primary=body.primary,
                                 conflict=body.conflict, now=_now())


@router.get("/api/connections/{connection_id}", response_model=ConnectionOut,
            responses=errors(401, 403, 404))
def get_connection(connection_id: str, request: Request,
                   who: Principal = PrincipalDep) -> dict[str, Any]:
    """One connection with the health of each calendar."""
    with request.app.state.db.read_session() as s:
        return service.get_connection(s, connection_id, who)


@router.post("/api/connections/{connection_id}/refresh", response_model=RefreshedOut,
             responses=errors(401, 403, 404, 409, 502, 503))
def refresh(connection_id: str, request: Request,
            who: Principal = PrincipalDep) -> dict[str, Any]:
    """Discover the connection's calendars again (new ones appear ``ignored``)."""
    with request.app.state.db.read_session() as s:
        provider = service.get_connection(s, connection_id, who)["provider"]
    return service.refresh_connection(request.app.state.settings, request.app.state.db,
                                      connection_id, who, _now(),
                                      http=_http(request, provider))


@router.post("/api/connections/{connection_id}/sync", response_model=SyncQueuedOut,
             status_code=202, responses=errors(401, 403, 404, 409))
def sync_now(connection_id: str, request: Request,
             who: Principal = PrincipalDep) -> dict[str, Any]:
    """Queue a sync of the connection now (the worker picks it up at once)."""
    return service.request_sync(request.app.state.db, connection_id, who, _now())


@router.delete("/api/connections/{connection_id}", response_model=DisconnectedOut,
               responses=errors(401, 403, 404, 409))
def disconnect(connection_id: str, request: Request,
               remove_copies: bool = Query(False, description="Also delete calsync's copies "
                                                              "of the schedule from the "
                                                              "connection's calendars"),
               who: Principal = PrincipalDep) -> dict[str, Any]:
    """Disconnect: the provider's sign-in revoked where it allows, stored secrets, calendars
    and external busy blocks deleted; calsync's copies removed first when asked."""
    with request.app.state.db.read_session() as s:
        provider = service.get_connection(s, connection_id, who)["provider"]
    return service.disconnect(request.app.state.settings, request.app.state.db,
                              connection_id, who, remove_copies=remove_copies, now=_now(),
                              http=_http(request, provider))
