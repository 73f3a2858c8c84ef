"""Platform endpoints: upserts of users, jobs, time off, blocks; feed link management;
API token listing and revocation; health and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Request, Response
from fastapi.responses import PlainTextResponse
from sqlalchemy import select

from calsync.api.auth import Principal, PrincipalDep, list_api_tokens, revoke_api_token
from calsync.api.schemas import TokenOut, TokensOut, UserOut, UserPatch, errors
from calsync.audit import audit
from calsync.db.models import User, utcnow
from calsync.errors import NotFound, ValidationError
from calsync.feeds.links import feed_url, issue_feed, revoke_feed
from calsync.schedule.records import PARSERS, parse_user
from calsync.schedule.store import upsert_item, upsert_user
from calsync.selfservice.users import patch_user as patch_user_fields
from calsync.selfservice.users import user_view

router = APIRouter()

_ITEM_PATHS = {"jobs": "job", "time-off": "time_off", "blocks": "block"}


def _body_id(body: Any, path_id: str, record: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationError(record, "*", "expected a JSON object")
    if "id" in body and body["id"] != path_id:
        raise ValidationError(record, "id", f"{body['id']!r} does not match the URL id")
    return {**body, "id": path_id}


@router.put("/api/users/{user_id}", tags=["schedule"])
def put_user(user_id: str, request: Request, response: Response,
             body: Any = Body(...), who: Principal = PrincipalDep) -> dict[str, Any]:
    who.require("admin")
    rec = parse_user(_body_id(body, user_id, f"user (id={user_id!r})"), f"user (id={user_id!r})")
    with request.app.state.db.session() as s:
        outcome = upsert_user(s, rec, who.actor)
    response.status_code = 201 if outcome == "created" else 200
    return {"id": user_id, "result": outcome}


@router.delete("/api/users/{user_id}", tags=["schedule"])
def delete_user(user_id: str, request: Request, who: Principal = PrincipalDep) -> dict[str, Any]:
    who.require("admin")
    rec = parse_user({"id": user_id, "deleted": True})
    with request.app.state.db.session() as s:
        outcome = upsert_user(s, rec, who.actor)
    if outcome == "missing":
        raise NotFound(f"user {user_id!r} not found")
    return {"id": user_id, "result": outcome}


def _item_routes(path: str, kind: str) -> None:
    record = kind.replace("_", " ")

    def put_item(item_id: str, request: Request, response: Response,
                 body: Any = Body(...), who: Principal = PrincipalDep) -> dict[str, Any]:
        who.require("admin")
        name = f"{record} (id={item_id!r})"
        rec = PARSERS[kind](_body_id(body, item_id, name), name)
        with request.app.state.db.session() as s:
            outcome = upsert_item(s, rec, who.actor, record=name)
        if outcome == "missing":
            raise NotFound(f"{record} {item_id!r} not found")
        response.status_code = 201 if outcome == "created" else 200
        return {"id": item_id, "result": outcome}

    def delete(item_id: str, request: Request, who: Principal = PrincipalDep) -> dict[str, Any]:
        who.require("admin")
        rec = PARSERS[kind]({"id": item_id, "deleted": True})
        with request.app.state.db.session() as s:
            outcome = upsert_item(s, rec, who.actor)
        if outcome == "missing":
            raise NotFound(f"{record} {item_id!r} not found")
        return {"id": item_id, "result": outcome}

    router.add_api_route(f"/api/{path}/{{item_id}}", put_item, methods=["PUT"],
                         tags=["schedule"], name=f"put_{kind}")
    router.add_api_route(f"/api/{path}/{{item_id}}", delete, methods=["DELETE"],
                         tags=["schedule"], name=f"delete_{kind}")


for _path, _kind in _ITEM_PATHS.items():
    _item_routes(_path, _kind)


def _user_or_404(s: Any, user_id: str) -> User:
    user: User | None = s.get(User, user_id)
    if user is None or user.deleted_at is not None:
        raise NotFound(f"user {user_id!r} not found")
    return user


@router.post("/api/users/{user_id}/feed", tags=["feeds"])
def post_feed(user_id: str, request: Request, who: Principal = PrincipalDep) -> dict[str, Any]:
    who.require_user_access(user_id, write=True)
    with request.app.state.db.session() as s:
        user = _user_or_404(s, user_id)
        regenerated = user.feed_enabled
        issue_feed(user)
        audit(s, who.actor, "feed.regenerate" if regenerated else "feed.issue", "user", user_id)
        return {"user_id": user_id, "url": feed_url(request.app.state.settings, user)}


@router.delete("/api/users/{user_id}/feed", tags=["feeds"])
def delete_feed(user_id: str, request: Request, who: Principal = PrincipalDep) -> dict[str, Any]:
    who.require_user_access(user_id, write=True)
    with request.app.state.db.session() as s:
        user = _user_or_404(s, user_id)
        revoke_feed(user)
        audit(s, who.actor, "feed.revoke", "user", user_id)
    return {"user_id": user_id, "revoked": True}


@router.get("/api/users/{user_id}", tags=["schedule"], response_model=UserOut,
            responses=errors(401, 403, 404))
def get_user(user_id: str, request: Request, who: Principal = PrincipalDep) -> dict[str, Any]:
    who.require_user_access(user_id)
    with request.app.state.db.session() as s:
        return user_view(_user_or_404(s, user_id))


@router.patch("/api/users/{user_id}", tags=["schedule"], response_model=UserOut,
              responses=errors(401, 403, 404, 422))
def patch_user(user_id: str, body: UserPatch, request: Request,
               who: Principal = PrincipalDep) -> dict[str, Any]:
    """Change some fields of a user. A ``user`` token may change its own ``timezone``,
    ``working_hours`` and ``private_mode``; an admin any field of anyone; unknown fields
    are refused with 422 naming the field."""
    with request.app.state.db.session() as s:
        return patch_user_fields(s, user_id, who, body.model_dump(exclude_unset=True), utcnow())


@router.get("/api/tokens", tags=["tokens"], response_model=TokensOut,
            responses=errors(401, 403))
def get_tokens(request: Request, who: Principal = PrincipalDep) -> dict[str, Any]:
    """Every API token with id, name, role, user, prefix and dates (never the token)."""
    who.require("admin")
    with request.app.state.db.read_session() as s:
        return {"tokens": list_api_tokens(s)}


@router.delete("/api/tokens/{token_id}", tags=["tokens"], response_model=TokenOut,
               responses=errors(401, 403, 404))
def delete_token(token_id: int, request: Request,
                 who: Principal = PrincipalDep) -> dict[str, Any]:
    """Revoke a token: the next request that carries it gets 401."""
    who.require("admin")
    with request.app.state.db.session() as s:
        row = revoke_api_token(s, token_id, utcnow())
        audit(s, who.actor, "token.revoke", "api_token", str(token_id), {"name": row["name"]})
    return row


@router.get("/healthz", tags=["ops"])
def healthz(request: Request) -> dict[str, Any]:
    with request.app.state.db.session() as s:
        s.execute(select(1))
    return {"status": "ok"}


@router.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
def metrics(request: Request) -> Response:
    """Prometheus text exposition (calsync.metrics): counters of this process plus gauges
    read from the database."""
    from calsync import metrics as process_metrics

    body = process_metrics.render(request.app.state.db, utcnow())
    return Response(body, media_type=process_metrics.CONTENT_TYPE)
