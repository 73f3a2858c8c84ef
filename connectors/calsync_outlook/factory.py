"""OutlookFactory: builds connectors and carries the optional hooks the core calls by name
(``device_flow``, ``authorization_url``, ``exchange_code``, ``parse_notification``,
``subscribe``, ``renew``, ``unsubscribe``).

Transports are injected: ``ctx.http`` (or the factory's ``http``) is an :class:`OutlookHttp`
holding a requests.Session-like object for msal and an httpx.Client for Graph; without one,
fresh clients are made (and closed with the connector).
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

import httpx

from calsync.errors import NeedsReauth, UserError
from calsync.push import PushNotice, PushResult
from calsync.sync.connector import ConnectContext, RemoteCalendar
from calsync_outlook import app_only, auth
from calsync_outlook.connector import OutlookConnector
from calsync_outlook.graph import GraphClient


@dataclass(frozen=True)
class OutlookHttp:
    identity: Any  # requests.Session-like, msal's http_client
    graph: httpx.Client


class OutlookFactory:
    providers = ("outlook",)

    def __init__(self, http: OutlookHttp | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None) -> None:
        self.http = http
        self.sleep = sleep  # the retry policy's waits (tests inject a recorder)
        self.rng = rng  # the retry policy's jitter

    def _transports(self, ctx: ConnectContext) -> tuple[Any, httpx.Client, list[Any]]:
        http = ctx.http or self.http
        if isinstance(http, OutlookHttp):
            return http.identity, http.graph, []
        import requests

        identity = requests.Session()
        graph = httpx.Client(timeout=ctx.settings.sync.request_timeout_seconds)
        return identity, graph, [graph, identity]

    # --- ConnectorFactory -----------------------------------------------------------------

    def connect(self, ctx: ConnectContext) -> OutlookConnector:
        if app_only.is_app_only(ctx.credentials):
            return self._connect_app_only(ctx)
        identity, graph_http, owned = self._transports(ctx)
        try:
            tokens = auth.TokenSource(ctx.settings, identity, ctx.credentials, ctx.account)
        except Exception:
            for obj in owned:
                obj.close()
            raise
        graph = GraphClient(ctx.settings, graph_http, tokens, ctx.account or
                            str(ctx.credentials.get("username") or ""), sleep=self.sleep,
                            rng=self.rng)
        return OutlookConnector(graph, tokens, ctx.account, owned)

    def _connect_app_only(self, ctx: ConnectContext) -> OutlookConnector:
        """A mailbox of a Microsoft 365 tenant through app-only access (``/users/{email}``);
        the tenant's token is shared by all its connectors in this process."""
        http = ctx.http or self.http
        injected = http.identity if isinstance(http, OutlookHttp) else None
        tokens = app_only.tenant_tokens(ctx.settings, ctx.credentials, injected)
        if isinstance(http, OutlookHttp):
            graph_http, owned = http.graph, []
        else:
            graph_http = httpx.Client(timeout=ctx.settings.sync.request_timeout_seconds)
            owned = [graph_http]
        mailbox = ctx.account
        if not mailbox or "@" not in mailbox:
            raise UserError(f"a Microsoft 365 tenant connection needs the user's e-mail "
                            f"address as its account, got {mailbox!r}")
        graph = GraphClient(ctx.settings, graph_http, tokens, mailbox,  # type: ignore[arg-type]
                            sleep=self.sleep, rng=self.rng)
        return OutlookConnector(graph, tokens, mailbox, owned,
                                root=f"/users/{quote(mailbox, safe='@')}")

    def tenant_domains(self, ctx: ConnectContext) -> list[str]:
        """The tenant's verified domains (``GET /organization``), checking on the way that
        the app-only credentials work: refused credentials raise UserError naming what to
        fix, a missing admin consent too."""
        http = ctx.http or self.http
        injected = http.identity if isinstance(http, OutlookHttp) else None
        tokens = app_only.tenant_tokens(ctx.settings, ctx.credentials, injected)
        graph_http = http.graph if isinstance(http, OutlookHttp) else httpx.Client(
            timeout=ctx.settings.sync.request_timeout_seconds)
        try:
            graph = GraphClient(ctx.settings, graph_http, tokens,  # type: ignore[arg-type]
                                f"tenant {ctx.credentials.get('tenant')}", sleep=self.sleep,
                                rng=self.rng)
            try:
                resp = graph.request("GET", "/organization?$select=verifiedDomains")
            except NeedsReauth as exc:
                raise UserError(exc.message) from exc
        finally:
            if not isinstance(http, OutlookHttp):
                graph_http.close()
        if resp.status == 403:
            raise UserError(f"Microsoft 365 tenant {ctx.credentials.get('tenant')}: Graph "
                            f"refused the app ({resp.error_code()}): an admin must grant the "
                            f"application permission Calendars.ReadWrite (and "
                            f"Organization.Read.All) with admin consent")
        if resp.status != 200:
            raise UserError(f"Microsoft 365 tenant check failed: HTTP {resp.status} "
                            f"{resp.error_code()}")
        domains: list[str] = []
        for org in resp.body.get("value", []):
            for d in org.get("verifiedDomains") or []:
                if d.get("name"):
                    domains.append(str(d["name"]).lower())
        return domains

    def verify(self, ctx: ConnectContext) -> tuple[ConnectContext, list[RemoteCalendar]]:
        if app_only.is_app_only(ctx.credentials):  # one mailbox of a tenant: its calendars
            connector = self.connect(ctx)
            try:
                return ctx, connector.list_calendars()
            finally:
                connector.close()
        connector = self.connect(ctx)
        try:
            resp = connector.graph.request("GET", "/me?$select=mail,userPrincipalName")
            if resp.status != 200:
                raise UserError(f"Outlook account check failed: HTTP {resp.status} "
                                f"{resp.error_code()}")
            account = resp.body.get("mail") or resp.body.get("userPrincipalName") or ctx.account
            calendars = connector.list_calendars()
            creds = connector.credentials() or ctx.credentials
        finally:
            connector.close()
        return replace(ctx, account=str(account), credentials=creds), calendars

    # --- sign-in hooks --------------------------------------------------------------------

    def device_flow(self, ctx: ConnectContext,
                    prompt: Callable[[str], None]) -> ConnectContext:
        identity, _graph, owned = self._transports(ctx)
        try:
            creds, result = auth.run_device_flow(ctx.settings, identity, prompt)
        finally:
            for obj in owned:
                obj.close()
        account = (result.get("id_token_claims") or {}).get("preferred_username") or ""
        return replace(ctx, credentials=creds, account=str(account))

    def authorization_url(self, ctx: ConnectContext, state: str, code_challenge: str,
                          redirect_uri: str) -> str:
        identity, _graph, owned = self._transports(ctx)
        try:
            return auth.auth_code_url(ctx.settings, identity, state, code_challenge,
                                      redirect_uri)
        finally:
            for obj in owned:
                obj.close()

    def exchange_code(self, ctx: ConnectContext, code: str, code_verifier: str,
                      redirect_uri: str) -> ConnectContext:
        identity, _graph, owned = self._transports(ctx)
        try:
            creds, result = auth.redeem_code(ctx.settings, identity, code, code_verifier,
                                             redirect_uri)
        finally:
            for obj in owned:
                obj.close()
        account = (result.get("id_token_claims") or {}).get("preferred_username") or ""
        return replace(ctx, credentials=creds, account=str(account))

    # --- push hooks -----------------------------------------------------------------------

    def parse_notification(self, headers: Mapping[str, str], query: Mapping[str, str],
                           body: bytes) -> PushResult:
        """Graph's validation handshake (``?validationToken=``: echo it as text/plain) or a
        change-notification collection ``{"value": [{subscriptionId, clientState, …}]}``."""
        if "validationToken" in query:
            return PushResult(reply_text=str(query["validationToken"]))
        try:
            doc = json.loads(body or b"{}")
            notices = tuple(PushNotice(subscription_id=str(n["subscriptionId"]),
                                       secret=str(n.get("clientState") or ""),
                                       change=n.get("changeType"))
                            for n in doc.get("value", []))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError("webhooks/outlook: the body is not a Graph change-notification "
                            "collection") from exc
        return PushResult(notices=notices)

    def subscribe(self, connector: OutlookConnector, calendar_id: str, notify_url: str,
                  secret: str) -> tuple[str, str | None, dt.datetime]:
        return connector.subscribe(calendar_id, notify_url, secret)

    def renew(self, connector: OutlookConnector, remote_id: str,
              resource_id: str | None = None) -> dt.datetime:
        return connector.renew(remote_id)

    def unsubscribe(self, connector: OutlookConnector, remote_id: str,
                    resource_id: str | None = None) -> None:
        connector.unsubscribe(remote_id)
