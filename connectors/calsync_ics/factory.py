"""The entry-point target :class:`IcsFactory` (provider ``ics``).

The feed's address is stored as the connection's credential (sealed like a password:
private calendar links carry their key); the account shown is :func:`feed_label`.

``ConnectContext.options`` understood: ``timezone`` (IANA zone for floating times when the
feed names none; default UTC), ``emails`` (the owner's addresses, to find their PARTSTAT),
``sleep`` (the retry layer's wait) and ``clock`` (a callable giving the current time, for
the refresh schedule; default the wall clock).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

from calsync.errors import ConnectFailed, UserError
from calsync.ical import ParseOptions, zone_or_utc
from calsync.sync.connector import ConnectContext, RemoteCalendar, Window
from calsync.sync.retry import RetryPolicy
from calsync_ics.connector import DEFAULT_MAX_REFRESH, IcsConnector
from calsync_ics.feed import FeedInvalid
from calsync_ics.fetch import DEFAULT_MAX_BYTES, FeedFetcher, feed_digest, feed_label, normalise_url


def _setting(settings: Any, section: str, key: str, default: Any) -> Any:
    return getattr(getattr(settings, section, None), key, default)


class IcsFactory:
    providers: tuple[str, ...] = ("ics",)

    def _url(self, ctx: ConnectContext) -> str:
        url = str((ctx.credentials or {}).get("url") or ctx.url or "")
        if not url:
            raise UserError("a subscribed calendar needs its address (--url)")
        return normalise_url(url)

    def connect(self, ctx: ConnectContext) -> IcsConnector:
        url = self._url(ctx)
        sleep = ctx.options.get("sleep")
        retry = (RetryPolicy.from_settings(ctx.settings, sleep=sleep)
                 if getattr(ctx.settings, "sync", None) is not None
                 else RetryPolicy(sleep=sleep) if sleep else RetryPolicy())
        fetcher = FeedFetcher(
            url, http=ctx.http,
            timeout=float(_setting(ctx.settings, "sync", "request_timeout_seconds", 30.0)),
            max_bytes=int(_setting(ctx.settings, "ics", "max_bytes", DEFAULT_MAX_BYTES)),
            retry=retry)
        options = ParseOptions(
            default_tz=zone_or_utc(ctx.options.get("timezone")),
            owner_emails=frozenset(str(e).lower() for e in ctx.options.get("emails", ())),
            max_occurrences=int(_setting(ctx.settings, "sync", "max_occurrences", 1000)))
        max_refresh = dt.timedelta(seconds=float(_setting(
            ctx.settings, "ics", "max_refresh_seconds", DEFAULT_MAX_REFRESH.total_seconds())))
        clock = ctx.options.get("clock")
        if clock is not None:
            return IcsConnector(fetcher, options, max_refresh=max_refresh, clock=clock)
        return IcsConnector(fetcher, options, max_refresh=max_refresh)

    def verify(self, ctx: ConnectContext) -> tuple[ConnectContext, list[RemoteCalendar]]:
        """Fetch the feed once: an address that does not answer, or answers something that
        is not iCalendar, is refused with what to check. The stored context keeps the
        address in the (sealed) credentials only."""
        url = self._url(ctx)
        connector = self.connect(replace(ctx, credentials={"url": url}))
        try:
            connector.fetcher.verifying = True
            fetched = connector.fetcher.get()
            now = connector.clock()
            try:
                contents = connector._read(fetched.body or b"", Window(now, now))
            except FeedInvalid as exc:
                raise ConnectFailed(f"{exc.message.split('; the last')[0]}", field="url") \
                    from exc
        finally:
            connector.close()
        calendar = RemoteCalendar(id=feed_digest(url), name=contents.name or feed_label(url),
                                  read_only=True)
        stored = replace(ctx, url=None, account=feed_label(url), credentials={"url": url})
        return stored, [calendar]
