"""The entry-point targets: :class:`CaldavFactory` (provider ``caldav``) and
:class:`IcloudFactory` (provider ``icloud``: CalDAV with an Apple ID and an app-specific
password, discovered from ``https://caldav.icloud.com/``).

``ConnectContext.options`` understood: ``timezone`` (IANA zone for floating times;
default UTC), ``emails`` (the account owner's addresses, to find their PARTSTAT),
``sync_collection`` (False forces the ctag/etag fallback), ``home_url`` (skip discovery),
``sleep`` (the retry layer's wait, injectable as for Google; default ``time.sleep``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from calsync.errors import UserError
from calsync.ical import ParseOptions, zone_or_utc
from calsync.sync.connector import ConnectContext, RemoteCalendar
from calsync.sync.retry import RetryPolicy
from calsync_caldav.connector import CaldavConnector
from calsync_caldav.transport import DavSession


def _setting(settings: Any, section: str, key: str, default: Any) -> Any:
    return getattr(getattr(settings, section, None), key, default)


def retry_policy(ctx: ConnectContext) -> RetryPolicy:
    """The one retry layer of this connection's requests (caps from ``[sync]``)."""
    sleep = ctx.options.get("sleep")
    if getattr(ctx.settings, "sync", None) is None:
        return RetryPolicy(sleep=sleep) if sleep else RetryPolicy()
    return RetryPolicy.from_settings(ctx.settings, sleep=sleep)


class CaldavFactory:
    providers: tuple[str, ...] = ("caldav",)
    provider_label = "CalDAV"

    def _url(self, ctx: ConnectContext) -> str:
        url = (ctx.url or "").strip()
        if not url.startswith(("http://", "https://")):
            raise UserError(f"{self.provider_label} needs a server URL starting with "
                            f"http:// or https://, got {url!r}")
        return url

    def connect(self, ctx: ConnectContext) -> CaldavConnector:
        url = self._url(ctx)
        creds = ctx.credentials or {}
        username, password = str(creds.get("username") or ""), str(creds.get("password") or "")
        session = DavSession(
            username, password, http=ctx.http,
            timeout=float(_setting(ctx.settings, "sync", "request_timeout_seconds", 30.0)),
            verify_tls=bool(_setting(ctx.settings, "caldav", "verify_tls", True)),
            label=f"{ctx.provider} connection {ctx.account or username}",
            retry=retry_policy(ctx),
        )
        emails = {str(e).lower() for e in ctx.options.get("emails", ())}
        for candidate in (ctx.account, username):
            if candidate and "@" in candidate:
                emails.add(candidate.lower())
        options = ParseOptions(
            default_tz=zone_or_utc(ctx.options.get("timezone")),
            owner_emails=frozenset(emails),
            max_occurrences=int(_setting(ctx.settings, "sync", "max_occurrences", 1000)),
        )
        connector = CaldavConnector(session, url, options,
                                    use_sync_collection=bool(ctx.options.get("sync_collection",
                                                                              True)))
        if ctx.options.get("home_url"):
            connector._home = str(ctx.options["home_url"])
        return connector

    def verify(self, ctx: ConnectContext) -> tuple[ConnectContext, list[RemoteCalendar]]:
        """Discover the home set and list calendars; bad URL or password -> UserError.
        The returned context has ``url`` = the home set (later syncs skip discovery)."""
        connector = self.connect(ctx)
        try:
            connector.session.verifying = True
            home = connector.home()
            calendars = connector.list_calendars()
        finally:
            connector.close()
        options = {**ctx.options, "home_url": home}
        return replace(ctx, url=home, options=options), calendars


class IcloudFactory(CaldavFactory):
    providers = ("icloud",)
    provider_label = "iCloud"

    def _url(self, ctx: ConnectContext) -> str:
        url = ctx.url or _setting(ctx.settings, "icloud", "url", "https://caldav.icloud.com/")
        return super()._url(replace(ctx, url=url))
