"""``POST /webhooks/{provider}``: provider push notifications.

The provider's factory turns the request into a :class:`calsync.push.PushResult` (hook
``parse_notification``). A handshake (Graph's ``?validationToken=``) is echoed as
``text/plain``. Each notice is matched to a stored :class:`PushSubscription` by provider
and remote id, and its secret (Graph ``clientState``, Google channel token) checked against
``secret_hash`` in constant time. Valid notices make their calendars' connections due now
and wake the workers (``calsync.push.mark_calendars_due``: LISTEN/NOTIFY on PostgreSQL, an
in-process signal on SQLite); the API process syncs nothing itself, so a burst of
notifications costs one row update each and the answer (202) goes out at once. When no
notice is valid the answer is 403 and nothing is marked.
The endpoint is unauthenticated, so its body is capped lower than the API's
(``[server] max_webhook_body_bytes``, enforced as it arrives by calsync.api.limits).
"""

from __future__ import annotations

import datetime as dt
import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import select

from calsync import metrics
from calsync.db.models import PushSubscription
from calsync.errors import CalsyncError, NotFound
from calsync.push import mark_calendars_due, secret_matches
from calsync.sync.connector import load_connector_factory

router = APIRouter(tags=["webhooks"])
log = logging.getLogger("calsync.webhooks")


@router.post("/webhooks/{provider}", response_model=None)
async def webhook(provider: str, request: Request) -> Response:
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
        metrics.PUSH_NOTIFICATIONS.labels(provider, "rejected").inc(rejected)
        log.warning("%s webhook: %d notification(s) with an unknown channel or a wrong "
                    "secret ignored", provider, rejected)
    if not calendars:
        return JSONResponse({"error": "forbidden",
                             "detail": "unknown subscription or wrong client state"},
                            status_code=403)
    metrics.PUSH_NOTIFICATIONS.labels(provider, "accepted").inc(len(calendars))
    mark_calendars_due(db, calendars, dt.datetime.now(dt.timezone.utc))
    return Response(status_code=202)
