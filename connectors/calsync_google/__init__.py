"""calsync's Google Calendar connector (entry point ``google = calsync_google:GoogleFactory``).

The factory builds :class:`~calsync_google.connector.GoogleConnector` from a
:class:`~calsync.sync.connector.ConnectContext` and offers the optional hooks the core
calls by name: ``device_flow`` (CLI sign-in), ``authorization_url``/``exchange_code``
(web sign-in with PKCE), ``parse_notification`` (webhook), ``subscribe``/``unsubscribe``
(watch channels).

``ctx.http`` may be an ``httplib2.Http`` (or a callable making one) to inject the
transport; ``ctx.options`` may carry ``sleep`` (retry waits and device-flow polling),
``random`` (a ``() -> float`` for the retry jitter) and ``max_retries`` (else
``sync.max_retries``) for tests. Stored credentials: ``{"token", "refresh_token", "expiry",
"scopes", "version"}``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from calsync.errors import CalsyncError, NeedsReauth, UserError
from calsync.sync.connector import ConnectContext, RemoteCalendar
from calsync.sync.retry import RetryPolicy
from calsync_google import delegation, oauth
from calsync_google.client import RequestRunner, http_maker, make_credentials, make_http
from calsync_google.connector import GoogleConnector
from calsync_google.mapping import event_id_for_key
from calsync_google.push import parse_notification

if TYPE_CHECKING:
    from calsync.push import PushResult



class _InjectedRandom(random.Random):
    """A Random whose ``random()`` is the injected ``() -> float`` (tests fix the jitter)."""

    def __init__(self, draw: Callable[[], float]) -> None:
        super().__init__()
        self._draw = draw

    def random(self) -> float:
        return self._draw()


def retry_policy(ctx: ConnectContext) -> RetryPolicy:
    """The one retry layer of this connection's requests (see calsync.sync.retry)."""
    draw = ctx.options.get("random")
    policy = RetryPolicy.from_settings(ctx.settings, rng=_InjectedRandom(draw) if draw else None)
    policy.sleep = ctx.options.get("sleep", time.sleep)  # an empty recorder list is falsy
    if "max_retries" in ctx.options:
        policy.max_retries = int(ctx.options["max_retries"])
    return policy

__all__ = ["GoogleConnector", "GoogleFactory", "event_id_for_key"]


