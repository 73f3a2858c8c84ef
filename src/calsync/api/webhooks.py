"""``POST /webhooks/{provider}``: provider push notifications.

The provider's factory turns the request into a :class:`calsync.push.PushResult` (hook
``parse_notification``). A handshake (Graph's ``?validationToken=``) is echoed as
``text/plain``. Each notice is matched to a stored :class:`PushSubscription` by provider
and remote id, and its secret (Graph ``clientState``, Google channel token) checked against
``secret_hash`` in constant time. Valid notices schedule an immediate sync of their
calendar (``calsync.sync.runner.sync_calendar_now``) in a background task, so the answer
(202) goes out at once; when no notice is valid the answer is 403 and nothing is synced.
The endpoint is unauthenticated, so its body is capped lower than the API's
(``[server] max_webhook_body_bytes``, enforced as it arrives by calsync.api.limits).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import select

from calsync.db.models import PushSubscription
from calsync.errors import CalsyncError, NotFound
from calsync.push import secret_matches
from calsync.sync.connector import load_connector_factory

router = APIRouter(tags=["webhooks"])
log = logging.getLogger("calsync.webhooks")


def _sync_later(settings: Any, db: Any, calendar_ids: list[int]) -> None:
    from calsync.sync.runner import sync_calendar_now

    for calendar_id in calendar_ids:
        try:
            sync_calendar_now(settings, db, calendar_id, dt.datetime.now(dt.timezone.utc))
        except CalsyncError as exc:
            log.warning("push-triggered sync of calendar %s failed: %s", calendar_id,
                        exc.message)


@router.post("/webhooks/{provider}", response_model=None)
async def webhook(provider: str, request: Request,
                  background: BackgroundTasks) -> Response:
    try:
        factory = load_connector_factory(provider)
    except CalsyncError:
        raise NotFound(f"no webhook for provider {provider!r}") from None
    parse = getattr(factory, "parse_notification", None)
    if parse is None:
        raise NotFound(f"the {provider} connector does not take push notifications")
    body = await request.body()
    result = parse(dict(request.headers), dict(request.query_params), body)
    if result.reply_text is not None:
        return PlainTextResponse(result.reply_text, status_code=result.reply_status)
    if not result.notices:
        return Response(status_code=202)  # e.g. a channel's first "sync" message
    db = request.app.state.db
    calendars: list[int] = []
    rejected = 0
    with db.session() as s:
        for notice in result.notices:
            sub = s.scalar(select(PushSubscription).where(
                PushSubscription.provider == provider,
                PushSubscription.remote_id == notice.subscription_id))
            ok = sub is not None and secret_matches(notice.secret, sub.secret_hash)
            if sub is not None and ok and notice.resource_id and sub.resource_id and \
                    notice.resource_id != sub.resource_id:
                ok = False
            if not ok:
                rejected += 1
                continue
            assert sub is not None
            if sub.calendar_id not in calendars:
                calendars.append(sub.calendar_id)
    if rejected:
        log.warning("%s webhook: %d notification(s) with an unknown channel or a wrong "
                    "secret ignored", provider, rejected)
    if not calendars:
        return JSONResponse({"error": "forbidden",
                             "detail": "unknown subscription or wrong client state"},
                            status_code=403)
    background.add_task(_sync_later, request.app.state.settings, db, calendars)
    return Response(status_code=202)
