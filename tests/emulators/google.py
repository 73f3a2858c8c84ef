"""A loopback emulator of Google's OAuth 2.0 endpoints and the Calendar API v3.

It runs an ``http.server`` (HTTP/1.1, keep-alive) on 127.0.0.1 and a free port, in a
daemon thread, and follows the documented behaviour calsync relies on:

OAuth 2.0 (developers.google.com/identity/protocols/oauth2):
- device flow ("OAuth 2.0 for TV and Limited-Input Device Applications"): ``POST
  /device/code`` answers ``device_code``, ``user_code``, ``verification_url``,
  ``expires_in``, ``interval``; polling ``POST /token`` with ``grant_type=
  urn:ietf:params:oauth:grant-type:device_code`` answers ``authorization_pending`` (428)
  until the user approves, ``slow_down`` (403) when polled too fast (test knob),
  ``access_denied`` (403), ``expired_token`` (400); a scope outside the device flow's
  allowlist gives ``400 invalid_scope`` "Invalid device flow scope" (knob ``device_scopes``);
- web server flow with PKCE: ``GET /o/oauth2/v2/auth`` (``code_challenge_method=S256``,
  ``access_type=offline``) redirects to ``redirect_uri?code=…&state=…`` as if the user
  consented; ``grant_type=authorization_code`` checks the code (one use), the redirect
  URI and ``code_verifier`` against the challenge, else ``invalid_grant``;
- ``grant_type=refresh_token``; a revoked refresh token (``POST /revoke``) answers
  ``400 invalid_grant`` ("Token has been expired or revoked."); expired or revoked access
  tokens get ``401`` from the API.

- service accounts with domain-wide delegation ("Using OAuth 2.0 for Server to Server
  Applications", "Delegating domain-wide authority"): :meth:`add_service_account` makes a
  key file (RSA key, ``token_uri`` here); ``grant_type=urn:ietf:params:oauth:grant-type:
  jwt-bearer`` with an RS256 ``assertion`` (``iss`` the service account, ``scope``, ``aud``
  ``https://oauth2.googleapis.com/token``, ``exp`` at most an hour after ``iat``, ``sub``
  the user impersonated) answers an access token for ``sub`` (no refresh token); a bad
  signature -> 400 ``invalid_grant`` "Invalid JWT Signature."; a client the Workspace
  admin did not authorise for the scope (:meth:`delegate`) -> 401 ``unauthorized_client``;
  a subject outside the delegated domain or unknown -> 400 ``invalid_grant`` "Invalid email
  or User ID".

Calendar API v3 (developers.google.com/calendar/api/v3/reference), under ``/calendar/v3``:
- ``calendarList.list``, ``calendars.get`` (``primary`` is the account's own calendar,
  whose id is the e-mail address);
- ``events.list`` with ``timeMin``/``timeMax``, ``showDeleted``, ``singleEvents``
  (recurring series expanded to instances ``{id}_{YYYYMMDDTHHMMSSZ}`` with
  ``recurringEventId``/``originalStartTime``, modified and cancelled exceptions),
  ``privateExtendedProperty``, ``maxResults``/``pageToken``/``nextPageToken``,
  ``syncToken``/``nextSyncToken`` ("Synchronize resources efficiently": incremental
  results include deleted events as ``status: cancelled``; a token from a listing with
  ``timeMin``/``timeMax`` stays bound to that range: incremental results hold only what
  lies inside it, plus changes to events the client had seen inside it (moved out, or
  deleted); the parameters that may not
  be combined with a sync token give 400; an expired token gives ``410`` with reason
  ``fullSyncRequired``; a page may be short or empty and still carry ``nextPageToken``);
- ``events.get``/``insert``/``update``/``patch``/``delete`` with ETags and ``If-Match``
  (``412 conditionNotMet``), client-chosen ids (base32hex ``[a-v0-9]``, 5-1024 chars;
  ``409 duplicate`` when the id exists, also after deletion; updating a cancelled event
  restores it), ``extendedProperties``; deleting an already deleted event gives ``410``,
  an unknown one ``404``;
- ``calendars.delete`` of a secondary calendar (and :meth:`remove_calendar`): every later
  request naming it, an ``events.list`` with a sync token included, answers ``404
  notFound`` (``410`` stays reserved for an expired sync token);
- ``events.watch`` and ``channels.stop`` ("Push notifications"): a ``sync`` message when
  the channel opens, then ``exists`` on every change, with the headers
  ``X-Goog-Channel-ID``, ``X-Goog-Channel-Token``, ``X-Goog-Resource-ID``,
  ``X-Goog-Resource-State``, ``X-Goog-Resource-URI``, ``X-Goog-Message-Number``,
  ``X-Goog-Channel-Expiration``. Unlike Google, plain-HTTP loopback addresses are allowed.
- errors in Google's JSON shape ``{"error": {"code", "message", "errors": [{"reason"}]}}``;
  test knobs inject ``429``, ``403 rateLimitExceeded``/``userRateLimitExceeded`` (with or
  without ``Retry-After``) and ``5xx`` on the next API requests.

Test-side helpers act as "the user editing in Google Calendar": :meth:`put_event`,
:meth:`remove_event`, :meth:`cancel_instance`, :meth:`modify_instance`.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import itertools
import json
import re
import secrets
import threading
import time
import urllib.request
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlparse
from zoneinfo import ZoneInfo

from dateutil.rrule import rrulestr

UTC = dt.timezone.utc
EVENT_ID = re.compile(r"^[a-v0-9]{5,1024}$")
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
MAX_INSTANCES = 1000


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.status, "message": self.message,
                          "errors": [{"domain": "global", "reason": self.reason,
                                      "message": self.message}]}}


class OAuthError(Exception):
    def __init__(self, status: int, error: str, description: str = "") -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.description = description


@dataclass
class CalendarState:
    id: str
    summary: str
    timezone: str
    roles: dict[str, str]  # account e-mail -> owner|writer|reader|freeBusyReader
    events: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Failure:
    status: int
    reason: str
    retry_after: str | None = None


def _rfc3339(value: dt.datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _parse_time(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"time without offset: {value}")
    return parsed


class GoogleEmulator:
    """State plus the HTTP server. Use as a context manager, or ``start()``/``stop()``."""

    def __init__(self, client_id: str = "calsync-test.apps.example",
                 client_secret: str = "calsync-test-secret",
                 access_token_lifetime: int = 3600) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.access_token_lifetime = access_token_lifetime
        self.lock = threading.RLock()
        self.accounts: dict[str, list[str]] = {}
        self.calendars: dict[str, CalendarState] = {}
        self.access_tokens: dict[str, tuple[str, float, str]] = {}  # token -> email, exp, rt
        self.refresh_tokens: dict[str, str] = {}
        self.device_codes: dict[str, dict[str, Any]] = {}
        self.auth_codes: dict[str, dict[str, Any]] = {}
        self.sync_tokens: dict[str, dict[str, Any]] = {}
        self.page_tokens: dict[str, dict[str, Any]] = {}
        self.channels: dict[str, dict[str, Any]] = {}
        self.failures: deque[Failure] = deque()
        self.seq = itertools.count(1)
        self.last_seq = 0
        self.page_sizes: list[int] | None = None  # knob: page size pattern, cycled
        self.device_slow_down = 0  # knob: answer slow_down this many times first
        self.device_interval = 5  # knob: the polling interval the device endpoint gives
        self.device_auto_approve: str | None = None  # knob: this account approves at once
        # knob: the device flow's scope allowlist (Google keeps a short one); None = any
        self.device_scopes: set[str] | None = None
        self.login_email: str | None = None  # who "consents" at the authorization endpoint
        self.counts: Counter[str] = Counter()
        self.requests: list[tuple[str, str]] = []
        self.outbox: list[dict[str, Any]] = []
        self.auto_deliver = True
        # domain-wide delegation: service accounts, the admin's authorisations, the domain
        self.service_accounts: dict[str, dict[str, Any]] = {}  # client_email -> entry
        self.delegations: dict[str, set[str]] = {}  # service account client_id -> scopes
        self.workspace_domains: set[str] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> GoogleEmulator:
        emulator = self

        class Handler(_Handler):
            pass

        Handler.emulator = emulator
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> GoogleEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def root(self) -> str:
        assert self._server is not None, "emulator not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def settings_values(self) -> dict[str, str]:
        """The ``[google]`` settings that point calsync at this emulator."""
        return {"client_id": self.client_id, "client_secret": self.client_secret,
                "token_uri": f"{self.root}/token", "auth_uri": f"{self.root}/o/oauth2/v2/auth",
                "device_auth_uri": f"{self.root}/device/code", "api_root": f"{self.root}/"}

    # --- test-side set-up -------------------------------------------------------------

    def add_account(self, email: str, timezone: str = "America/Chicago") -> str:
        with self.lock:
            self.accounts.setdefault(email, [])
            if email not in self.calendars:
                self.calendars[email] = CalendarState(email, email, timezone, {email: "owner"})
                self.accounts[email].insert(0, email)
        return email

    def add_calendar(self, email: str, calendar_id: str, summary: str, role: str = "owner",
                     timezone: str = "America/Chicago") -> str:
        with self.lock:
            self.add_account(email)
            cal = self.calendars.get(calendar_id)
            if cal is None:
                cal = self.calendars[calendar_id] = CalendarState(calendar_id, summary,
                                                                  timezone, {})
            cal.roles[email] = role
            if calendar_id not in self.accounts[email]:
                self.accounts[email].append(calendar_id)
        return calendar_id

    def grant(self, email: str) -> dict[str, Any]:
        """Tokens as if ``email`` had signed in (refresh token + access token)."""
        with self.lock:
            refresh = "1//" + secrets.token_urlsafe(24)
            self.refresh_tokens[refresh] = email
            return self._issue(email, refresh, include_refresh=True)

    def revoke(self, token: str) -> None:
        with self.lock:
            self._revoke(token)

    def expire_access_tokens(self) -> None:
        with self.lock:
            for tok, (email, _exp, rt) in list(self.access_tokens.items()):
                self.access_tokens[tok] = (email, 0.0, rt)

    def invalidate_sync_tokens(self) -> None:
        with self.lock:
            self.sync_tokens.clear()

    def fail_next(self, status: int, reason: str = "", retry_after: str | None = None,
                  count: int = 1) -> None:
        with self.lock:
            for _ in range(count):
                self.failures.append(Failure(status, reason, retry_after))

    def remove_calendar(self, calendar_id: str) -> None:
        """Delete a secondary calendar and its events, as its owner would in Google Calendar
        (test helper; the same as ``calendars.delete``)."""
        with self.lock:
            self._delete_calendar(calendar_id)

    def _delete_calendar(self, calendar_id: str) -> None:
        self.calendars.pop(calendar_id, None)
        for listed in self.accounts.values():
            if calendar_id in listed:
                listed.remove(calendar_id)
        # its sync and page tokens stay in the tables, but every request naming the
        # calendar now answers 404 notFound (a gone calendar, not an expired token)

    def put_busy(self, calendar_id: str, start: dt.datetime, end: dt.datetime,
                 summary: str = "Busy") -> dict[str, Any]:
        """An external timed event at the instants given (test helper, e.g. for a date that
        only a later sync window reaches)."""
        return self.put_event(calendar_id, {
            "summary": summary, "start": {"dateTime": start.isoformat()},
            "end": {"dateTime": end.isoformat()}})

    def approve_device(self, user_code: str, email: str) -> None:
        with self.lock:
            for entry in self.device_codes.values():
                if entry["user_code"] == user_code:
                    entry["email"] = email
                    return
        raise KeyError(user_code)

    def deny_device(self, user_code: str) -> None:
        with self.lock:
            for entry in self.device_codes.values():
                if entry["user_code"] == user_code:
                    entry["denied"] = True

    def put_event(self, calendar_id: str, resource: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an event as the user would in Google Calendar."""
        with self.lock:
            cal = self.calendars[calendar_id]
            res = copy.deepcopy(resource)
            res.setdefault("id", self._new_id())
            res.setdefault("status", "confirmed")
            existing = cal.events.get(res["id"])
            if existing and "_exceptions" in existing and "_exceptions" not in res:
                res["_exceptions"] = existing["_exceptions"]
            self._stamp(cal, res, created=existing is None)
            cal.events[res["id"]] = res
            stored = self._public(res)
        self._deliver_pending()
        return stored

    def remove_event(self, calendar_id: str, event_id: str) -> None:
        with self.lock:
            cal = self.calendars[calendar_id]
            ev = cal.events[event_id]
            ev["status"] = "cancelled"
            self._stamp(cal, ev)
        self._deliver_pending()

    def cancel_instance(self, calendar_id: str, event_id: str, original_start: str) -> str:
        return self.modify_instance(calendar_id, event_id, original_start,
                                    {"status": "cancelled"})

    def modify_instance(self, calendar_id: str, event_id: str, original_start: str,
                        changes: dict[str, Any]) -> str:
        """Override one instance (``original_start`` as in the instance's
        ``originalStartTime``); returns the instance id."""
        with self.lock:
            cal = self.calendars[calendar_id]
            ev = cal.events[event_id]
            instance_id = self._instance_id(ev, original_start)
            ev.setdefault("_exceptions", {})[instance_id] = copy.deepcopy(changes)
            self._stamp(cal, ev)
        self._deliver_pending()
        return instance_id

    def events(self, calendar_id: str) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {k: self._public(v) for k, v in self.calendars[calendar_id].events.items()}

    # --- internals: state -------------------------------------------------------------

    def _new_id(self) -> str:
        return base64.b32hexencode(secrets.token_bytes(15)).decode().lower()

    def _stamp(self, cal: CalendarState, ev: dict[str, Any], created: bool = False) -> None:
        seq = next(self.seq)
        self.last_seq = seq
        now = dt.datetime.now(UTC)
        ev["_seq"] = seq
        ev["etag"] = f'"{3181160000000000 + seq}"'
        ev["kind"] = "calendar#event"
        ev["updated"] = _rfc3339(now)
        if created or "created" not in ev:
            ev["created"] = _rfc3339(now)
        ev.setdefault("iCalUID", f"{ev['id']}@google.com")
        ev["sequence"] = int(ev.get("sequence", 0))
        self._queue_notifications(cal.id)

    def _issue(self, email: str, refresh: str, include_refresh: bool = False) -> dict[str, Any]:
        token = "ya29." + secrets.token_urlsafe(24)
        self.access_tokens[token] = (email, time.time() + self.access_token_lifetime, refresh)
        out: dict[str, Any] = {"access_token": token, "expires_in": self.access_token_lifetime,
                               "scope": "https://www.googleapis.com/auth/calendar",
                               "token_type": "Bearer"}
        if include_refresh:
            out["refresh_token"] = refresh
        return out

    def _revoke(self, token: str) -> bool:
        if token in self.refresh_tokens:
            del self.refresh_tokens[token]
            for tok, (_e, _x, rt) in list(self.access_tokens.items()):
                if rt == token:
                    del self.access_tokens[tok]
            return True
        if token in self.access_tokens:
            del self.access_tokens[token]
            return True
        return False

    def _public(self, ev: dict[str, Any]) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in ev.items() if not k.startswith("_")}

    # --- internals: time and recurrence ---------------------------------------------------

    def _span(self, cal: CalendarState, ev: dict[str, Any]) -> tuple[dt.datetime, dt.datetime]:
        return self._when(cal, ev["start"]), self._when(cal, ev["end"])

    def _when(self, cal: CalendarState, value: dict[str, Any]) -> dt.datetime:
        if "date" in value:
            day = dt.date.fromisoformat(value["date"])
            return dt.datetime.combine(day, dt.time(), ZoneInfo(cal.timezone))
        return _parse_time(value["dateTime"])

    def _instance_id(self, ev: dict[str, Any], original_start: str) -> str:
        if "T" not in original_start:
            return f"{ev['id']}_{original_start.replace('-', '')}"
        start = _parse_time(original_start).astimezone(UTC)
        return f"{ev['id']}_{start:%Y%m%dT%H%M%SZ}"

    def _expand(self, cal: CalendarState, ev: dict[str, Any],
                window: tuple[dt.datetime, dt.datetime] | None,
                show_deleted: bool) -> list[dict[str, Any]]:
        """``ev`` as single events: itself, or the instances of its series in ``window``."""
        if not ev.get("recurrence"):
            return [self._public(ev)]
        lo, hi = window or (dt.datetime(1970, 1, 1, tzinfo=UTC),
                            dt.datetime(2100, 1, 1, tzinfo=UTC))
        all_day = "date" in ev["start"]
        tz = ZoneInfo(ev["start"].get("timeZone") or cal.timezone)
        start, end = self._span(cal, ev)
        duration = end - start
        rules = "\n".join(r for r in ev["recurrence"] if not r.startswith("EXDATE")
                          and not r.startswith("RDATE"))
        if all_day:
            dtstart = dt.datetime.combine(dt.date.fromisoformat(ev["start"]["date"]), dt.time())
            lo_l, hi_l = (lo.astimezone(tz).replace(tzinfo=None),
                          hi.astimezone(tz).replace(tzinfo=None))
            starts = rrulestr(rules, dtstart=dtstart, forceset=True).between(
                lo_l - dt.timedelta(days=1), hi_l, inc=True)
        else:
            dtstart = start.astimezone(tz)
            starts = rrulestr(rules, dtstart=dtstart, forceset=True).between(
                lo - duration, hi, inc=False)
        out = []
        exceptions = ev.get("_exceptions", {})
        for occ in starts[:MAX_INSTANCES]:
            inst = self._public(ev)
            inst.pop("recurrence", None)
            if all_day:
                day = occ.date()
                days = (dt.date.fromisoformat(ev["end"]["date"])
                        - dt.date.fromisoformat(ev["start"]["date"]))
                inst_id = f"{ev['id']}_{day:%Y%m%d}"
                inst["start"] = {"date": day.isoformat()}
                inst["end"] = {"date": (day + days).isoformat()}
                inst["originalStartTime"] = {"date": day.isoformat()}
            else:
                inst_id = f"{ev['id']}_{occ.astimezone(UTC):%Y%m%dT%H%M%SZ}"
                tzname = ev["start"].get("timeZone")
                inst["start"] = {"dateTime": occ.isoformat(), **({"timeZone": tzname}
                                                                 if tzname else {})}
                inst["end"] = {"dateTime": (occ + duration).isoformat(),
                               **({"timeZone": tzname} if tzname else {})}
                inst["originalStartTime"] = dict(inst["start"])
            inst["id"] = inst_id
            inst["recurringEventId"] = ev["id"]
            if ev.get("status") == "cancelled":
                inst["status"] = "cancelled"
            override = exceptions.get(inst_id)
            if override:
                inst.update(copy.deepcopy(override))
            if inst["status"] == "cancelled" and not show_deleted:
                continue
            out.append(inst)
        return out

    def _instance(self, cal: CalendarState, instance_id: str) -> dict[str, Any] | None:
        """One instance of a recurring series by its id (``{id}_{original start}``)."""
        master = cal.events.get(instance_id.partition("_")[0])
        if master is None or not master.get("recurrence"):
            return None
        for inst in self._expand(cal, master, None, True):
            if inst["id"] == instance_id:
                return inst
        return None

    def _overlaps(self, cal: CalendarState, ev: dict[str, Any],
                  window: tuple[dt.datetime, dt.datetime] | None) -> bool:
        if window is None:
            return True
        try:
            start, end = self._span(cal, ev)
        except (KeyError, ValueError):
            return True  # stored as the user's app wrote it; the client must cope
        return start < window[1] and end > window[0]

    # --- internals: notifications ---------------------------------------------------------

    def _queue_notifications(self, calendar_id: str) -> None:
        now_ms = time.time() * 1000
        for ch in self.channels.values():
            if ch["calendar_id"] == calendar_id and ch["expiration"] > now_ms:
                self._queue_message(ch, "exists")

    def _queue_message(self, ch: dict[str, Any], state: str) -> None:
        ch["number"] += 1
        headers = {"X-Goog-Channel-ID": ch["id"], "X-Goog-Channel-Token": ch.get("token", ""),
                   "X-Goog-Channel-Expiration": time.strftime(
                       "%a, %d %b %Y %H:%M:%S GMT", time.gmtime(ch["expiration"] / 1000)),
                   "X-Goog-Resource-ID": ch["resourceId"],
                   "X-Goog-Resource-URI": ch["resourceUri"],
                   "X-Goog-Resource-State": state,
                   "X-Goog-Message-Number": str(ch["number"])}
        self.outbox.append({"address": ch["address"], "headers": headers, "delivered": None})

    def _deliver_pending(self) -> None:
        if not self.auto_deliver:
            return
        with self.lock:
            pending = [m for m in self.outbox if m["delivered"] is None]
            for m in pending:
                m["delivered"] = False
        for m in pending:
            req = urllib.request.Request(m["address"], data=b"", method="POST",
                                         headers=m["headers"])
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
                    m["status"] = resp.status
                m["delivered"] = True
            except Exception as exc:  # noqa: BLE001 - record, never fail the API call
                m["status"] = getattr(exc, "code", None)
                m["error"] = repr(exc)

    # --- internals: request handling ------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, list[str]],
               headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            self.requests.append((method, path))
        try:
            if path == "/token" and method == "POST":
                self.counts["token"] += 1
                return self._json(200, self._token(parse_qs(body.decode())))
            if path == "/device/code" and method == "POST":
                self.counts["device"] += 1
                return self._json(200, self._device_code(parse_qs(body.decode())))
            if path == "/o/oauth2/v2/auth" and method == "GET":
                return self._authorize(query)
            if path == "/revoke" and method == "POST":
                form = parse_qs(body.decode()) or query
                with self.lock:
                    ok = self._revoke(form.get("token", [""])[0])
                if not ok:
                    raise OAuthError(400, "invalid_token", "Token expired or revoked")
                return self._json(200, {})
            if path.startswith("/calendar/v3/"):
                self.counts["api"] += 1
                result = self._api(method, path[len("/calendar/v3/"):], query, headers, body)
                self._deliver_pending()
                return result
            return self._json(404, {"error": {"code": 404, "message": "Not Found"}})
        except OAuthError as exc:
            return self._json(exc.status, {"error": exc.error,
                                           "error_description": exc.description})
        except ApiError as exc:
            status, hdrs, payload = self._json(exc.status, exc.body())
            hdrs.update(exc.headers)
            return status, hdrs, payload

    @staticmethod
    def _json(status: int, obj: Any) -> tuple[int, dict[str, str], bytes]:
        if status == 204:
            return 204, {}, b""
        return status, {"Content-Type": "application/json; charset=UTF-8"}, \
            json.dumps(obj).encode()

    # OAuth ------------------------------------------------------------------------------

    def _client(self, form: dict[str, list[str]], secret_required: bool = True) -> None:
        if form.get("client_id", [""])[0] != self.client_id:
            raise OAuthError(401, "invalid_client", "The OAuth client was not found.")
        if secret_required and form.get("client_secret", [""])[0] != self.client_secret:
            raise OAuthError(401, "invalid_client", "Unauthorized")

    def _device_code(self, form: dict[str, list[str]]) -> dict[str, Any]:
        self._client(form, secret_required=False)
        if not form.get("scope"):
            raise OAuthError(400, "invalid_scope", "Missing scope")
        if self.device_scopes is not None:
            for scope in form["scope"][0].split():
                if scope not in self.device_scopes:
                    raise OAuthError(400, "invalid_scope", f"Invalid device flow scope: {scope}")
        code = secrets.token_urlsafe(32)
        user_code = "-".join(secrets.token_hex(2).upper() for _ in range(2))
        with self.lock:
            self.device_codes[code] = {"user_code": user_code,
                                       "email": self.device_auto_approve, "denied": False,
                                       "expires": time.time() + 1800,
                                       "slow_down": self.device_slow_down,
                                       "scope": form["scope"][0]}
        return {"device_code": code, "user_code": user_code, "expires_in": 1800,
                "interval": self.device_interval,
                "verification_url": "https://www.google.com/device"}

    def _authorize(self, query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        q = {k: v[0] for k, v in query.items()}
        if q.get("client_id") != self.client_id:
            raise OAuthError(400, "invalid_client", "The OAuth client was not found.")
        if q.get("response_type") != "code" or not q.get("redirect_uri"):
            raise OAuthError(400, "invalid_request", "response_type=code and redirect_uri")
        if q.get("code_challenge") and q.get("code_challenge_method") != "S256":
            raise OAuthError(400, "invalid_request", "code_challenge_method must be S256")
        if self.login_email is None:
            raise OAuthError(400, "access_denied", "no test user is signed in")
        code = "4/" + secrets.token_urlsafe(24)
        with self.lock:
            self.auth_codes[code] = {"email": self.login_email, "redirect_uri": q["redirect_uri"],
                                     "challenge": q.get("code_challenge"),
                                     "offline": q.get("access_type") == "offline"}
        sep = "&" if "?" in q["redirect_uri"] else "?"
        location = q["redirect_uri"] + sep + urlencode(
            {"code": code, "state": q.get("state", ""), "scope": q.get("scope", "")})
        return 302, {"Location": location}, b""

    # domain-wide delegation ----------------------------------------------------------

    def add_service_account(self, name: str = "calsync-sync",
                            project: str = "calsync-test") -> dict[str, Any]:
        """A service account and its JSON key file (what Google Cloud's console downloads)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        email = f"{name}@{project}.iam.gserviceaccount.com"
        client_id = str(10**20 + len(self.service_accounts) + 1)
        key_id = secrets.token_hex(20)
        with self.lock:
            self.service_accounts[email] = {"public_key": key.public_key(),
                                            "client_id": client_id, "key_id": key_id}
        return {"type": "service_account", "project_id": project, "private_key_id": key_id,
                "private_key": pem, "client_email": email, "client_id": client_id,
                "auth_uri": f"{self.root}/o/oauth2/auth", "token_uri": f"{self.root}/token",
                "universe_domain": "googleapis.com"}

    def delegate(self, client_id: str, domain: str,
                 scopes: tuple[str, ...] = ("https://www.googleapis.com/auth/calendar",)) -> None:
        """The Workspace admin authorises ``client_id`` for ``scopes`` in ``domain``."""
        with self.lock:
            self.delegations[client_id] = set(scopes)
            self.workspace_domains.add(domain.lower())

    def _jwt_grant(self, form: dict[str, list[str]]) -> dict[str, Any]:
        import jwt

        assertion = form.get("assertion", [""])[0]
        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
            entry = self.service_accounts.get(str(unverified.get("iss")))
            if entry is None:
                raise OAuthError(400, "invalid_grant", "Invalid JWT Signature.")
            claims = jwt.decode(assertion, entry["public_key"], algorithms=["RS256"],
                                # the documented audience, wherever the token URI is
                                audience="https://oauth2.googleapis.com/token",
                                options={"require": ["iss", "aud", "exp", "iat"]})
        except jwt.PyJWTError as exc:
            raise OAuthError(400, "invalid_grant", "Invalid JWT Signature.") from exc
        if int(claims["exp"]) - int(claims["iat"]) > 3600:
            raise OAuthError(400, "invalid_grant", "Invalid JWT: Token must be a short-lived "
                                                   "token (60 minutes) and in a reasonable "
                                                   "timeframe.")
        scopes = set(str(claims.get("scope", "")).split())
        granted = self.delegations.get(entry["client_id"], set())
        subject = str(claims.get("sub") or "").lower()
        if not subject or not scopes or not scopes <= granted:
            raise OAuthError(401, "unauthorized_client",
                             "Client is unauthorized to retrieve access tokens using this "
                             "method, or client not authorized for any of the scopes "
                             "requested.")
        domain = subject.rsplit("@", 1)[-1]
        if domain not in self.workspace_domains or subject not in self.accounts:
            raise OAuthError(400, "invalid_grant", "Invalid email or User ID")
        return self._issue(subject, "")

    def _token(self, form: dict[str, list[str]]) -> dict[str, Any]:
        grant = form.get("grant_type", [""])[0]
        self.counts[f"token:{grant}"] += 1
        with self.lock:
            if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
                return self._jwt_grant(form)
            if grant == "refresh_token":
                self._client(form)
                refresh = form.get("refresh_token", [""])[0]
                email = self.refresh_tokens.get(refresh)
                if email is None:
                    raise OAuthError(400, "invalid_grant", "Token has been expired or revoked.")
                return self._issue(email, refresh)
            if grant == DEVICE_GRANT:
                self._client(form)
                entry = self.device_codes.get(form.get("device_code", [""])[0])
                if entry is None:
                    raise OAuthError(400, "invalid_grant", "Malformed auth code.")
                if entry["expires"] < time.time():
                    raise OAuthError(400, "expired_token", "The device code has expired.")
                if entry["slow_down"] > 0:
                    entry["slow_down"] -= 1
                    raise OAuthError(403, "slow_down", "Polling too frequently")
                if entry["denied"]:
                    raise OAuthError(403, "access_denied", "Forbidden")
                if entry["email"] is None:
                    raise OAuthError(428, "authorization_pending", "Precondition Required")
                del self.device_codes[form["device_code"][0]]
                refresh = "1//" + secrets.token_urlsafe(24)
                self.refresh_tokens[refresh] = entry["email"]
                return self._issue(entry["email"], refresh, include_refresh=True)
            if grant == "authorization_code":
                self._client(form)
                entry = self.auth_codes.pop(form.get("code", [""])[0], None)
                if entry is None:
                    raise OAuthError(400, "invalid_grant", "Malformed auth code.")
                if form.get("redirect_uri", [""])[0] != entry["redirect_uri"]:
                    raise OAuthError(400, "redirect_uri_mismatch", "Bad Request")
                if entry["challenge"]:
                    verifier = form.get("code_verifier", [""])[0]
                    digest = base64.urlsafe_b64encode(
                        hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
                    if digest != entry["challenge"]:
                        raise OAuthError(400, "invalid_grant", "Invalid code verifier.")
                refresh = "1//" + secrets.token_urlsafe(24)
                self.refresh_tokens[refresh] = entry["email"]
                return self._issue(entry["email"], refresh, include_refresh=entry["offline"])
        raise OAuthError(400, "unsupported_grant_type", f"Invalid grant_type: {grant}")

    # Calendar API -----------------------------------------------------------------------

    def _api(self, method: str, path: str, query: dict[str, list[str]],
             headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        auth = headers.get("authorization", "")
        with self.lock:
            entry = self.access_tokens.get(auth[7:]) if auth.startswith("Bearer ") else None
            if entry is None or entry[1] < time.time():
                raise ApiError(401, "authError", "Request had invalid authentication "
                               "credentials. Expected OAuth 2 access token.",
                               {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'})
            email = entry[0]
            if self.failures:
                f = self.failures.popleft()
                raise ApiError(f.status, f.reason or "backendError",
                               {429: "Too Many Requests", 403: "Rate Limit Exceeded"}.get(
                                   f.status, "Backend Error"),
                               {"Retry-After": f.retry_after} if f.retry_after else {})
            payload = json.loads(body) if body else {}
            q = {k: v for k, v in query.items()}
            parts = [unquote(p) for p in path.split("/")]
            if parts == ["users", "me", "calendarList"] and method == "GET":
                return self._json(200, self._calendar_list(email))
            if parts == ["channels", "stop"] and method == "POST":
                ch = self.channels.pop(payload.get("id", ""), None)
                if ch is None or ch["resourceId"] != payload.get("resourceId"):
                    raise ApiError(404, "notFound", f"Channel '{payload.get('id')}' not found "
                                   "for project")
                return self._json(204, None)
            if parts[0] != "calendars" or len(parts) < 2:
                raise ApiError(404, "notFound", "Not Found")
            cal = self._calendar(email, parts[1])
            role = cal.roles[email]
            if len(parts) == 2 and method == "DELETE":
                if role != "owner":
                    raise ApiError(403, "forbidden", "Forbidden")
                if cal.id == email:
                    raise ApiError(400, "cannotDeletePrimaryCalendar",
                                   "The primary calendar cannot be deleted.")
                self._delete_calendar(cal.id)
                return self._json(204, None)
            if len(parts) == 2 and method == "GET":
                return self._json(200, {"kind": "calendar#calendar", "id": cal.id,
                                        "summary": cal.summary, "timeZone": cal.timezone,
                                        "etag": f'"{len(cal.events)}"'})
            if parts[2:] == ["events"] and method == "GET":
                return self._json(200, self._list(cal, q))
            if parts[2:] == ["events", "watch"] and method == "POST":
                return self._json(200, self._watch(cal, payload))
            if role not in ("owner", "writer") and method != "GET":
                raise ApiError(403, "requiredAccessLevel",
                               "You need to have writer access to this calendar.")
            if parts[2:] == ["events"] and method == "POST":
                return self._json(200, self._insert(cal, payload))
            if len(parts) == 4 and parts[2] == "events":
                event_id = parts[3]
                ev = cal.events.get(event_id)
                if method == "GET":
                    if ev is None:
                        instance = self._instance(cal, event_id)
                        if instance is None:
                            raise ApiError(404, "notFound", "Not Found")
                        return self._json(200, instance)
                    return self._json(200, self._public(ev))
                if ev is None:
                    raise ApiError(404, "notFound", "Not Found")
                match = headers.get("if-match")
                if match and match != ev["etag"]:
                    raise ApiError(412, "conditionNotMet", "Precondition Failed")
                if method == "DELETE":
                    if ev["status"] == "cancelled":
                        raise ApiError(410, "deleted", "Resource has been deleted")
                    ev["status"] = "cancelled"
                    self._stamp(cal, ev)
                    return self._json(204, None)
                if method in ("PUT", "PATCH"):
                    return self._json(200, self._write(cal, ev, payload, method == "PATCH"))
            raise ApiError(404, "notFound", "Not Found")

    def _calendar(self, email: str, calendar_id: str) -> CalendarState:
        if calendar_id == "primary":
            calendar_id = email
        cal = self.calendars.get(calendar_id)
        if cal is None or email not in cal.roles:
            raise ApiError(404, "notFound", "Not Found")
        return cal

    def _calendar_list(self, email: str) -> dict[str, Any]:
        items = []
        for cid in self.accounts.get(email, []):
            cal = self.calendars[cid]
            item = {"kind": "calendar#calendarListEntry", "id": cid, "summary": cal.summary,
                    "timeZone": cal.timezone, "accessRole": cal.roles[email],
                    "backgroundColor": "#9fc6e7", "etag": f'"{cid}"'}
            if cid == email:
                item["primary"] = True
            items.append(item)
        return {"kind": "calendar#calendarList", "etag": '"list"', "items": items,
                "nextSyncToken": "cl-" + str(self.last_seq)}

    def _check_body(self, payload: dict[str, Any]) -> None:
        for key in ("start", "end"):
            value = payload.get(key)
            if not isinstance(value, dict) or not ({"date", "dateTime"} & value.keys()):
                raise ApiError(400, "required", f"Missing {key} time.")
            if "dateTime" in value:
                try:
                    _parse_time(value["dateTime"])
                except ValueError:
                    raise ApiError(400, "invalid", f"Invalid {key} time.") from None
            if value.get("timeZone"):
                try:
                    ZoneInfo(value["timeZone"])
                except Exception:  # noqa: BLE001
                    raise ApiError(400, "timeRangeEmpty", "Invalid time zone definition for "
                                   f"{key} time.") from None

    def _insert(self, cal: CalendarState, payload: dict[str, Any]) -> dict[str, Any]:
        self._check_body(payload)
        event_id = payload.get("id") or self._new_id()
        if not EVENT_ID.match(event_id):
            raise ApiError(400, "invalid", "Invalid resource id value.")
        if event_id in cal.events:
            raise ApiError(409, "duplicate", "The requested identifier already exists.")
        ev = {k: v for k, v in payload.items() if not k.startswith("_")}
        ev["id"] = event_id
        ev["status"] = payload.get("status", "confirmed")
        cal.events[event_id] = ev
        self._stamp(cal, ev, created=True)
        return self._public(ev)

    def _write(self, cal: CalendarState, ev: dict[str, Any], payload: dict[str, Any],
               patch: bool) -> dict[str, Any]:
        if patch:
            merged = self._public(ev)
            merged.update(payload)
        else:
            merged = dict(payload)
            merged.setdefault("status", "confirmed")
        self._check_body(merged)
        keep = {k: ev[k] for k in ("id", "created", "iCalUID", "_exceptions") if k in ev}
        for k in list(ev):
            del ev[k]
        ev.update({k: v for k, v in merged.items() if k not in ("etag", "updated")})
        ev.update(keep)
        self._stamp(cal, ev)
        return self._public(ev)

    def _watch(self, cal: CalendarState, payload: dict[str, Any]) -> dict[str, Any]:
        if payload.get("type") not in ("web_hook", "webhook") or not payload.get("address"):
            raise ApiError(400, "invalid", "Invalid channel type or address")
        if not payload.get("id") or payload["id"] in self.channels:
            raise ApiError(400, "channelIdNotUnique", "Channel id not unique")
        ttl = float(payload.get("params", {}).get("ttl", 604800))
        expiration = float(payload.get("expiration") or (time.time() + ttl) * 1000)
        expiration = min(expiration, (time.time() + 2592000) * 1000)
        resource_id = hashlib.sha1(cal.id.encode()).hexdigest()[:27]
        ch = {"id": payload["id"], "token": payload.get("token", ""),
              "address": payload["address"], "calendar_id": cal.id, "resourceId": resource_id,
              "resourceUri": f"{self.root}/calendar/v3/calendars/{cal.id}/events?alt=json",
              "expiration": expiration, "number": 0}
        self.channels[ch["id"]] = ch
        self._queue_message(ch, "sync")
        return {"kind": "api#channel", "id": ch["id"], "resourceId": resource_id,
                "resourceUri": ch["resourceUri"], "token": ch["token"],
                "expiration": str(int(expiration))}

    def _list(self, cal: CalendarState, q: dict[str, list[str]]) -> dict[str, Any]:
        one = {k: v[0] for k, v in q.items()}
        if "pageToken" in one:
            state = self.page_tokens.pop(one["pageToken"], None)
            if state is None or state["calendar"] != cal.id:
                raise ApiError(400, "invalid", "Invalid page token value.")
            return self._page(state)
        single = one.get("singleEvents", "false") == "true"
        if "syncToken" in one:
            for banned in ("iCalUID", "orderBy", "privateExtendedProperty", "q",
                           "sharedExtendedProperty", "timeMin", "timeMax", "updatedMin"):
                if banned in one:
                    raise ApiError(400, "invalid", f"{banned} cannot be used with syncToken")
            token = self.sync_tokens.get(one["syncToken"])
            if token is None or token["calendar"] != cal.id:
                raise ApiError(410, "fullSyncRequired",
                               "Sync token is no longer valid, a full sync is required.")
            window, single = token["window"], token["single"]
            known = set(token["known"])
            changed = [ev for ev in cal.events.values() if ev["_seq"] > token["seq"]]
            items = []
            for ev in sorted(changed, key=lambda e: e["_seq"]):
                for inst in (self._expand(cal, ev, window, True) if single
                             else [self._public(ev)]):
                    # the token stays bound to the first request's timeMin/timeMax: what
                    # lies outside it is reported only when the client had seen it inside
                    inside = self._overlaps(cal, inst, window) or \
                        (not single and bool(ev.get("recurrence")))
                    if inside or inst["id"] in known:
                        items.append(inst)
                    if inside and inst.get("status") != "cancelled":
                        known.add(inst["id"])
                    else:
                        known.discard(inst["id"])
        else:
            try:
                lo = _parse_time(one["timeMin"]) if "timeMin" in one else None
                hi = _parse_time(one["timeMax"]) if "timeMax" in one else None
            except ValueError:
                raise ApiError(400, "badRequest", "Bad Request") from None
            window = None
            if lo or hi:
                window = (lo or dt.datetime(1970, 1, 1, tzinfo=UTC),
                          hi or dt.datetime(2100, 1, 1, tzinfo=UTC))
            show_deleted = one.get("showDeleted", "false") == "true"
            filters = [f.split("=", 1) for f in q.get("privateExtendedProperty", [])]
            items = []
            for ev in sorted(cal.events.values(), key=lambda e: e["_seq"]):
                props = ev.get("extendedProperties", {}).get("private", {})
                if any(props.get(k) != v for k, v in filters):
                    continue
                if ev["status"] == "cancelled" and not show_deleted and \
                        not ev.get("recurrence"):
                    continue
                if single and ev.get("recurrence"):
                    items.extend(i for i in self._expand(cal, ev, window, show_deleted)
                                 if self._overlaps(cal, i, window))
                elif self._overlaps(cal, ev, window):
                    if ev["status"] != "cancelled" or show_deleted:
                        items.append(self._public(ev))
            known = {i["id"] for i in items if i.get("status") != "cancelled"}
        sync_token = None
        if "privateExtendedProperty" not in q:
            sync_token = "CP" + secrets.token_urlsafe(16)
            self.sync_tokens[sync_token] = {"calendar": cal.id, "seq": self.last_seq,
                                            "window": window, "single": single,
                                            "known": frozenset(known)}
        max_results = min(int(one.get("maxResults", 250)), 2500)
        state = {"calendar": cal.id, "items": items, "offset": 0, "max": max_results,
                 "sync_token": sync_token, "page": 0, "tz": cal.timezone}
        return self._page(state)

    def _page(self, state: dict[str, Any]) -> dict[str, Any]:
        size = state["max"]
        if self.page_sizes:
            size = min(size, self.page_sizes[state["page"] % len(self.page_sizes)])
        chunk = state["items"][state["offset"]:state["offset"] + size]
        state["offset"] += size
        state["page"] += 1
        out: dict[str, Any] = {"kind": "calendar#events", "summary": state["calendar"],
                               "timeZone": state["tz"], "items": chunk,
                               "etag": f'"p{self.last_seq}"',
                               "updated": _rfc3339(dt.datetime.now(UTC))}
        if state["offset"] < len(state["items"]):
            token = "pg" + secrets.token_urlsafe(12)
            self.page_tokens[token] = state
            out["nextPageToken"] = token
        elif state["sync_token"]:
            out["nextSyncToken"] = state["sync_token"]
        return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    emulator: GoogleEmulator

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parsed = urlparse(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            status, hdrs, payload = self.emulator.handle(
                self.command, parsed.path, parse_qs(parsed.query), headers, body)
        except Exception as exc:  # noqa: BLE001 - an emulator bug shows as a 500
            status, hdrs, payload = GoogleEmulator._json(500, {"error": {
                "code": 500, "message": f"emulator: {exc!r}",
                "errors": [{"reason": "backendError"}]}})
        self.send_response(status)
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


# --- pytest helpers ---------------------------------------------------------------------

def google_settings(emulator: GoogleEmulator, base: Any = None) -> Any:
    """calsync Settings whose ``[google]`` table points at ``emulator``."""
    from dataclasses import replace

    from calsync.config import Settings

    base = base or Settings()
    return replace(base, google=replace(base.google, **emulator.settings_values()))


def signed_in_context(emulator: GoogleEmulator, email: str, settings: Any = None,
                      expired: bool = False, **options: Any) -> Any:
    """A ConnectContext holding tokens as if ``email`` had signed in; ``expired`` makes the
    stored access token look expired so the first call refreshes it."""
    from calsync.sync.connector import ConnectContext

    tokens = emulator.grant(email)
    expiry = dt.datetime.now(UTC) + dt.timedelta(seconds=-60 if expired else 3000)
    creds = {"token": tokens["access_token"], "refresh_token": tokens["refresh_token"],
             "expiry": expiry.isoformat(), "version": 1}
    return ConnectContext(provider="google", url=None, account=email, credentials=creds,
                          settings=settings or google_settings(emulator), options=options)


def google_emulator_fixture() -> Any:
    """``google_emulator = google_emulator_fixture()`` in a test module: a started emulator
    with the account ``tech@example.com``, stopped after the test."""
    import pytest

    @pytest.fixture
    def google_emulator() -> Any:
        with GoogleEmulator() as emulator:
            emulator.add_account("tech@example.com")
            yield emulator

    return google_emulator
