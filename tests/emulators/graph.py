"""A loopback emulator of Microsoft Graph (calendar) and the Microsoft identity platform.

Serves HTTPS on 127.0.0.1 (a free port, a self-signed certificate made per emulator: msal
accepts only https authorities) so the REAL msal library (``http_client=`` a requests
Session trusting that certificate) and calsync's Graph client talk to it unchanged.

Documented behaviours it follows (Microsoft identity platform v2.0 and Graph v1.0 docs):

Identity
- ``GET /{tenant}/v2.0/.well-known/openid-configuration`` (OpenID discovery).
- ``POST /{tenant}/oauth2/v2.0/devicecode`` then ``/token`` with grant
  ``urn:ietf:params:oauth:grant-type:device_code`` (device authorization grant; the emulator
  "approves" at once as :attr:`GraphEmulator.sign_in_as`, or answers
  ``authorization_pending`` ``device_pending_polls`` times first).
- ``GET /{tenant}/oauth2/v2.0/authorize`` -> 302 to ``redirect_uri?code=&state=``; ``/token``
  with ``authorization_code`` checks ``redirect_uri`` and PKCE S256 (``code_verifier``);
  codes are single use.
- ``refresh_token`` grant; a revoked refresh token -> 400 ``invalid_grant`` (AADSTS50173);
  a confidential client's token refreshed without its secret, or a public client's with
  one -> 401 ``invalid_client`` (AADSTS7000218 / AADSTS700025).
- Token responses carry ``access_token``, ``refresh_token``, ``id_token``, ``client_info``.

- App-only (daemon) access, after :meth:`GraphEmulator.enable_app_only`: grant
  ``client_credentials`` with ``client_secret`` or a certificate's ``client_assertion``
  (RS256 JWT, ``x5t`` thumbprint, checked against the registered public key); ``scope`` must
  be ``https://graph.microsoft.com/.default`` (else 400 ``invalid_scope`` AADSTS1002012); the
  answer has no refresh token; app tokens expire after :attr:`app_token_lifetime` seconds.

Graph
- Bearer tokens: unknown/expired -> 401 ``InvalidAuthenticationToken``.
- App tokens: ``/me`` -> 400 (``/me`` is only valid with delegated authentication);
  ``/users/{id|userPrincipalName}/…`` serves that mailbox as ``/me/…`` does; an unknown user
  -> 404 ``ErrorInvalidUser``; without the ``Calendars.ReadWrite`` application permission
  -> 403 ``ErrorAccessDenied``; a mailbox left out by an Exchange application access policy
  (:attr:`access_policy`) -> 403 ``ErrorAccessDenied`` "Access to OData is disabled." (as
  "Scoping application permissions to specific Exchange Online mailboxes" documents);
  ``GET /organization`` lists ``verifiedDomains``.
- ``GET /me``, ``GET /me/calendars`` (``canEdit``).
- Events CRUD: ``POST /me/calendars/{id}/events`` (``transactionId`` dedup: a second create
  with the same transactionId returns the existing event), ``GET|PATCH|DELETE
  /me/events/{id}`` and ``/me/calendars/{cal}/events/{id}``; ``@odata.etag`` (W/"changeKey")
  with ``If-Match`` -> 412 ``ErrorIrresolvableConflict``; missing -> 404 ``ErrorItemNotFound``.
- ``singleValueExtendedProperties`` on create/update, returned only with
  ``$expand=singleValueExtendedProperties($filter=id eq '…')``; list filter
  ``singleValueExtendedProperties/Any(ep: ep/id eq '…' and ep/value eq '…')``.
- ``GET /me/calendars/{id}/calendarView/delta?startDateTime=&endDateTime=``: instances
  (single events, occurrences and exceptions of series expanded inside the window), paged by
  ``Prefer: odata.maxpagesize`` with ``@odata.nextLink`` ($skiptoken; pages may be short or
  empty: :attr:`page_pattern`), the last page carrying ``@odata.deltaLink`` ($deltatoken);
  deletions as ``{"id", "@removed": {"reason": "deleted"}}``; replays of already-sent items
  (:attr:`replay_delta`); an expired/unknown delta token -> 410 ``syncStateNotFound``.
  A delta link stays bound to the ``startDateTime``/``endDateTime`` of the request that
  started it: later rounds report only instances inside that range (an event created
  outside it is not reported; a new full request with a new range is needed).
- ``DELETE /me/calendars/{id}`` (and :meth:`remove_calendar`): the calendar and its events
  go; its delta links, event lists and creates answer 404 ``ErrorItemNotFound``.
  ``Prefer: outlook.timezone="…"`` gives ``start``/``end`` of timed events in that zone
  (UTC without the header, as Graph does); ``originalStartTimeZone`` keeps the zone they
  were written in.
- Recurring series (``recurrence`` pattern daily/weekly, range endDate/numbered/noEnd) are
  expanded to ``occurrence`` instances; exceptions (modified or cancelled occurrences).
- ``showAs``, ``sensitivity``, ``isCancelled``, ``responseStatus``, ``isAllDay``, ``type``.
- ``dateTimeTimeZone.timeZone``: any Windows zone name or one of the documented "additional
  time zones" (IANA names); others -> 400 ``TimeZoneNotSupportedException``.
- ``POST /$batch`` (JSON batching): at most 20 requests, each answered by id (order not
  kept), per-item 429 with ``Retry-After`` (:meth:`throttle_batch_items`).
- Throttling: :meth:`throttle` (429/503 with ``Retry-After``), :meth:`fail`; more than 4
  concurrent requests per mailbox -> 429 ``ApplicationThrottled`` (``MailboxConcurrency``);
  the maximum seen is recorded in :attr:`max_in_flight`.
- Subscriptions: ``POST /subscriptions`` runs the validation handshake (POST to
  ``notificationUrl?validationToken=…``, expects 200 text/plain echo) before it answers 201;
  expirationDateTime at most 10,080 minutes ahead; ``PATCH`` renews, ``DELETE`` removes.
  Changes to a subscribed calendar queue notifications (``subscriptionId``, ``clientState``,
  ``changeType``, ``resource``, ``resourceData``) sent by :meth:`send_notifications`.
"""

from __future__ import annotations

import base64
import collections
import copy
import datetime as dt
import hashlib
import ipaddress
import contextlib
import json
import re
import secrets
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit
from zoneinfo import ZoneInfo

from icalendar.timezone.windows_to_olson import WINDOWS_TO_OLSON

UTC = dt.timezone.utc
GRAPH_PREFIX = "/v1.0"
APP = "app:"  # what an app-only (client credentials) token stands for
MAX_BATCH = 20
MAX_SUBSCRIPTION_MINUTES = 10080
MAILBOX_CONCURRENCY = 4

