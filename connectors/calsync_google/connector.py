"""GoogleConnector: one Google account through the Calendar API v3.

- ``list_calendars``: ``calendarList.list`` (accessRole reader/freeBusyReader -> read-only).
- ``changes``: ``events.list`` with ``singleEvents=True`` (recurring series arrive as
  instances); a full listing uses ``timeMin``/``timeMax``/``showDeleted``, an incremental
  one the stored ``syncToken``; pages are followed with ``pageToken`` and the last page's
  ``nextSyncToken`` kept. ``status: cancelled`` items are deletions (of an event or of one
  instance). Stored tokens carry a version prefix (``g1:``). A token stays bound to the
  ``timeMin``/``timeMax`` of the listing that started it, so the window passed to each full
  listing is used as given (the engine re-baselines once the window has slid); a calendar
  that answers 404 raises ``CalendarGone``.
- ``create``: client-chosen id (deterministic from the item key) plus
  ``extendedProperties.private.calsyncKey``; ``409`` -> AlreadyExists, except that an
  event calsync had deleted (cancelled, id still reserved by Google) is restored.
- ``update``/``delete`` send ``If-Match``; a missing event on delete is fine.
- push: ``events.watch`` / ``channels.stop`` (see :mod:`calsync_google.push`).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from typing import Any

from google.oauth2.credentials import Credentials

from calsync.errors import AlreadyExists, CalendarGone, NotFound, SyncTokenInvalid, UserError
from calsync.sync.connector import (
    ChangeSet,
    OutgoingEvent,
    Quarantined,
    RemoteCalendar,
    RemoteEvent,
    Window,
)
from calsync_google.client import (
    RequestRunner,
    SharedCredentials,
    authorized_http,
    calendar_api,
    stored_credentials,
)
from calsync_google.mapping import (
    KEY_PROPERTY,
    EventShapeError,
    event_id_for_key,
    to_body,
    to_remote,
)

TOKEN_PREFIX = "g1:"
PAGE_SIZE = 2500
READ_ONLY_ROLES = frozenset({"reader", "freeBusyReader"})


def _rfc3339(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class GoogleConnector:
    """A connected Google account. ``runner`` executes requests with this account's
    authorised http, maps errors and retries; ``api`` holds the shared google-api-python-client
    Calendar resources."""

    def __init__(self, settings: Any, account: str, creds: Credentials, http: Any,
                 runner: RequestRunner, store_credentials: bool = True,
                 more_http: Callable[[], Any] | None = None) -> None:
        self.settings = settings
        self.account = account
        self.creds = creds
        self.http = http
        self.runner = runner
        self.api = calendar_api(settings)
        # credentials kept between syncs (domain-wide delegation) come shared already
        shared = creds if isinstance(creds, SharedCredentials) else SharedCredentials(creds)
        runner.bind(authorized_http(shared, http), None if more_http is None else
                    lambda: authorized_http(shared, more_http()))
        # Up to sync.calendar_write_concurrency writes to one calendar at once, each
        # thread with its own httplib2.Http (not thread-safe); not when the caller gave
        # one Http object and no way to make more.
        self.parallel_writes = runner.threaded
        # False for domain-wide delegation: its per-user tokens are never stored
        self.store_credentials = store_credentials
        self._initial = stored_credentials(creds) if store_credentials else None
        self._calendar_tz: dict[str, str] = {}

    # --- reading ----------------------------------------------------------------------

    def list_calendars(self) -> list[RemoteCalendar]:
        out: list[RemoteCalendar] = []
        page_token = None
        while True:
            resp = self.runner.run(self.api.calendar_list.list(
                pageToken=page_token, showHidden=False), "list calendars")
            for item in resp.get("items", []):
                self._calendar_tz[item["id"]] = item.get("timeZone") or "UTC"
                out.append(RemoteCalendar(
                    id=item["id"], name=item.get("summaryOverride") or item.get("summary", ""),
                    read_only=item.get("accessRole") in READ_ONLY_ROLES,
                    color=item.get("backgroundColor")))
            page_token = resp.get("nextPageToken")
            if not page_token:
                return out

    def primary_email(self) -> str:
        resp = self.runner.run(self.api.calendars.get(calendarId="primary"),
                               "read the primary calendar")
        return str(resp["id"])

    def _tz(self, calendar_id: str, listed: str | None = None) -> str:
        if listed:
            self._calendar_tz[calendar_id] = listed
        return self._calendar_tz.get(calendar_id) or "UTC"

    def changes(self, calendar_id: str, token: str | None, window: Window) -> ChangeSet:
        full = token is None
        params: dict[str, Any] = {"calendarId": calendar_id, "singleEvents": True,
                                  "maxResults": PAGE_SIZE}
        if full:
            params.update(timeMin=_rfc3339(window.start), timeMax=_rfc3339(window.end),
                          showDeleted=True)
        else:
            assert token is not None
            if not token.startswith(TOKEN_PREFIX):
                raise SyncTokenInvalid(f"Google calendar {calendar_id}: stored sync token has "
                                       "an unknown format; full resync")
            params["syncToken"] = token[len(TOKEN_PREFIX):]
        result = ChangeSet(full=full)
        before = self.runner.requests
        page_token = None
        while True:
            try:
                resp = self.runner.run(self.api.events.list(pageToken=page_token, **params),
                                       "list events", calendar_id)
            except NotFound as exc:
                # events.list answers 404 notFound when the calendar itself is gone; a 410
                # there means the sync token expired, whatever its reason says
                if exc.context.get("status") == 410:
                    raise SyncTokenInvalid(f"Google calendar {calendar_id}: the sync token "
                                           "expired; full resync") from exc
                raise CalendarGone(
                    f"Google calendar {calendar_id!r} of {self.account} no longer exists or "
                    "is no longer shared with it (HTTP 404 notFound): choose another "
                    "calendar for this role or remove it from the connection",
                    calendar_id=calendar_id) from exc
            tz = self._tz(calendar_id, resp.get("timeZone"))
            for item in resp.get("items", []):
                if item.get("status") == "cancelled":
                    if item.get("id"):
                        result.deleted.append(item["id"])
                    continue
                try:
                    result.changed.append(to_remote(item, window, tz))
                except EventShapeError as exc:
                    result.quarantined.append(Quarantined(
                        str(item.get("id", "?")), str(exc), json.dumps(item, sort_keys=True)))
            page_token = resp.get("nextPageToken")
            if not page_token:
                sync_token = resp.get("nextSyncToken")
                result.token = TOKEN_PREFIX + sync_token if sync_token else None
                break
        result.requests = self.runner.requests - before
        return result

    def _get_raw(self, calendar_id: str, remote_id: str) -> dict[str, Any] | None:
        try:
            return dict(self.runner.run(self.api.events.get(
                calendarId=calendar_id, eventId=remote_id), "read event", calendar_id))
        except NotFound:
            return None

    def get(self, calendar_id: str, remote_id: str, window: Window) -> RemoteEvent | None:
        item = self._get_raw(calendar_id, remote_id)
        if item is None or item.get("status") == "cancelled":
            return None
        return to_remote(item, window, self._tz(calendar_id))

    def find_by_key(self, calendar_id: str, key: str, window: Window) -> RemoteEvent | None:
        found = self.get(calendar_id, event_id_for_key(key), window)
        if found is not None and found.calsync_key == key:
            return found
        resp = self.runner.run(self.api.events.list(
            calendarId=calendar_id, privateExtendedProperty=f"{KEY_PROPERTY}={key}",
            showDeleted=False, maxResults=10), "find event by key", calendar_id)
        for item in resp.get("items", []):
            if item.get("status") != "cancelled":
                return to_remote(item, window, self._tz(calendar_id, resp.get("timeZone")))
        return None

    # --- writing ----------------------------------------------------------------------

    def _written(self, calendar_id: str, item: dict[str, Any]) -> RemoteEvent:
        wide = Window(dt.datetime.min.replace(tzinfo=dt.timezone.utc),
                      dt.datetime.max.replace(tzinfo=dt.timezone.utc))
        return to_remote(item, wide, self._tz(calendar_id))

    def create(self, calendar_id: str, event: OutgoingEvent) -> RemoteEvent:
        body = to_body(event, with_id=True)
        try:
            item = self.runner.run(self.api.events.insert(
                calendarId=calendar_id, body=body, sendUpdates="none"),
                "create event", calendar_id)
        except AlreadyExists:
            existing = self._get_raw(calendar_id, body["id"])
            if existing is None or existing.get("status") != "cancelled":
                raise
            # Google keeps a deleted event's id reserved; writing it again restores it.
            item = self.runner.run(self.api.events.update(
                calendarId=calendar_id, eventId=body["id"], body=body, sendUpdates="none"),
                "restore event", calendar_id, headers={"If-Match": existing["etag"]})
        return self._written(calendar_id, item)

    def update(self, calendar_id: str, remote_id: str, event: OutgoingEvent,
               etag: str | None) -> RemoteEvent:
        body = to_body(event, with_id=False)
        item = self.runner.run(self.api.events.update(
            calendarId=calendar_id, eventId=remote_id, body=body, sendUpdates="none"),
            "update event", calendar_id, headers={"If-Match": etag} if etag else None)
        return self._written(calendar_id, item)

    def delete(self, calendar_id: str, remote_id: str, etag: str | None) -> None:
        try:
            self.runner.run(self.api.events.delete(
                calendarId=calendar_id, eventId=remote_id, sendUpdates="none"),
                "delete event", calendar_id, headers={"If-Match": etag} if etag else None)
        except NotFound:
            return

    # --- push -------------------------------------------------------------------------

    def subscribe(self, calendar_id: str, notify_url: str, secret: str,
                  ttl_seconds: int = 604800) -> tuple[str, str | None, dt.datetime]:
        """Open a watch channel; returns (channel id, resource id, expiry UTC)."""
        if not notify_url.startswith(("https://", "http://")):
            raise UserError(f"push address {notify_url!r} is not an http(s) URL")
        channel_id = str(uuid.uuid4())
        resp = self.runner.run(self.api.events.watch(calendarId=calendar_id, body={
            "id": channel_id, "type": "web_hook", "address": notify_url, "token": secret,
            "params": {"ttl": str(ttl_seconds)}}), "open push channel", calendar_id)
        expires = dt.datetime.fromtimestamp(int(resp["expiration"]) / 1000, dt.timezone.utc)
        return str(resp["id"]), resp.get("resourceId"), expires

    def unsubscribe(self, remote_id: str, resource_id: str | None) -> None:
        try:
            self.runner.run(self.api.channels.stop(body={
                "id": remote_id, "resourceId": resource_id}), "stop push channel")
        except NotFound:
            return

    # --- credentials --------------------------------------------------------------------

    def credentials(self) -> dict[str, Any] | None:
        if not self.store_credentials:
            return None
        current = stored_credentials(self.creds)
        if current == self._initial:
            return None
        self._initial = current
        return current

    def close(self) -> None:
        others = [getattr(h, "http", None) for h in self.runner.made]
        for http in [self.http, *others]:
            for conn in list(getattr(http, "connections", {}).values()):
                try:
                    conn.close()
                except OSError:
                    pass
