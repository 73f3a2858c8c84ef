"""The Outlook connector: one mailbox through Microsoft Graph (calendars, delta pull,
idempotent writes, $batch creates, change-notification subscriptions)."""

from __future__ import annotations

import datetime as dt
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote, urlencode

from calsync.errors import (
    AlreadyExists,
    CalendarGone,
    CalsyncError,
    NotFound,
    PreconditionFailed,
    ProviderError,
    SyncTokenInvalid,
    Throttled,
)
from calsync.sync.connector import ChangeSet, OutgoingEvent, RemoteCalendar, RemoteEvent, Window
from calsync_outlook.app_only import AppTokens
from calsync_outlook.auth import TokenSource
from calsync_outlook.graph import MAX_BATCH, RETRY_STATUSES, GraphClient, GraphResponse, retry_after
from calsync_outlook.mapping import (
    EXPAND_KEY,
    SELECT_PREFER,
    key_filter,
    same_content,
    to_graph,
    to_remote,
)

log = logging.getLogger("calsync.outlook")
UTC = dt.timezone.utc
PAGE_SIZE = 100
RESYNC_CODES = {"syncstatenotfound", "resyncrequired", "syncstateinvalid"}
SUBSCRIPTION_MINUTES = 4200  # under the 4230-minute cap Graph has long applied to Outlook


def mailbox_refused(account: str, detail: str) -> str:
    """What the admin must do when the tenant's app may not open ``account``'s mailbox."""
    return (f"Microsoft 365 refused app-only access to the mailbox of {account} "
            f"(ErrorAccessDenied: {detail or 'access denied'}): the tenant's Exchange "
            f"application access policy leaves it out. An Exchange admin must add {account} "
            f"to the policy's mail-enabled security group (check with "
            f"Test-ApplicationAccessPolicy -Identity {account} -AppId <client id>), or the "
            f"user should not be synced through the tenant")


def _cal(calendar_id: str) -> str:
    return quote(calendar_id, safe="")