# Time zone names Graph's calendar API accepts in dateTimeTimeZone.timeZone: every Windows
# zone (CLDR windowsZones, as icalendar ships it) and the documented "additional time zones"
# (IANA names; learn.microsoft.com/graph/api/resources/datetimetimezone). Anything else is
# refused with 400 TimeZoneNotSupportedException, as Graph does.
_WINDOWS = {**WINDOWS_TO_OLSON, "UTC": "UTC"}
GRAPH_ADDITIONAL_ZONES = frozenset("""
Etc/GMT+12 Etc/GMT+11 Pacific/Honolulu America/Anchorage America/Santa_Isabel
America/Los_Angeles America/Phoenix America/Chihuahua America/Denver America/Guatemala
America/Chicago America/Mexico_City America/Regina America/Bogota America/New_York
America/Indiana/Indianapolis America/Caracas America/Asuncion America/Halifax America/Cuiaba
America/La_Paz America/Santiago America/St_Johns America/Sao_Paulo
America/Argentina/Buenos_Aires America/Cayenne America/Godthab America/Montevideo
America/Bahia Etc/GMT+2 Atlantic/Azores Atlantic/Cape_Verde Africa/Casablanca Etc/GMT
Europe/London Atlantic/Reykjavik Europe/Berlin Europe/Budapest Europe/Paris Europe/Warsaw
Africa/Lagos Africa/Windhoek Europe/Bucharest Asia/Beirut Africa/Cairo Asia/Damascus
Africa/Johannesburg Europe/Kiev Europe/Istanbul Asia/Jerusalem Asia/Amman Asia/Baghdad
Europe/Kaliningrad Asia/Riyadh Africa/Nairobi Asia/Tehran Asia/Dubai Asia/Baku
Europe/Moscow Indian/Mauritius Asia/Tbilisi Asia/Yerevan Asia/Kabul Asia/Karachi
Asia/Tashkent Asia/Kolkata Asia/Colombo Asia/Kathmandu Asia/Almaty Asia/Dhaka
Asia/Yekaterinburg Asia/Yangon Asia/Bangkok Asia/Novosibirsk Asia/Shanghai
Asia/Krasnoyarsk Asia/Singapore Australia/Perth Asia/Taipei Asia/Ulaanbaatar Asia/Irkutsk
Asia/Tokyo Asia/Seoul Australia/Adelaide Australia/Darwin Australia/Brisbane
Australia/Sydney Pacific/Port_Moresby Australia/Hobart Asia/Yakutsk Pacific/Guadalcanal
Asia/Vladivostok Pacific/Auckland Etc/GMT-12 Pacific/Fiji Asia/Magadan Pacific/Tongatapu
Pacific/Apia Pacific/Kiritimati
""".split())


def supported_zone(name: Any) -> bool:
    return isinstance(name, str) and (name in _WINDOWS or name in GRAPH_ADDITIONAL_ZONES)


def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(_WINDOWS.get(name, name))