class GoogleFactory:
    """Entry-point target serving the provider ``google``."""

    providers: tuple[str, ...] = ("google",)

    def connect(self, ctx: ConnectContext) -> GoogleConnector:
        if delegation.is_domain_wide(ctx.credentials):
            return self._connect_domain_wide(ctx)
        if not ctx.credentials.get("refresh_token") and not ctx.credentials.get("token"):
            raise NeedsReauth(f"Google account {ctx.account or '?'} has no stored sign-in; "
                              "reconnect with `calsync connect google USER`")
        settings = ctx.settings
        http = make_http(settings, ctx.http)
        runner = RequestRunner(ctx.account, retry_policy(ctx))
        creds = make_credentials(settings, ctx.credentials)
        return GoogleConnector(settings, ctx.account, creds, http, runner,
                               more_http=http_maker(settings, ctx.http))

    def _connect_domain_wide(self, ctx: ConnectContext) -> GoogleConnector:
        """A user of a Google Workspace domain, impersonated by the domain's service
        account (``subject`` = the user's e-mail)."""
        if not ctx.account or "@" not in ctx.account:
            raise UserError(f"a Google Workspace connection needs the user's e-mail address "
                            f"as its account, got {ctx.account!r}")
        creds = delegation.impersonating(ctx.credentials, ctx.account)
        runner = RequestRunner(ctx.account, retry_policy(ctx))
        key = ctx.credentials.get("service_account_key") or {}
        domain = str(ctx.credentials.get("domain") or ctx.account.rsplit("@", 1)[1])
        runner.refusal = lambda error: delegation.refused(
            ctx.account, domain, str(key.get("client_id") or "?"), error)
        return GoogleConnector(ctx.settings, ctx.account, creds,
                               make_http(ctx.settings, ctx.http), runner,
                               store_credentials=False,
                               more_http=http_maker(ctx.settings, ctx.http))

    def check_delegation(self, ctx: ConnectContext) -> None:
        """Before a Workspace domain is connected: impersonate one of its users
        (``ctx.account``); a delegation that is not authorised at all (or a key Google
        refuses) raises UserError with what the admin must do. A refusal of that one user
        is left to their own connection. The key file is checked first, with or without
        a user to try."""
        delegation.check_key(ctx.credentials.get("service_account_key"))
        if not ctx.account:
            return
        connector = self.connect(ctx)
        try:
            connector.list_calendars()
        except delegation.NotAuthorised as exc:
            raise UserError(exc.message) from exc
        except CalsyncError:
            pass
        finally:
            connector.close()

    def verify(self, ctx: ConnectContext) -> tuple[ConnectContext, list[RemoteCalendar]]:
        if delegation.is_domain_wide(ctx.credentials):
            connector = self.connect(ctx)
            try:
                return ctx, connector.list_calendars()
            finally:
                connector.close()
        connector = self.connect(ctx)
        try:
            try:
                account = connector.primary_email()
                calendars = connector.list_calendars()
            except NeedsReauth as exc:
                raise UserError(f"Google did not accept the sign-in: {exc}") from exc
            creds = connector.credentials() or ctx.credentials
            return dataclasses.replace(ctx, account=account, credentials=creds), calendars
        finally:
            connector.close()

    # --- sign-in hooks ------------------------------------------------------------------

    def device_flow(self, ctx: ConnectContext, prompt: Callable[[str], None]) -> ConnectContext:
        http = make_http(ctx.settings, ctx.http)
        creds = oauth.run_device_flow(ctx.settings, http, prompt,
                                      sleep=ctx.options.get("sleep", time.sleep),
                                      now=ctx.options.get("now"))
        return self._with_account(dataclasses.replace(ctx, credentials=creds, http=http))

    def authorization_url(self, ctx: ConnectContext, state: str, code_challenge: str,
                          redirect_uri: str) -> str:
        return oauth.authorization_url(ctx.settings, state, code_challenge, redirect_uri)

    def exchange_code(self, ctx: ConnectContext, code: str, code_verifier: str,
                      redirect_uri: str) -> ConnectContext:
        http = make_http(ctx.settings, ctx.http)
        now_fn = ctx.options.get("now")
        now = now_fn() if now_fn else dt.datetime.now(dt.timezone.utc)
        creds = oauth.exchange_code(ctx.settings, http, code, code_verifier, redirect_uri, now)
        return self._with_account(dataclasses.replace(ctx, credentials=creds, http=http))

    def revoke(self, ctx: ConnectContext) -> bool:
        """Revoke the stored sign-in at Google (disconnect); True when Google revoked it."""
        token = ctx.credentials.get("refresh_token") or ctx.credentials.get("token")
        if not token:
            return False
        return oauth.revoke(ctx.settings, make_http(ctx.settings, ctx.http), str(token))

    def _with_account(self, ctx: ConnectContext) -> ConnectContext:
        connector = self.connect(ctx)
        try:
            account = connector.primary_email()
            creds = connector.credentials() or ctx.credentials
        finally:
            connector.close()
        return dataclasses.replace(ctx, account=account, credentials=creds)

    # --- push hooks ---------------------------------------------------------------------

    @staticmethod
    def parse_notification(headers: Mapping[str, str], query: Mapping[str, str],
                           body: bytes) -> PushResult:
        return parse_notification(headers, query, body)

    @staticmethod
    def subscribe(connector: GoogleConnector, calendar_id: str, notify_url: str,
                  secret: str) -> tuple[str, str | None, dt.datetime]:
        return connector.subscribe(calendar_id, notify_url, secret)

    @staticmethod
    def unsubscribe(connector: GoogleConnector, remote_id: str,
                    resource_id: str | None = None) -> None:
        connector.unsubscribe(remote_id, resource_id)

    @staticmethod
    def notify_url(base_url: str) -> str:
        return base_url.rstrip("/") + "/webhooks/google"