def _stamp(value: dt.datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class OutlookConnector:
    """Implements calsync.sync.connector.Connector (plus ``create_many`` and push)."""

    def __init__(self, graph: GraphClient, tokens: TokenSource | AppTokens, account: str,
                 owned: list[Any] | None = None, root: str = "/me") -> None:
        self.graph = graph
        self.tokens = tokens
        self.account = account
        self._owned = owned or []
        # "/me" for a user's own sign-in; "/users/{email}" for app-only (tenant) access
        self.root = root
        self.app_only = root != "/me"

    # --- helpers --------------------------------------------------------------------------

    def _fail(self, resp: GraphResponse, what: str, calendar_id: str | None = None) -> CalsyncError:
        where = f" in calendar {calendar_id!r}" if calendar_id else ""
        msg = f"Outlook {what}{where} ({self.account}): HTTP {resp.status} " \
              f"{resp.error_code()}: {resp.error_message()}"
        if resp.status in RETRY_STATUSES:  # a $batch item still throttled at the retry cap
            return Throttled(msg, retry_after=retry_after(resp.headers))
        if resp.status == 404:
            return NotFound(msg)
        if resp.status == 412:
            return PreconditionFailed(msg)
        if resp.status == 403 and self.app_only and resp.error_code() == "ErrorAccessDenied":
            return ProviderError(mailbox_refused(self.account, resp.error_message()))
        if resp.status == 403:
            return ProviderError(msg + " - the calendar is read-only or access was denied")
        return ProviderError(msg)

    # --- Connector ------------------------------------------------------------------------

    def list_calendars(self) -> list[RemoteCalendar]:
        out: list[RemoteCalendar] = []
        url: str | None = f"{self.root}/calendars?$top=100"
        while url:
            resp = self.graph.request("GET", url)
            if resp.status != 200:
                raise self._fail(resp, "listing calendars")
            # the mailbox's default calendar first (a tenant's users get it as primary)
            listed = sorted(resp.body.get("value", []),
                            key=lambda c: not c.get("isDefaultCalendar", False))
            for cal in listed:
                out.append(RemoteCalendar(id=cal["id"], name=cal.get("name") or "",
                                          read_only=not cal.get("canEdit", True),
                                          color=cal.get("hexColor") or cal.get("color")))
            url = resp.body.get("@odata.nextLink")
        return out

    def changes(self, calendar_id: str, token: str | None, window: Window) -> ChangeSet:
        if token:
            url = token
        else:
            url = (f"{self.root}/calendars/{_cal(calendar_id)}/calendarView/delta?"
                   + urlencode({"startDateTime": _stamp(window.start),
                                "endDateTime": _stamp(window.end)}))
        headers = {"Prefer": f"{SELECT_PREFER}, odata.maxpagesize={PAGE_SIZE}"}
        changed: dict[str, RemoteEvent] = {}
        deleted: dict[str, None] = {}
        before = self.graph.requests
        while True:
            resp = self.graph.request("GET", url, headers=headers)
            if resp.status == 410 or resp.error_code().lower() in RESYNC_CODES:
                raise SyncTokenInvalid(f"Outlook delta token for calendar {calendar_id!r} "
                                       f"expired ({resp.error_code() or 'HTTP 410'})")
            if resp.status == 404:
                raise CalendarGone(
                    f"Outlook calendar {calendar_id!r} of {self.account} no longer exists "
                    f"(HTTP 404 {resp.error_code() or 'ErrorItemNotFound'}): choose another "
                    "calendar for this role or remove it from the connection",
                    calendar_id=calendar_id)
            if resp.status != 200:
                raise self._fail(resp, "reading changes", calendar_id)
            for item in resp.body.get("value", []):
                item_id = str(item.get("id"))
                if "@removed" in item:
                    changed.pop(item_id, None)
                    deleted[item_id] = None
                    continue
                if item.get("type") == "seriesMaster":
                    continue  # calendarView delta lists the instances themselves
                try:
                    event = to_remote(item, window)
                except (KeyError, TypeError, ValueError):
                    log.warning("outlook: unreadable event in delta, skipped")
                    continue
                deleted.pop(item_id, None)
                changed[item_id] = event  # replays and duplicates: the last one wins
            if resp.body.get("@odata.nextLink"):
                url = resp.body["@odata.nextLink"]
                continue
            new_token = resp.body.get("@odata.deltaLink")
            break
        in_window = [e for e in changed.values() if e.occurrences]
        return ChangeSet(changed=in_window, deleted=list(deleted), token=new_token,
                         full=token is None, requests=self.graph.requests - before)

    def get(self, calendar_id: str, remote_id: str, window: Window) -> RemoteEvent | None:
        resp = self.graph.request(
            "GET", f"{self.root}/calendars/{_cal(calendar_id)}/events/{_cal(remote_id)}?"
                   + urlencode({"$expand": EXPAND_KEY}),
            headers={"Prefer": SELECT_PREFER})
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise self._fail(resp, "reading an event", calendar_id)
        return to_remote(resp.body, window)

    def find_by_key(self, calendar_id: str, key: str, window: Window) -> RemoteEvent | None:
        resp = self.graph.request(
            "GET", f"{self.root}/calendars/{_cal(calendar_id)}/events?"
                   + urlencode({"$filter": key_filter(key), "$expand": EXPAND_KEY,
                                "$top": "2"}),
            headers={"Prefer": SELECT_PREFER})
        if resp.status != 200:
            raise self._fail(resp, "finding calsync's copy", calendar_id)
        found = resp.body.get("value", [])
        return to_remote(found[0], window) if found else None

    def _created(self, resp: GraphResponse, event: OutgoingEvent,
                 calendar_id: str) -> RemoteEvent:
        if resp.status not in (200, 201):
            raise self._fail(resp, f"creating {event.key!r}", calendar_id)
        if not same_content(resp.body, event):
            # Graph deduplicated on transactionId and returned an older copy: adopt it.
            raise AlreadyExists(f"Outlook already holds calsync's copy of {event.key!r}",
                                remote_id=resp.body.get("id"), etag=resp.body.get("@odata.etag"))
        remote = to_remote(resp.body, None)
        remote.calsync_key = event.key
        return remote

    def create(self, calendar_id: str, event: OutgoingEvent) -> RemoteEvent:
        resp = self.graph.request("POST", f"{self.root}/calendars/{_cal(calendar_id)}/events",
                                  json_body=to_graph(event, create=True),
                                  headers={"Prefer": SELECT_PREFER})
        return self._created(resp, event, calendar_id)

    def create_many(self, calendar_id: str,
                    events: list[OutgoingEvent]) -> list[RemoteEvent | Exception]:
        """Create many events with JSON batching (20 per $batch, batches in parallel up to
        the mailbox's concurrency). One result per event, in order: the RemoteEvent, or the
        exception that create() would have raised for it."""
        items = [{"method": "POST", "url": f"{self.root}/calendars/{_cal(calendar_id)}/events",
                  "headers": {"Content-Type": "application/json", "Prefer": SELECT_PREFER},
                  "body": to_graph(e, create=True)} for e in events]
        chunks = [list(range(i, min(i + MAX_BATCH, len(items))))
                  for i in range(0, len(items), MAX_BATCH)]
        results: list[RemoteEvent | Exception] = [None] * len(items)  # type: ignore[list-item]

        def run(chunk: list[int]) -> None:
            try:
                answers = self.graph.batch([items[i] for i in chunk])
            except CalsyncError as exc:
                for i in chunk:
                    results[i] = exc
                return
            for i, answer in zip(chunk, answers):
                try:
                    results[i] = self._created(answer, events[i], calendar_id)
                except CalsyncError as exc:
                    results[i] = exc

        workers = max(1, min(self.graph.semaphore._initial_value, len(chunks)))  # type: ignore[attr-defined]
        if len(chunks) <= 1:
            for chunk in chunks:
                run(chunk)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(run, chunks))
        return results

    def update(self, calendar_id: str, remote_id: str, event: OutgoingEvent,
               etag: str | None) -> RemoteEvent:
        headers = {"Prefer": SELECT_PREFER}
        if etag:
            headers["If-Match"] = etag
        resp = self.graph.request("PATCH", f"{self.root}/calendars/{_cal(calendar_id)}/events/"
                                           f"{_cal(remote_id)}",
                                  json_body=to_graph(event, create=False), headers=headers)
        if resp.status != 200:
            raise self._fail(resp, f"updating {event.key!r}", calendar_id)
        remote = to_remote(resp.body, None)
        remote.calsync_key = event.key
        return remote

    def delete(self, calendar_id: str, remote_id: str, etag: str | None) -> None:
        headers = {"If-Match": etag} if etag else {}
        resp = self.graph.request("DELETE", f"{self.root}/calendars/{_cal(calendar_id)}/events/"
                                            f"{_cal(remote_id)}", headers=headers)
        if resp.status in (200, 204, 404):
            return
        raise self._fail(resp, "deleting an event", calendar_id)

    def credentials(self) -> dict[str, Any] | None:
        return self.tokens.changed_credentials()

    def close(self) -> None:
        for obj in self._owned:
            try:
                obj.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        self._owned = []

    # --- push (Graph change notifications) ------------------------------------------------

    def subscribe(self, calendar_id: str, notify_url: str,
                  secret: str) -> tuple[str, str | None, dt.datetime]:
        expires = dt.datetime.now(UTC) + dt.timedelta(minutes=SUBSCRIPTION_MINUTES)
        resp = self.graph.request("POST", "/subscriptions", json_body={
            "changeType": "created,updated,deleted", "notificationUrl": notify_url,
            "resource": f"{self.root}/calendars/{calendar_id}/events",
            "expirationDateTime": _stamp(expires), "clientState": secret,
            "latestSupportedTlsVersion": "v1_2"})
        if resp.status != 201:
            raise self._fail(resp, "subscribing to change notifications", calendar_id)
        return str(resp.body["id"]), None, _parse_expiry(resp.body, expires)

    def renew(self, remote_id: str) -> dt.datetime:
        expires = dt.datetime.now(UTC) + dt.timedelta(minutes=SUBSCRIPTION_MINUTES)
        resp = self.graph.request("PATCH", f"/subscriptions/{_cal(remote_id)}",
                                  json_body={"expirationDateTime": _stamp(expires)})
        if resp.status != 200:
            raise self._fail(resp, "renewing a change-notification subscription")
        return _parse_expiry(resp.body, expires)

    def unsubscribe(self, remote_id: str) -> None:
        resp = self.graph.request("DELETE", f"/subscriptions/{_cal(remote_id)}")
        if resp.status not in (200, 204, 404):
            raise self._fail(resp, "removing a change-notification subscription")


def _parse_expiry(body: Any, default: dt.datetime) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(str(body["expirationDateTime"]).replace("Z", "+00:00"))
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    except (KeyError, TypeError, ValueError):
        return default