def _fmt(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.0000000")


def _parse_local(value: str) -> dt.datetime:
    value = value.rstrip("Z")
    if "." in value:
        value = value.split(".", 1)[0]
    return dt.datetime.fromisoformat(value)


def _parse_instant(value: str) -> dt.datetime:
    v = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return v if v.tzinfo else v.replace(tzinfo=UTC)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _graph_error(status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    return status, headers or {}, {"error": {"code": code, "message": message}}


def _make_cert(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Mailbox:
    def __init__(self, email: str, tenant_id: str) -> None:
        self.email = email
        self.oid = secrets.token_hex(16)
        self.tenant_id = tenant_id
        self.display_name = email.split("@")[0].title()
        self.calendars: dict[str, dict[str, Any]] = {}
        self.events: dict[str, dict[str, Any]] = {}  # id -> stored event (masters, singles)
        self.tombstones: list[tuple[int, str, str]] = []  # (seq, calendar id, instance id)


class GraphEmulator:
    """Start with :meth:`start` (or as a context manager); :attr:`base_url` is https."""

    def __init__(self, tenant: str = "contoso", client_id: str = "calsync-test-client",
                 client_secret: str | None = None) -> None:
        self.tenant = tenant
        self.tenant_id = secrets.token_hex(16)
        self.client_id = client_id
        self.client_secret = client_secret
        self.lock = threading.RLock()
        self.mailboxes: dict[str, Mailbox] = {}
        self.sign_in_as: str | None = None
        self.device_pending_polls = 0
        self.access_tokens: dict[str, str] = {}  # token -> email
        self.refresh_tokens: dict[str, str] = {}
        self.revoked: set[str] = set()
        self.confidential_tokens: set[str] = set()  # refresh tokens of confidential clients
        self.device_codes: dict[str, dict[str, Any]] = {}
        self.auth_codes: dict[str, dict[str, Any]] = {}
        self.token_requests: collections.Counter[str] = collections.Counter()
        self.requests: list[tuple[str, str]] = []  # Graph (method, path) incl. batch items
        self.http_requests = 0  # top-level Graph HTTP requests (authenticated)
        self.unauthorized = 0  # Graph requests answered 401
        self.batch_sizes: list[int] = []
        self.in_flight: collections.Counter[str] = collections.Counter()
        self.max_in_flight: collections.Counter[str] = collections.Counter()
        self.latency = 0.0
        self.enforce_concurrency = True
        self._throttles: list[tuple[int, float]] = []
        self._batch_throttles: list[float] = []
        self.page_size = 50
        self.page_pattern: list[int] | None = None
        self.replay_delta = False
        self.delta_tokens: dict[str, dict[str, Any]] = {}
        self.skip_tokens: dict[str, dict[str, Any]] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.pending_notifications: list[tuple[str, dict[str, Any]]] = []
        self.deliver: Callable[[str, dict[str, str], bytes, dict[str, str]],
                               tuple[int, str]] = self._deliver_http
        self.clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(UTC)
        # app-only access (client credentials), off until enable_app_only()
        self.app_secret: str | None = None
        self.app_certificates: dict[str, Any] = {}  # x5t / x5t#S256 -> public key
        self.assertion_errors: list[str] = []  # why client assertions were refused
        self.app_permissions: set[str] = set()
        self.access_policy: set[str] | None = None  # mailboxes the app may reach; None: all
        self.app_token_lifetime = 3600
        self.app_tokens: dict[str, float] = {}  # app token -> expiry (epoch seconds)
        self.verified_domains: list[str] = [f"{tenant}.com", f"{tenant}.onmicrosoft.com"]
        self._seq = 0
        self._tmp = tempfile.TemporaryDirectory(prefix="graph-emulator-")
        self.ca_file, self._key_file = _make_cert(Path(self._tmp.name))
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> GraphEmulator:
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as separate writes

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, headers, payload = emulator.handle(
                    self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                    body)
                if isinstance(payload, (dict, list)):
                    data = json.dumps(payload).encode()
                    headers.setdefault("Content-Type", "application/json")
                elif isinstance(payload, str):
                    data = payload.encode()
                    headers.setdefault("Content-Type", "text/plain")
                else:
                    data = payload or b""
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.ca_file), str(self._key_file))
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.05})
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._tmp.cleanup()

    def __enter__(self) -> GraphEmulator:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "emulator not started"
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    @property
    def graph_url(self) -> str:
        return self.base_url + GRAPH_PREFIX

    def configure(self, settings: Any) -> Any:
        """calsync Settings pointing the [outlook] table at this emulator."""
        from dataclasses import replace

        return replace(settings, outlook=replace(
            settings.outlook, client_id=self.client_id, client_secret=self.client_secret or "",
            tenant=self.tenant, authority_host=self.base_url, graph_url=self.graph_url))

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def identity_session(self) -> Any:
        """A requests Session trusting the emulator (msal's ``http_client``)."""
        import requests

        session = requests.Session()
        session.trust_env = False  # else $REQUESTS_CA_BUNDLE overrides ``verify``
        session.verify = str(self.ca_file)
        return session

    def graph_client(self) -> Any:
        import httpx

        return httpx.Client(verify=self.ssl_context(), timeout=30, trust_env=False)

    # --- test knobs -----------------------------------------------------------------------

    def add_mailbox(self, email: str, calendars: tuple[tuple[str, bool], ...] = (
            ("Calendar", True),)) -> Mailbox:
        with self.lock:
            box = Mailbox(email, self.tenant_id)
            self.mailboxes[email] = box
            for name, can_edit in calendars:
                self.add_calendar(email, name, can_edit)
            if self.sign_in_as is None:
                self.sign_in_as = email
            return box

    def add_calendar(self, email: str, name: str, can_edit: bool = True) -> str:
        cal_id = "AAMkCal" + secrets.token_urlsafe(18)
        self.mailboxes[email].calendars[cal_id] = {
            "id": cal_id, "name": name, "canEdit": can_edit, "color": "auto",
            "owner": {"address": email, "name": email}}
        return cal_id

    def remove_calendar(self, email: str, calendar_id: str) -> None:
        """Delete a calendar and its events, as the user would in Outlook (test helper);
        the same as ``DELETE /me/calendars/{id}``."""
        with self.lock:
            self._delete_calendar(self.mailboxes[email], calendar_id)

    def _delete_calendar(self, box: Mailbox, calendar_id: str) -> bool:
        if box.calendars.pop(calendar_id, None) is None:
            return False
        for ev_id in [i for i, e in box.events.items() if e["_calendar"] == calendar_id]:
            del box.events[ev_id]
        # delta and skip links of the calendar die with it: later requests answer 404
        return True

    def put_busy(self, email: str, calendar_id: str, start: dt.datetime, end: dt.datetime,
                 subject: str = "Busy", time_zone: str = "UTC") -> dict[str, Any]:
        """An external timed event at the instants given (test helper, e.g. for a date that
        only a later sync window reaches)."""
        zone = _zone(time_zone)
        return self.put_event(email, calendar_id, {
            "subject": subject,
            "start": {"dateTime": _fmt(start.astimezone(zone).replace(tzinfo=None)),
                      "timeZone": time_zone},
            "end": {"dateTime": _fmt(end.astimezone(zone).replace(tzinfo=None)),
                    "timeZone": time_zone}})

    def calendar_id(self, email: str, name: str = "Calendar") -> str:
        for cal in self.mailboxes[email].calendars.values():
            if cal["name"] == name:
                return str(cal["id"])
        raise KeyError(name)

    def throttle(self, count: int = 1, retry_after: float = 1, status: int = 429) -> None:
        """The next ``count`` Graph requests answer ``status`` with Retry-After."""
        with self.lock:
            self._throttles.extend([(status, retry_after)] * count)

    def fail(self, count: int = 1, status: int = 503) -> None:
        with self.lock:
            self._throttles.extend([(status, -1)] * count)

    def throttle_batch_items(self, count: int, retry_after: float = 1) -> None:
        """The next ``count`` items inside $batch requests answer 429 with Retry-After."""
        with self.lock:
            self._batch_throttles.extend([retry_after] * count)

    def expire_access_tokens(self) -> None:
        with self.lock:
            self.access_tokens.clear()

    def revoke_refresh_tokens(self, email: str) -> None:
        with self.lock:
            for rt, owner in self.refresh_tokens.items():
                if owner == email:
                    self.revoked.add(rt)

    def expire_delta_tokens(self) -> None:
        with self.lock:
            self.delta_tokens.clear()
            self.skip_tokens.clear()

    def put_event(self, email: str, calendar_id: str, event: dict[str, Any]) -> dict[str, Any]:
        """Create an event as the user would in Outlook (test helper)."""
        with self.lock:
            return self._store_new(self.mailboxes[email], calendar_id, copy.deepcopy(event))

    def edit_event(self, email: str, event_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            box = self.mailboxes[email]
            ev = box.events[event_id]
            ev.update(copy.deepcopy(changes))
            self._touch(box, ev, "updated")
            return ev

    def remove_event(self, email: str, event_id: str) -> None:
        with self.lock:
            box = self.mailboxes[email]
            self._bury(box, box.events[event_id])
            ev = box.events.pop(event_id)
            self._notify(box, ev, "deleted")

    def _bury(self, box: Mailbox, ev: dict[str, Any]) -> None:
        """Record the deletion of an event (all its instances) in the change log."""
        seq = self._next_seq()
        ids = [i["id"] for i in self._expand(ev)] if ev.get("recurrence") else [ev["id"]]
        box.tombstones.extend((seq, ev["_calendar"], i) for i in ids)

    def set_exception(self, email: str, master_id: str, day: dt.date,
                      changes: dict[str, Any] | None) -> None:
        """Modify (``changes``) or cancel (None) one occurrence of a series."""
        with self.lock:
            box = self.mailboxes[email]
            ev = box.events[master_id]
            if changes is None:
                box.tombstones.append((self._next_seq(), ev["_calendar"],
                                       f"{master_id}_{day.strftime('%Y%m%d')}"))
            ev.setdefault("_exceptions", {})[day.isoformat()] = copy.deepcopy(changes)
            self._touch(box, ev, "updated")

    def events_in(self, email: str, calendar_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.mailboxes[email].events.values()
                    if e["_calendar"] == calendar_id]

    # --- dispatch -------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, headers: dict[str, str],
               body: bytes) -> tuple[int, dict[str, str], Any]:
        parts = urlsplit(raw_path)
        path = parts.path
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        if path.startswith(f"/{self.tenant}/"):
            return self._identity(method, path[len(self.tenant) + 1:], query, body)
        if not path.startswith(GRAPH_PREFIX + "/"):
            return _graph_error(404, "NotFound", f"no route {path}")
        email = self._bearer(headers)
        if email is None:
            with self.lock:
                self.unauthorized += 1
            return _graph_error(401, "InvalidAuthenticationToken",
                                "Access token has expired or is not yet valid.")
        if email == APP:
            target = re.match(r"/users/([^/?]+)", path[len(GRAPH_PREFIX):])
            email = f"{APP}{target.group(1).lower() if target else ''}"
        with self.lock:
            self.http_requests += 1
            self.in_flight[email] += 1
            current = self.in_flight[email]
            self.max_in_flight[email] = max(self.max_in_flight[email], current)
        try:
            if self.enforce_concurrency and current > MAILBOX_CONCURRENCY:
                return _graph_error(429, "ApplicationThrottled",
                                    "Application is over its MailboxConcurrency limit.",
                                    {"Retry-After": "1"})
            if self.latency:
                time.sleep(self.latency)
            with self.lock:
                forced = self._throttles.pop(0) if self._throttles else None
            if forced is not None:
                status, retry_after = forced
                extra = {"Retry-After": str(retry_after)} if retry_after >= 0 else {}
                code = "TooManyRequests" if status == 429 else "ServiceUnavailable"
                return _graph_error(status, code, "Please retry later.", extra)
            sub = path[len(GRAPH_PREFIX):]
            if sub == "/$batch" and method == "POST":
                return self._batch(email, body)
            with self.lock:
                return self._graph(email, method, sub, query, headers, body)
        finally:
            with self.lock:
                self.in_flight[email] -= 1

    def _bearer(self, headers: dict[str, str]) -> str | None:
        auth = headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return None
        token = auth[7:].strip()
        with self.lock:
            expiry = self.app_tokens.get(token)
            if expiry is not None and time.time() >= expiry:
                return None
            return self.access_tokens.get(token)

    # --- identity -------------------------------------------------------------------------

    def _issuer(self) -> str:
        return f"{self.base_url}/{self.tenant_id}/v2.0"

    def _identity(self, method: str, path: str, query: dict[str, str],
                  body: bytes) -> tuple[int, dict[str, str], Any]:
        base = f"{self.base_url}/{self.tenant}"
        if path == "/v2.0/.well-known/openid-configuration":
            return 200, {}, {
                "issuer": self._issuer(),
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "response_types_supported": ["code", "id_token", "code id_token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "code_challenge_methods_supported": ["plain", "S256"],
            }
        if path == "/oauth2/v2.0/authorize" and method == "GET":
            return self._authorize(query)
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if path == "/oauth2/v2.0/devicecode" and method == "POST":
            if form.get("client_id") != self.client_id:
                return 400, {}, {"error": "unauthorized_client",
                                 "error_description": "AADSTS700016: unknown application"}
            code = secrets.token_urlsafe(24)
            user_code = secrets.token_hex(4).upper()
            with self.lock:
                self.device_codes[code] = {"email": self.sign_in_as,
                                           "pending": self.device_pending_polls,
                                           "scope": form.get("scope", "")}
            uri = f"{self.base_url}/devicelogin"
            return 200, {}, {"device_code": code, "user_code": user_code,
                             "verification_uri": uri, "expires_in": 900, "interval": 1,
                             "message": f"To sign in, use a web browser to open the page "
                                        f"{uri} and enter the code {user_code} to "
                                        f"authenticate."}
        if path == "/oauth2/v2.0/token" and method == "POST":
            return self._token(form)
        return 404, {}, {"error": "not_found"}

    def _authorize(self, query: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        if query.get("client_id") != self.client_id or not query.get("redirect_uri"):
            return 400, {}, {"error": "invalid_request"}
        code = secrets.token_urlsafe(24)
        with self.lock:
            self.auth_codes[code] = {
                "email": self.sign_in_as, "redirect_uri": query["redirect_uri"],
                "challenge": query.get("code_challenge"),
                "method": query.get("code_challenge_method", "plain")}
        params = {"code": code}
        if "state" in query:
            params["state"] = query["state"]
        if query.get("response_mode") == "form_post":
            # The documented form_post answer: a page that POSTs code and state back.
            fields = "".join(f'<input type="hidden" name="{k}" value="{v}"/>'
                             for k, v in params.items())
            page = (f'<html><body onload="document.forms[0].submit()"><form method="post" '
                    f'action="{query["redirect_uri"]}">{fields}</form></body></html>')
            return 200, {"Content-Type": "text/html"}, page.encode()
        return 302, {"Location": query["redirect_uri"] + "?" + urlencode(params)}, b""

    def _token(self, form: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        grant = form.get("grant_type", "")
        with self.lock:
            self.token_requests[grant] += 1
            self.token_requests["total"] += 1

        def bad(error: str, desc: str) -> tuple[int, dict[str, str], Any]:
            return 400, {}, {"error": error, "error_description": desc,
                             "error_codes": [50173 if error == "invalid_grant" else 9002313]}

        if form.get("client_id") != self.client_id:
            return 400, {}, {"error": "unauthorized_client", "error_description": "AADSTS700016"}
        if grant == "client_credentials":
            return self._client_credentials(form)
        if self.client_secret and "client_secret" in form and \
                form["client_secret"] != self.client_secret:
            return 401, {}, {"error": "invalid_client", "error_description": "AADSTS7000215"}
        with self.lock:
            if grant == "urn:ietf:params:oauth:grant-type:device_code":
                entry = self.device_codes.get(form.get("device_code", ""))
                if entry is None:
                    return bad("expired_token", "AADSTS70019: device code expired")
                if entry["pending"] > 0:
                    entry["pending"] -= 1
                    return bad("authorization_pending", "AADSTS70016: pending")
                del self.device_codes[form["device_code"]]
                return 200, {}, self._issue(entry["email"], entry["scope"])
            if grant == "authorization_code":
                entry = self.auth_codes.pop(form.get("code", ""), None)
                if entry is None:
                    return bad("invalid_grant", "AADSTS54005: code already redeemed or unknown")
                if form.get("redirect_uri") != entry["redirect_uri"]:
                    return bad("invalid_grant", "AADSTS50148: redirect_uri mismatch")
                verifier = form.get("code_verifier", "")
                if entry["challenge"]:
                    expect = (_b64url(hashlib.sha256(verifier.encode()).digest())
                              if entry["method"] == "S256" else verifier)
                    if expect != entry["challenge"]:
                        return bad("invalid_grant", "AADSTS501481: code_verifier mismatch")
                return 200, {}, self._issue(entry["email"], form.get("scope", ""),
                                            "client_secret" in form)
            if grant == "refresh_token":
                rt = form.get("refresh_token", "")
                if rt not in self.refresh_tokens or rt in self.revoked:
                    return bad("invalid_grant", "AADSTS50173: The provided grant has expired "
                                                "due to it being revoked.")
                confidential = rt in self.confidential_tokens
                if confidential and "client_secret" not in form:
                    return 401, {}, {"error": "invalid_client", "error_description":
                                     "AADSTS7000218: The request body must contain "
                                     "'client_assertion' or 'client_secret'."}
                if not confidential and "client_secret" in form:
                    return 401, {}, {"error": "invalid_client", "error_description":
                                     "AADSTS700025: Client is public so neither "
                                     "'client_assertion' nor 'client_secret' should be "
                                     "presented."}
                return 200, {}, self._issue(self.refresh_tokens[rt], form.get("scope", ""),
                                            confidential)
        return bad("unsupported_grant_type", f"grant {grant!r}")

    # app-only ------------------------------------------------------------------------------

    def enable_app_only(self, secret: str | None = "app-secret-for-tests",
                        permissions: tuple[str, ...] = ("Calendars.ReadWrite",)) -> None:
        """Admin consent for the app's application permissions (and its client secret)."""
        with self.lock:
            self.app_secret = secret
            self.app_permissions = set(permissions)

    def add_app_certificate(self, certificate_pem: bytes) -> None:
        """Upload a certificate to the app registration: assertions signed by its key and
        naming it by ``x5t`` (SHA-1) or ``x5t#S256`` (SHA-256) thumbprint are accepted."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        cert = x509.load_pem_x509_certificate(certificate_pem)
        with self.lock:
            for algorithm in (hashes.SHA1(), hashes.SHA256()):
                self.app_certificates[_b64url(cert.fingerprint(algorithm))] = cert.public_key()

    def _client_credentials(self, form: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        def refuse(status: int, error: str, desc: str) -> tuple[int, dict[str, str], Any]:
            return status, {}, {"error": error, "error_description": desc}

        if "client_assertion" in form:
            if not self._assertion_ok(form["client_assertion"]):
                return refuse(401, "invalid_client", "AADSTS700027: Client assertion failed "
                                                     "signature validation.")
        elif not self.app_secret or form.get("client_secret") != self.app_secret:
            return refuse(401, "invalid_client", "AADSTS7000215: Invalid client secret "
                                                 "provided.")
        if form.get("scope", "").split() != ["https://graph.microsoft.com/.default"]:
            return refuse(400, "invalid_scope", "AADSTS1002012: The provided value for scope "
                                                "is not valid. Client credential flows must "
                                                "have a scope value with /.default.")
        at = "app-" + secrets.token_urlsafe(24)
        with self.lock:
            self.access_tokens[at] = APP
            self.app_tokens[at] = time.time() + self.app_token_lifetime
        return 200, {}, {"token_type": "Bearer", "expires_in": self.app_token_lifetime,
                         "ext_expires_in": self.app_token_lifetime, "access_token": at}

    def _assertion_ok(self, assertion: str) -> bool:
        import jwt

        try:
            header = jwt.get_unverified_header(assertion)
            named = str(header.get("x5t#S256") or header.get("x5t") or "").rstrip("=")
            key = self.app_certificates.get(named)
            if key is None:
                self.assertion_errors.append(f"unknown certificate {named!r}")
                return False
            claims = jwt.decode(assertion, key, algorithms=["RS256", "PS256"],
                                audience=f"{self.base_url}/{self.tenant}/oauth2/v2.0/token",
                                options={"require": ["exp", "aud", "iss", "sub"]})
        except jwt.PyJWTError as exc:
            self.assertion_errors.append(repr(exc))
            return False
        return bool(claims.get("iss") == claims.get("sub") == self.client_id)

    def _app_graph(self, method: str, path: str, query: dict[str, str],
                   headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], Any]:
        """Graph as an app-only token sees it: ``/users/{id}/…`` routes, permissions and
        the application access policy, then the mailbox's own routes."""
        if "Calendars.ReadWrite" not in self.app_permissions and \
                "Calendars.Read" not in self.app_permissions:
            return _graph_error(403, "ErrorAccessDenied",
                                "Access is denied. Check credentials and try again.")
        if path == "/organization" and method == "GET":
            self.requests.append((method, path))
            return 200, {}, {"value": [{"id": self.tenant_id, "verifiedDomains": [
                {"name": d, "isDefault": i == 0, "isInitial": d.endswith(".onmicrosoft.com"),
                 "type": "Managed"} for i, d in enumerate(self.verified_domains)]}]}
        if path == "/me" or path.startswith("/me/"):
            return _graph_error(400, "BadRequest", "/me request is only valid with delegated "
                                                   "authentication flow.")
        m = re.fullmatch(r"/users/([^/]+)(/.*)?", path)
        if m is None:
            if path.startswith("/subscriptions") or path == "/$batch":
                return self._graph(APP, method, path, query, headers, body)
            return _graph_error(400, "BadRequest", f"unsupported {method} {path}")
        ref = unquote(m.group(1)).lower()
        box = next((b for b in self.mailboxes.values()
                    if b.email.lower() == ref or b.oid == ref), None)
        if box is None:
            return _graph_error(404, "ErrorInvalidUser",
                                f"The requested user '{unquote(m.group(1))}' is invalid.")
        if self.access_policy is not None and box.email.lower() not in {
                e.lower() for e in self.access_policy}:
            return _graph_error(403, "ErrorAccessDenied", "Access to OData is disabled.")
        if "POST" == method and (m.group(2) or "").endswith("/events") and \
                "Calendars.ReadWrite" not in self.app_permissions:
            return _graph_error(403, "ErrorAccessDenied", "Access is denied. Check "
                                                          "credentials and try again.")
        status, extra, answer = self._graph(box.email, method, "/me" + (m.group(2) or ""),
                                            query, headers, body)
        if isinstance(answer, dict):  # links name the route that was asked for
            for key in ("@odata.nextLink", "@odata.deltaLink"):
                if isinstance(answer.get(key), str):
                    answer[key] = answer[key].replace(f"{GRAPH_PREFIX}/me/",
                                                      f"{GRAPH_PREFIX}/users/{m.group(1)}/", 1)
        return status, extra, answer

    def _issue(self, email: str | None, scope: str,
               confidential: bool = False) -> dict[str, Any]:
        assert email is not None, "no mailbox signed in"
        box = self.mailboxes[email]
        at, rt = "at-" + secrets.token_urlsafe(24), "rt-" + secrets.token_urlsafe(24)
        self.access_tokens[at] = email
        self.refresh_tokens[rt] = email
        if confidential:
            self.confidential_tokens.add(rt)
        now = int(time.time())
        claims = {"aud": self.client_id, "iss": self._issuer(), "iat": now, "nbf": now,
                  "exp": now + 3600, "name": box.display_name, "oid": box.oid,
                  "preferred_username": email, "sub": box.oid, "tid": self.tenant_id,
                  "ver": "2.0"}
        id_token = ".".join([_b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode()),
                             _b64url(json.dumps(claims).encode()),
                             _b64url(secrets.token_bytes(32))])
        granted = " ".join(s for s in scope.split() if s not in ("openid", "profile",
                                                                   "offline_access"))
        return {"token_type": "Bearer", "scope": granted or "Calendars.ReadWrite User.Read",
                "expires_in": 3600, "ext_expires_in": 3600, "access_token": at,
                "refresh_token": rt, "id_token": id_token,
                "client_info": _b64url(json.dumps({"uid": box.oid,
                                                   "utid": self.tenant_id}).encode())}

    # --- Graph ----------------------------------------------------------------------------

    def _graph(self, email: str, method: str, path: str, query: dict[str, str],
               headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], Any]:
        if email.startswith(APP) and not (path.startswith("/subscriptions")
                                          or path == "/$batch"):
            return self._app_graph(method, path, query, headers, body)
        if email.startswith(APP):  # subscriptions of an app: the mailbox is in the resource
            return self._app_subscriptions(method, path, headers, body)
        box = self.mailboxes[email]
        self.requests.append((method, path))
        data: Any = json.loads(body) if body else None
        # Prefer: outlook.timezone="…" names the zone of start/end in answers; without it
        # Graph answers in UTC
        m = re.search(r'outlook\.timezone="([^"]+)"', headers.get("prefer", ""))
        view_zone = m.group(1) if m and supported_zone(m.group(1)) else "UTC"
        if path == "/me" and method == "GET":
            return 200, {}, {"id": box.oid, "mail": email, "userPrincipalName": email,
                             "displayName": box.display_name}
        if path == "/me/calendars" and method == "GET":
            return 200, {}, {"value": [dict(c) for c in box.calendars.values()]}
        if path == "/subscriptions" and method == "POST":
            return self._subscribe(box, data or {})
        m = re.fullmatch(r"/subscriptions/([^/]+)", path)
        if m:
            return self._subscription(box, method, m.group(1), data or {})
        m = re.fullmatch(r"/me/calendars/([^/]+)", path)
        if m and method == "DELETE":
            if not self._delete_calendar(box, m.group(1)):
                return _graph_error(404, "ErrorItemNotFound",
                                    "The specified object was not found in the store.")
            return 204, {}, b""
        m = re.fullmatch(r"/me/calendars/([^/]+)/calendarView/delta", path)
        if m and method == "GET":
            return self._delta(box, m.group(1), query, headers, view_zone)
        m = re.fullmatch(r"/me/calendars/([^/]+)/events", path)
        if m:
            if m.group(1) not in box.calendars:
                return _graph_error(404, "ErrorItemNotFound",
                                "The specified object was not found in the store.")
            if method == "POST":
                return self._create(box, m.group(1), data or {}, view_zone)
            if method == "GET":
                return self._list(box, m.group(1), query, view_zone)
        m = re.fullmatch(r"/me(?:/calendars/([^/]+))?/events/([^/]+)", path)
        if m:
            return self._item(box, m.group(1), m.group(2), method, query, headers, data,
                              view_zone)
        return _graph_error(400, "BadRequest", f"unsupported {method} {path}")

    def _batch(self, email: str, body: bytes) -> tuple[int, dict[str, str], Any]:
        try:
            reqs = json.loads(body)["requests"]
        except (ValueError, KeyError, TypeError):
            return _graph_error(400, "BadRequest", "Invalid batch payload.")
        if len(reqs) > MAX_BATCH:
            return _graph_error(400, "BadRequest",
                                f"Number of batch request steps exceeds the maximum of "
                                f"{MAX_BATCH}.")
        with self.lock:
            self.batch_sizes.append(len(reqs))
        responses = []
        for req in reqs:
            with self.lock:
                throttled = self._batch_throttles.pop(0) if self._batch_throttles else None
            if throttled is not None:
                status, headers, payload = _graph_error(
                    429, "TooManyRequests", "Please retry later.",
                    {"Retry-After": str(throttled)})
            else:
                url = req.get("url", "")
                item_headers = {k.lower(): v for k, v in (req.get("headers") or {}).items()}
                raw = json.dumps(req["body"]).encode() if req.get("body") is not None else b""
                parts = urlsplit(url if url.startswith("/") else "/" + url)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                with self.lock:
                    status, headers, payload = self._graph(email, req.get("method", "GET"),
                                                           parts.path, query, item_headers,
                                                           raw)
            responses.append({"id": req.get("id"), "status": status,
                              "headers": {"Content-Type": "application/json", **headers},
                              "body": payload if payload not in (b"", None) else None})
        responses.reverse()  # the documented contract: order is not guaranteed
        return 200, {}, {"responses": responses}

    # events ------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _store_new(self, box: Mailbox, cal_id: str, data: dict[str, Any]) -> dict[str, Any]:
        ev_id = "AAMkEv" + secrets.token_urlsafe(24)
        now = self.clock()
        ev = {"subject": "", "body": {"contentType": "text", "content": ""},
              "isAllDay": False, "showAs": "busy", "sensitivity": "normal",
              "isCancelled": False, "type": "singleInstance",
              "responseStatus": {"response": "organizer", "time": "0001-01-01T00:00:00Z"},
              "location": {"displayName": ""}, "categories": [], "attendees": [],
              "organizer": {"emailAddress": {"name": box.display_name, "address": box.email}},
              **data}
        if ev.get("recurrence"):
            ev["type"] = "seriesMaster"
        ev.update({"id": ev_id, "_calendar": cal_id, "changeKey": "",
                   "createdDateTime": now.isoformat().replace("+00:00", "Z"),
                   "iCalUId": "040000008200E00074C5B7101A82E008" + secrets.token_hex(20)})
        box.events[ev_id] = ev
        self._touch(box, ev, "created")
        return ev

    def _touch(self, box: Mailbox, ev: dict[str, Any], change: str) -> None:
        ev["changeKey"] = f"ck{self._next_seq()}"
        ev["lastModifiedDateTime"] = self.clock().isoformat().replace("+00:00", "Z")
        self._notify(box, ev, change)

    def _public(self, ev: dict[str, Any], view_zone: str, expand: str | None = None,
                box: Mailbox | None = None) -> dict[str, Any]:
        out = {k: copy.deepcopy(v) for k, v in ev.items()
               if not k.startswith("_") and k != "singleValueExtendedProperties"}
        out["@odata.etag"] = f'W/"{ev["changeKey"]}"'
        out["calendarId"] = ev.get("_calendar")
        out["originalStartTimeZone"] = ev["start"]["timeZone"]
        out["originalEndTimeZone"] = ev["end"]["timeZone"]
        if not ev.get("isAllDay"):  # all-day events keep their dates
            for side in ("start", "end"):
                local = _parse_local(ev[side]["dateTime"]).replace(
                    tzinfo=_zone(ev[side]["timeZone"]))
                shown = local.astimezone(_zone(view_zone)).replace(tzinfo=None)
                out[side] = {"dateTime": _fmt(shown), "timeZone": view_zone}
        if expand:
            m = re.search(r"id eq '((?:[^']|'')*)'", expand)
            wanted = m.group(1).replace("''", "'").lower() if m else None
            props = [p for p in ev.get("singleValueExtendedProperties") or []
                     if wanted is None or p["id"].lower() == wanted]
            if props:
                out["singleValueExtendedProperties"] = copy.deepcopy(props)
        if out.get("transactionId") is None:
            out.pop("transactionId", None)
        return out

    @staticmethod
    def _bad_zone(data: dict[str, Any]) -> tuple[int, dict[str, str], Any] | None:
        for field_ in ("start", "end"):
            side = data.get(field_)
            if isinstance(side, dict) and not supported_zone(side.get("timeZone")):
                return _graph_error(400, "TimeZoneNotSupportedException",
                                    "A valid TimeZone value must be specified. The following "
                                    f"TimeZone value is not supported: '{side.get('timeZone')}'.")
        return None

    def _create(self, box: Mailbox, cal_id: str, data: dict[str, Any],
                view_zone: str) -> tuple[int, dict[str, str], Any]:
        if not box.calendars[cal_id]["canEdit"]:
            return _graph_error(403, "ErrorAccessDenied", "Access is denied.")
        for field_ in ("start", "end"):
            if not isinstance(data.get(field_), dict) or "dateTime" not in data[field_]:
                return _graph_error(400, "ErrorInvalidRequest", f"{field_} is required")
        refused = self._bad_zone(data)
        if refused is not None:
            return refused
        txn = data.get("transactionId")
        if txn:
            for ev in box.events.values():
                if ev["_calendar"] == cal_id and ev.get("transactionId") == txn:
                    return 201, {}, self._public(ev, view_zone)
        ev = self._store_new(box, cal_id, copy.deepcopy(data))
        return 201, {}, self._public(ev, view_zone)

    def _list(self, box: Mailbox, cal_id: str, query: dict[str, str],
              view_zone: str) -> tuple[int, dict[str, str], Any]:
        found = [e for e in box.events.values() if e["_calendar"] == cal_id]
        flt = query.get("$filter")
        if flt:
            m = re.fullmatch(r"singleValueExtendedProperties/Any\(ep: ep/id eq "
                             r"'((?:[^']|'')*)' and ep/value eq '((?:[^']|'')*)'\)", flt.strip())
            if not m:
                return _graph_error(400, "ErrorInvalidUrlQueryFilter", "unsupported filter")
            pid, value = (g.replace("''", "'") for g in m.groups())
            found = [e for e in found if any(
                p["id"].lower() == pid.lower() and p["value"] == value
                for p in e.get("singleValueExtendedProperties") or [])]
        top = int(query.get("$top", "10"))
        return 200, {}, {"value": [self._public(e, view_zone, query.get("$expand"), box)
                                   for e in found[:top]]}

    def _item(self, box: Mailbox, cal_id: str | None, ev_id: str, method: str,
              query: dict[str, str], headers: dict[str, str], data: Any,
              view_zone: str) -> tuple[int, dict[str, str], Any]:
        ev = box.events.get(ev_id)
        if ev is None or (cal_id is not None and ev["_calendar"] != cal_id):
            return _graph_error(404, "ErrorItemNotFound",
                                "The specified object was not found in the store.")
        if method == "GET":
            return 200, {}, self._public(ev, view_zone, query.get("$expand"), box)
        if_match = headers.get("if-match")
        if if_match and if_match not in ("*", f'W/"{ev["changeKey"]}"'):
            return _graph_error(412, "ErrorIrresolvableConflict",
                                "The send or update operation could not be performed because "
                                "the change key passed in the request does not match the "
                                "current change key for the item.")
        if method == "PATCH":
            changes = dict(data or {})
            refused = self._bad_zone(changes)
            if refused is not None:
                return refused
            changes.pop("transactionId", None)  # cannot change after create
            for k, v in changes.items():
                if k == "singleValueExtendedProperties":
                    props = {p["id"].lower(): p for p in ev.get(k) or []}
                    props.update({p["id"].lower(): p for p in v})
                    ev[k] = list(props.values())
                else:
                    ev[k] = v
            self._touch(box, ev, "updated")
            return 200, {}, self._public(ev, view_zone)
        if method == "DELETE":
            self._bury(box, ev)
            del box.events[ev_id]
            self._notify(box, ev, "deleted")
            return 204, {}, b""
        return _graph_error(405, "MethodNotAllowed", method)

    # instances ---------------------------------------------------------------------------

    def _instances(self, box: Mailbox, cal_id: str, start: dt.datetime,
                   end: dt.datetime) -> dict[str, tuple[str, dict[str, Any]]]:
        """Instances overlapping [start, end): id -> (version, stored-shape event)."""
        out: dict[str, tuple[str, dict[str, Any]]] = {}
        for ev in box.events.values():
            if ev["_calendar"] != cal_id:
                continue
            if ev.get("recurrence"):
                for inst in self._expand(ev):
                    if self._overlaps(inst, start, end):
                        version = ev["changeKey"] + "/" + json.dumps(
                            (ev.get("_exceptions") or {}).get(inst["_day"]), sort_keys=True)
                        out[inst["id"]] = (version, inst)
            elif self._overlaps(ev, start, end):
                out[ev["id"]] = (ev["changeKey"], ev)
        return out

    @staticmethod
    def _span(ev: dict[str, Any]) -> tuple[dt.datetime, dt.datetime]:
        tz = _zone(ev["start"]["timeZone"])
        s = _parse_local(ev["start"]["dateTime"]).replace(tzinfo=tz)
        e = _parse_local(ev["end"]["dateTime"]).replace(tzinfo=_zone(ev["end"]["timeZone"]))
        return s.astimezone(UTC), e.astimezone(UTC)

    def _overlaps(self, ev: dict[str, Any], start: dt.datetime, end: dt.datetime) -> bool:
        s, e = self._span(ev)
        return s < end and e > start

    def _expand(self, master: dict[str, Any]) -> list[dict[str, Any]]:
        pattern = master["recurrence"]["pattern"]
        rng = master["recurrence"]["range"]
        first = _parse_local(master["start"]["dateTime"])
        length = _parse_local(master["end"]["dateTime"]) - first
        interval = int(pattern.get("interval", 1))
        days = [d.lower() for d in pattern.get("daysOfWeek") or []]
        names = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
        limit = int(rng.get("numberOfOccurrences") or 0) if rng["type"] == "numbered" else 0
        until = dt.date.fromisoformat(rng["endDate"]) if rng["type"] == "endDate" else None
        day = dt.date.fromisoformat(rng.get("startDate") or first.date().isoformat())
        out: list[dict[str, Any]] = []
        count = 0
        horizon = day + dt.timedelta(days=800)
        week0 = day - dt.timedelta(days=day.weekday())
        while day <= (until or horizon) and (not limit or count < limit):
            if pattern["type"] == "daily":
                hit = (day - first.date()).days % interval == 0
            else:
                week = ((day - dt.timedelta(days=day.weekday())) - week0).days // 7
                hit = names[day.weekday()] in (days or [names[first.weekday()]]) \
                    and week % interval == 0
            if hit:
                count += 1
                exc = (master.get("_exceptions") or {}).get(day.isoformat(), "none")
                if exc is not None:
                    start = dt.datetime.combine(day, first.time())
                    inst = {k: copy.deepcopy(v) for k, v in master.items()
                            if k not in ("recurrence", "_exceptions")}
                    inst.update({
                        "id": f"{master['id']}_{day.strftime('%Y%m%d')}",
                        "type": "occurrence", "seriesMasterId": master["id"],
                        "recurrence": None, "_day": day.isoformat(),
                        "start": {"dateTime": _fmt(start),
                                  "timeZone": master["start"]["timeZone"]},
                        "end": {"dateTime": _fmt(start + length),
                                "timeZone": master["end"]["timeZone"]},
                        "originalStart": _fmt(start)})
                    if exc != "none":
                        inst.update(copy.deepcopy(exc))
                        inst["type"] = "exception"
                    out.append(inst)
            day += dt.timedelta(days=1)
        return out

    # delta -------------------------------------------------------------------------------

    def _delta(self, box: Mailbox, cal_id: str, query: dict[str, str],
               headers: dict[str, str], view_zone: str) -> tuple[int, dict[str, str], Any]:
        if cal_id not in box.calendars:
            return _graph_error(404, "ErrorItemNotFound",
                                "The specified object was not found in the store.")
        prefer = headers.get("prefer", "")
        m = re.search(r"odata\.maxpagesize=(\d+)", prefer)
        page_size = int(m.group(1)) if m else self.page_size
        if "$skiptoken" in query:
            state = self.skip_tokens.pop(query["$skiptoken"], None)
            if state is None:
                return _graph_error(410, "syncStateNotFound",
                                    "The sync state generation is not found.")
            return self._page(box, cal_id, state, view_zone)
        if "$deltatoken" in query:
            previous = self.delta_tokens.get(query["$deltatoken"])
            if previous is None:
                return _graph_error(410, "syncStateNotFound",
                                    "The sync state generation is not found.")
            start, end = previous["start"], previous["end"]
            known: dict[str, str] = dict(previous["snapshot"])
            replay: list[str] = previous["sent"] if self.replay_delta else []
            # change-log semantics: what was deleted since the token, even if created after it
            for seq, cal, inst_id in box.tombstones:
                if seq > previous["seq"] and cal == cal_id:
                    known.setdefault(inst_id, "")
        else:
            try:
                start = _parse_instant(query["startDateTime"])
                end = _parse_instant(query["endDateTime"])
            except (KeyError, ValueError):
                return _graph_error(400, "ErrorInvalidParameter",
                                    "startDateTime and endDateTime are required")
            known, replay = {}, []
        current = self._instances(box, cal_id, start, end)
        items: list[dict[str, Any]] = []
        for inst_id, (version, inst) in current.items():
            if known.get(inst_id) != version or inst_id in replay:
                items.append(self._public(inst, view_zone))
        for inst_id in known:
            if inst_id not in current:
                items.append({"@odata.type": "#microsoft.graph.event", "id": inst_id,
                              "@removed": {"reason": "deleted"}})
        pages: list[list[dict[str, Any]]] = []
        rest = list(items)
        pattern = list(self.page_pattern or [])
        i = 0
        while rest or not pages:
            size = min(pattern[i % len(pattern)], page_size) if pattern else page_size
            i += 1
            pages.append(rest[:size])
            rest = rest[size:]
            if i > 10000:
                break
        if self.replay_delta and len(pages) > 1 and pages[0]:
            pages[1] = [pages[0][-1], *pages[1]]  # a duplicate across pages
        state = {"pages": pages, "start": start, "end": end, "seq": self._seq,
                 "snapshot": {k: v for k, (v, _inst) in current.items()},
                 "sent": [x["id"] for x in items if "@removed" not in x]}
        return self._page(box, cal_id, state, view_zone)

    def _page(self, box: Mailbox, cal_id: str, state: dict[str, Any],
              view_zone: str) -> tuple[int, dict[str, str], Any]:
        page = state["pages"].pop(0)
        base = f"{self.graph_url}/me/calendars/{quote(cal_id, safe='')}/calendarView/delta"
        doc: dict[str, Any] = {"@odata.context": f"{self.graph_url}/$metadata#Collection(event)",
                               "value": page}
        if state["pages"]:
            token = secrets.token_urlsafe(16)
            self.skip_tokens[token] = state
            doc["@odata.nextLink"] = f"{base}?$skiptoken={token}"
        else:
            token = secrets.token_urlsafe(16)
            self.delta_tokens[token] = {"start": state["start"], "end": state["end"],
                                        "seq": state["seq"],
                                        "snapshot": state["snapshot"], "sent": state["sent"]}
            doc["@odata.deltaLink"] = f"{base}?$deltatoken={token}"
        return 200, {}, doc

    # subscriptions -----------------------------------------------------------------------

    def _app_subscriptions(self, method: str, path: str, headers: dict[str, str],
                           body: bytes) -> tuple[int, dict[str, str], Any]:
        self.requests.append((method, path))
        data: Any = json.loads(body) if body else {}
        if path == "/subscriptions" and method == "POST":
            m = re.fullmatch(r"/?users/([^/]+)(/calendars/[^/]+/events)",
                             str(data.get("resource", "")))
            if m is None:
                return _graph_error(400, "InvalidRequest", "unsupported resource")
            ref = unquote(m.group(1)).lower()
            box = next((b for b in self.mailboxes.values()
                        if b.email.lower() == ref or b.oid == ref), None)
            if box is None:
                return _graph_error(404, "ErrorInvalidUser", "The requested user is invalid.")
            if self.access_policy is not None and box.email.lower() not in {
                    e.lower() for e in self.access_policy}:
                return _graph_error(403, "ErrorAccessDenied", "Access to OData is disabled.")
            status, extra, answer = self._subscribe(box, {**data, "resource": "me" + m.group(2)})
            if status == 201:
                self.subscriptions[answer["id"]]["resource"] = data["resource"]
                answer["resource"] = data["resource"]
            return status, extra, answer
        m = re.fullmatch(r"/subscriptions/([^/]+)", path)
        sub = self.subscriptions.get(m.group(1)) if m else None
        if sub is None:
            return _graph_error(404, "ResourceNotFound", "subscription not found")
        return self._subscription(self.mailboxes[sub["_email"]], method, m.group(1) if m else "",
                                  data)

    def _subscribe(self, box: Mailbox, data: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        for key in ("changeType", "notificationUrl", "resource", "expirationDateTime"):
            if not data.get(key):
                return _graph_error(400, "InvalidRequest", f"{key} is required")
        try:
            expires = _parse_instant(data["expirationDateTime"])
        except ValueError:
            return _graph_error(400, "InvalidRequest", "bad expirationDateTime")
        now = self.clock()
        if expires <= now or expires > now + dt.timedelta(minutes=MAX_SUBSCRIPTION_MINUTES):
            return _graph_error(400, "InvalidRequest",
                                "Subscription expiration can only be 10070 minutes in the "
                                "future.")
        m = re.fullmatch(r"/?me/calendars/([^/]+)/events", data["resource"])
        if not m or m.group(1) not in box.calendars:
            return _graph_error(400, "InvalidRequest", "unsupported resource")
        token = secrets.token_urlsafe(16)
        try:
            status, text = self.deliver(data["notificationUrl"], {"validationToken": token},
                                        b"", {"Content-Type": "text/plain; charset=utf-8"})
        except Exception as exc:  # noqa: BLE001 - any failure fails the handshake
            status, text = 0, repr(exc)
        if status != 200 or text != token:
            return _graph_error(400, "ValidationError",
                                "Subscription validation request failed. Notification "
                                "endpoint must respond with 200 OK to validation request.")
        sub_id = secrets.token_hex(16)
        sub = {"id": sub_id, "resource": data["resource"], "changeType": data["changeType"],
               "notificationUrl": data["notificationUrl"],
               "clientState": data.get("clientState"),
               "expirationDateTime": expires.isoformat().replace("+00:00", "Z"),
               "applicationId": self.client_id, "_calendar": m.group(1), "_email": box.email}
        self.subscriptions[sub_id] = sub
        return 201, {}, {k: v for k, v in sub.items() if not k.startswith("_")}

    def _subscription(self, box: Mailbox, method: str, sub_id: str,
                      data: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
        sub = self.subscriptions.get(sub_id)
        if sub is None or sub["_email"] != box.email:
            return _graph_error(404, "ResourceNotFound", "subscription not found")
        if method == "DELETE":
            del self.subscriptions[sub_id]
            return 204, {}, b""
        if method == "PATCH":
            expires = _parse_instant(data["expirationDateTime"])
            now = self.clock()
            if expires <= now or expires > now + dt.timedelta(minutes=MAX_SUBSCRIPTION_MINUTES):
                return _graph_error(400, "InvalidRequest", "bad expirationDateTime")
            sub["expirationDateTime"] = expires.isoformat().replace("+00:00", "Z")
            return 200, {}, {k: v for k, v in sub.items() if not k.startswith("_")}
        if method == "GET":
            return 200, {}, {k: v for k, v in sub.items() if not k.startswith("_")}
        return _graph_error(405, "MethodNotAllowed", method)

    def _notify(self, box: Mailbox, ev: dict[str, Any], change: str) -> None:
        for sub in self.subscriptions.values():
            if sub["_email"] == box.email and sub["_calendar"] == ev.get("_calendar") and \
                    change in sub["changeType"].split(","):
                resource = f"Users/{box.oid}/Events/{ev['id']}"
                self.pending_notifications.append((sub["notificationUrl"], {
                    "subscriptionId": sub["id"], "clientState": sub["clientState"],
                    "changeType": change, "resource": resource,
                    "subscriptionExpirationDateTime": sub["expirationDateTime"],
                    "tenantId": self.tenant_id,
                    "resourceData": {"@odata.type": "#Microsoft.Graph.Event",
                                     "@odata.id": resource,
                                     "@odata.etag": f'W/"{ev.get("changeKey")}"',
                                     "id": ev["id"]}}))

    def send_notifications(self) -> list[int]:
        """POST the queued change notifications (one per URL batch); returns statuses."""
        with self.lock:
            pending, self.pending_notifications = self.pending_notifications, []
        by_url: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for url, note in pending:
            by_url[url].append(note)
        statuses = []
        for url, notes in by_url.items():
            status, _text = self.deliver(url, {}, json.dumps({"value": notes}).encode(),
                                         {"Content-Type": "application/json"})
            statuses.append(status)
        return statuses

    @staticmethod
    def _deliver_http(url: str, params: dict[str, str], body: bytes,
                      headers: dict[str, str]) -> tuple[int, str]:
        import httpx

        resp = httpx.post(url, params=params, content=body, headers=headers, timeout=10)
        return resp.status_code, resp.text


class registered_outlook:  # noqa: N801 - used as a context manager
    """Register an OutlookFactory whose transports trust ``emulator`` (so the core, which
    finds factories by name, reaches it); restores the previous registration on exit."""

    def __init__(self, emulator: GraphEmulator,
                 sleep: Callable[[float], None] = lambda _s: None) -> None:
        self.emulator = emulator
        self.sleep = sleep

    def __enter__(self) -> Any:
        from calsync_outlook import OutlookFactory, OutlookHttp

        from calsync.sync import connector as connector_module

        self._registry = connector_module._registry
        self._previous = self._registry.get("outlook")
        self.http = OutlookHttp(self.emulator.identity_session(), self.emulator.graph_client())
        self.factory = OutlookFactory(http=self.http, sleep=self.sleep)
        connector_module.register_factory(self.factory)
        return self.factory

    def __exit__(self, *exc: Any) -> None:
        if self._previous is None:
            self._registry.pop("outlook", None)
        else:
            self._registry["outlook"] = self._previous
        self.http.graph.close()
        self.http.identity.close()


@contextlib.contextmanager
def signed_in_connector(emulator: GraphEmulator, settings: Any,
                        sleep: Callable[[float], None] = lambda _s: None) -> Iterator[Any]:
    """An Outlook connector signed in through the device flow (the real msal and httpx
    against ``emulator``; ``settings`` from ``emulator.configure``), closed at the end."""
    from calsync_outlook import OutlookFactory, OutlookHttp

    from calsync.sync.connector import ConnectContext

    http = OutlookHttp(emulator.identity_session(), emulator.graph_client())
    try:
        factory = OutlookFactory(http=http, sleep=sleep)
        ctx = factory.device_flow(ConnectContext("outlook", None, "", {}, settings),
                                  lambda _m: None)
        connector = factory.connect(ctx)
        try:
            yield connector
        finally:
            connector.close()
    finally:
        http.graph.close()
        http.identity.close()
