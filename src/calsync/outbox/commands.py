"""The ``calsync webhooks`` CLI: ``list``, ``add``, ``remove``, ``enable``, ``test``,
``deliveries``, ``prune``. ``cli.py`` calls :func:`register` with the root group."""

from __future__ import annotations

import datetime as dt
from typing import Any

import click
from sqlalchemy import select

from calsync.audit import audit
from calsync.db.models import WebhookDelivery
from calsync.outbox.endpoints import (
    create_endpoint,
    delete_endpoint,
    enable_endpoint,
    get_endpoint,
    list_endpoints,
    parse_endpoint,
    recent_deliveries,
    send_test_event,
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _health_line(ep: dict[str, Any]) -> str:
    h = ep["health"]
    state = f"DISABLED ({h['disabled_reason']})" if h["disabled"] else "enabled"
    failing = f"  failing since {h['failing_since']}" if h.get("failing_since") else ""
    return (f"{ep['id']}  {ep['url']}  events {','.join(ep['events'])}  {state}  "
            f"last success {h['last_success_at'] or 'never'}  "
            f"failures in a row {h['failures_in_a_row']}{failing}  pending {h['pending']}")


def register(cli: click.Group) -> None:
    from calsync.cli import AppContext, emit, pass_app

    @cli.group()
    def webhooks() -> None:
        """Webhook endpoints of the platform (signed events, DESIGN 4.7)."""

    @webhooks.command("list")
    @click.option("--json", "as_json", is_flag=True)
    @pass_app
    def list_cmd(app: AppContext, as_json: bool) -> None:
        """Each endpoint with its health: last success, failures in a row, disabled."""
        with app.migrated_db().read_session() as s:
            rows = list_endpoints(s)
        emit(rows, as_json, "\n".join(_health_line(r) for r in rows) or "no webhook endpoints")

    @webhooks.command("add")
    @click.argument("url")
    @click.option("--events", default="*", show_default=True,
                  help="Comma-separated event types, or * for all.")
    @click.option("--description", default="")
    @click.option("--json", "as_json", is_flag=True)
    @pass_app
    def add_cmd(app: AppContext, url: str, events: str, description: str,
                as_json: bool) -> None:
        """Register URL; prints the endpoint id and its signing secret (shown only now)."""
        raw = {"url": url, "events": [e.strip() for e in events.split(",") if e.strip()],
               "description": description}
        parsed_url, parsed_events, parsed_description = parse_endpoint(raw, "--events/URL")
        with app.migrated_db().session() as s:
            endpoint, secret = create_endpoint(s, app.settings, parsed_url, parsed_events,
                                               parsed_description, _now())
            audit(s, "cli", "webhook_endpoint.create", "webhook_endpoint",
                  endpoint.public_id, {"url": parsed_url, "events": parsed_events})
            public_id = endpoint.public_id
        emit({"id": public_id, "secret": secret}, as_json,
             f"endpoint {public_id}\nsecret {secret}\n(the secret is shown only now; "
             f"verify deliveries with it, e.g. with the standardwebhooks library)")

    @webhooks.command("remove")
    @click.argument("endpoint_id", metavar="ID")
    @pass_app
    def remove_cmd(app: AppContext, endpoint_id: str) -> None:
        """Remove the endpoint ID (from `calsync webhooks list`)."""
        with app.migrated_db().session() as s:
            delete_endpoint(s, endpoint_id)
            audit(s, "cli", "webhook_endpoint.delete", "webhook_endpoint", endpoint_id)
        click.echo(f"endpoint {endpoint_id} removed")

    @webhooks.command("enable")
    @click.argument("endpoint_id", metavar="ID")
    @pass_app
    def enable_cmd(app: AppContext, endpoint_id: str) -> None:
        """Deliver to the disabled endpoint ID again (once its receiver is fixed): the
        events from now on; those cancelled while it was disabled are not sent."""
        with app.migrated_db().session() as s:
            changed = enable_endpoint(s, get_endpoint(s, endpoint_id))
            if changed:
                audit(s, "cli", "webhook_endpoint.enable", "webhook_endpoint", endpoint_id)
        click.echo(f"endpoint {endpoint_id} enabled: new events are delivered to it again"
                   if changed else f"endpoint {endpoint_id} was enabled already")

    @webhooks.command("prune")
    @click.option("--json", "as_json", is_flag=True)
    @pass_app
    def prune_cmd(app: AppContext, as_json: bool) -> None:
        """Delete events older than webhooks.retention_days whose deliveries are settled,
        with their deliveries and attempts (the worker does this daily)."""
        from calsync.outbox.retention import prune

        days = app.settings.webhooks.retention_days
        result = prune(app.migrated_db(), days, _now())
        emit({**result.as_dict(), "retention_days": days}, as_json,
             f"removed {result.events} events, {result.deliveries} deliveries and "
             f"{result.attempts} attempts older than {days} days "
             f"(events up to number {result.horizon.pruned_through} are gone)")

    @webhooks.command("test")
    @click.argument("endpoint_id", metavar="ID")
    @click.option("--no-wait", is_flag=True, help="Queue it for the worker and return.")
    @click.option("--json", "as_json", is_flag=True)
    @pass_app
    def test_cmd(app: AppContext, endpoint_id: str, no_wait: bool, as_json: bool) -> None:
        """Send a webhook.test event to ID and print the receiver's answer."""
        from calsync.outbox.delivery import Deliverer

        db = app.migrated_db()
        with db.session() as s:
            event = send_test_event(s, endpoint_id, _now())
            event_pk, message_id = event.id, event.public_id
        if no_wait:
            emit({"event_id": message_id, "queued": True}, as_json,
                 f"test event {message_id} queued")
            return
        deliverer = Deliverer(app.settings, db, threads=2)
        try:
            deliverer.run_until_idle(timeout=app.settings.webhooks.timeout_seconds + 10)
        except TimeoutError:
            pass
        finally:
            deliverer.close()
        with db.read_session() as s:
            endpoint = get_endpoint(s, endpoint_id)
            row = s.execute(select(WebhookDelivery.status, WebhookDelivery.last_status_code,
                                   WebhookDelivery.last_error).where(
                WebhookDelivery.event_id == event_pk,
                WebhookDelivery.endpoint_id == endpoint.id)).first()
        result = {"event_id": message_id, "status": row.status if row else "unknown",
                  "status_code": row.last_status_code if row else None,
                  "error": row.last_error if row else None}
        line = (f"test event {message_id}: {result['status']}"
                + (f" (HTTP {result['status_code']})" if result["status_code"] else "")
                + (f": {result['error']}" if result["error"] else ""))
        if result["status"] != "delivered":
            if as_json:
                emit(result, True)
            click.echo(f"calsync: {line} (the worker retries it; see `calsync webhooks "
                       f"deliveries {endpoint_id}`)", err=True)
            raise SystemExit(1)
        emit(result, as_json, line)

    @webhooks.command("deliveries")
    @click.argument("endpoint_id", metavar="ID")
    @click.option("--limit", type=int, default=20, show_default=True)
    @click.option("--json", "as_json", is_flag=True)
    @pass_app
    def deliveries_cmd(app: AppContext, endpoint_id: str, limit: int, as_json: bool) -> None:
        """Recent deliveries of ID with their status codes."""
        with app.migrated_db().read_session() as s:
            rows = recent_deliveries(s, endpoint_id, max(1, min(limit, 500)))
        lines = [f"{r['event_id']}  {r['type']}  {r['status']}  attempts {r['attempts']}  "
                 f"codes {','.join(str(a['status_code'] or '-') for a in r['attempt_log'])}"
                 for r in rows]
        emit(rows, as_json, "\n".join(lines) or "no deliveries yet")
