"""The Outlook connector driven through the REAL msal and httpx against the Graph/identity
emulator: sign-in, refresh, re-auth, delta paging, resync, idempotent creates, tagging,
throttling, $batch, the per-mailbox concurrency cap, mapping and recurring series."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Iterator

import pytest

from calsync.config import Settings, load_settings
from calsync.errors import AlreadyExists, NeedsReauth, PreconditionFailed, \
    ProviderUnavailable, SyncTokenInvalid, Throttled
from calsync.sync.connector import ConnectContext, OutgoingEvent, Window
from calsync_outlook import OutlookFactory, OutlookHttp
from calsync_outlook.connector import OutlookConnector
from calsync_outlook.mapping import CALSYNC_PROPERTY_ID
from calsync_outlook.timezones import iana_to_windows, windows_to_iana
from tests.conftest import SECRET
from tests.emulators.graph import GraphEmulator

UTC = dt.timezone.utc
USER = "jane@contoso.com"
WINDOW = Window(dt.datetime(2026, 11, 1, tzinfo=UTC), dt.datetime(2027, 3, 1, tzinfo=UTC))


@pytest.fixture
def em() -> Iterator[GraphEmulator]:
    with GraphEmulator() as emulator:
        emulator.add_mailbox(USER)
        yield emulator


@pytest.fixture
def settings(em: GraphEmulator) -> Settings:
    return em.configure(load_settings(env={"CALSYNC_SECRET_KEY": SECRET}))


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def factory(em: GraphEmulator, sleeps: Sleeps) -> Iterator[OutlookFactory]:
    http = OutlookHttp(em.identity_session(), em.graph_client())
    yield OutlookFactory(http=http, sleep=sleeps)
    http.graph.close()
    http.identity.close()


def signed_in(factory: OutlookFactory, settings: Settings) -> ConnectContext:
    prompts: list[str] = []
    ctx = factory.device_flow(ConnectContext("outlook", None, "", {}, settings),
                              prompts.append)
    assert prompts and "enter the code" in prompts[0]
    return ctx


@pytest.fixture
def connector(factory: OutlookFactory, settings: Settings) -> Iterator[OutlookConnector]:
    c = factory.connect(signed_in(factory, settings))
    yield c
    c.close()


def job(key: str = "job-j1", **changes: object) -> OutgoingEvent:
    base = OutgoingEvent(key=key, uid=f"{key}@calsync", summary="Install: Acme",
                         start=dt.datetime(2026, 11, 24, 15, tzinfo=UTC),
                         end=dt.datetime(2026, 11, 24, 17, tzinfo=UTC), all_day=False,
                         tzid="America/Chicago", description="Gate code 1234",
                         location="1 Main St")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def external(em: GraphEmulator, cal: str, subject: str = "Dentist", day: int = 25,
             **extra: object) -> dict:
    return em.put_event(USER, cal, {
        "subject": subject,
        "start": {"dateTime": f"2026-11-{day:02d}T09:00:00", "timeZone": "Central Standard Time"},
        "end": {"dateTime": f"2026-11-{day:02d}T10:00:00", "timeZone": "Central Standard Time"},
        **extra})


# --- sign-in ----------------------------------------------------------------------------

def test_device_flow_through_msal_stores_a_token_cache_and_the_account(
        em: GraphEmulator, factory: OutlookFactory, settings: Settings) -> None:
    ctx = signed_in(factory, settings)
    assert ctx.account == USER
    assert ctx.credentials["client"] == "public"
    assert '"RefreshToken"' in ctx.credentials["token_cache"]
    assert em.token_requests["urn:ietf:params:oauth:grant-type:device_code"] == 1
    verified, calendars = factory.verify(ctx)
    assert verified.account == USER
    assert [c.name for c in calendars] == ["Calendar"]


def test_read_only_calendar_is_reported(em: GraphEmulator, connector: OutlookConnector) -> None:
    em.add_calendar(USER, "Holidays", can_edit=False)
    cals = {c.name: c.read_only for c in connector.list_calendars()}
    assert cals == {"Calendar": False, "Holidays": True}


def test_expired_access_token_is_refreshed_once_and_credentials_change(
        em: GraphEmulator, connector: OutlookConnector) -> None:
    assert connector.credentials() is None  # nothing changed yet
    em.expire_access_tokens()
    assert connector.list_calendars()
    assert em.token_requests["refresh_token"] == 1
    changed = connector.credentials()
    assert changed is not None and changed["token_cache"]
    assert connector.credentials() is None  # reported once
    # the refreshed cache works for a new connector without another refresh
    assert em.token_requests["refresh_token"] == 1


def test_revoked_refresh_token_needs_reauth_without_a_retry_storm(
        em: GraphEmulator, connector: OutlookConnector) -> None:
    em.expire_access_tokens()
    em.revoke_refresh_tokens(USER)
    cal = em.calendar_id(USER)
    with pytest.raises(NeedsReauth, match="calsync connect outlook"):
        connector.changes(cal, None, WINDOW)
    for _ in range(3):
        with pytest.raises(NeedsReauth):
            connector.list_calendars()
    assert em.token_requests["refresh_token"] == 1
    assert em.unauthorized == 1 and em.http_requests == 0  # the one 401; nothing after


# --- delta ------------------------------------------------------------------------------

def test_delta_pages_short_and_empty_then_no_op_costs_one_request(
        em: GraphEmulator, connector: OutlookConnector) -> None:
    cal = em.calendar_id(USER)
    ids = {external(em, cal, f"Visit {i}", day=2 + i)["id"] for i in range(12)}
    em.page_pattern = [3, 0, 1, 5]
    first = connector.changes(cal, None, WINDOW)
    assert first.full and {e.remote_id for e in first.changed} == ids
    assert first.requests > 4  # several pages, some empty
    em.page_pattern = None
    again = connector.changes(cal, first.token, WINDOW)
    assert again.changed == [] and again.deleted == [] and again.requests == 1
    assert not again.full


def test_delta_reports_edits_removals_and_tolerates_replays(
        em: GraphEmulator, connector: OutlookConnector) -> None:
    cal = em.calendar_id(USER)
    a, b = external(em, cal, "A", day=3), external(em, cal, "B", day=4)
    em.page_size = 1
    em.replay_delta = True
    first = connector.changes(cal, None, WINDOW)
    assert sorted(e.summary for e in first.changed) == ["A", "B"]  # duplicate across pages
    em.edit_event(USER, a["id"], {"subject": "A2"})
    em.remove_event(USER, b["id"])
    second = connector.changes(cal, first.token, WINDOW)
    assert [e.summary for e in second.changed if e.remote_id == a["id"]] == ["A2"]
    assert second.deleted == [b["id"]]
    third = connector.changes(cal, second.token, WINDOW)  # replays of A2 only
    assert all(e.summary == "A2" for e in third.changed)


def test_delta_filters_to_the_window(em: GraphEmulator, connector: OutlookConnector) -> None:
    cal = em.calendar_id(USER)
    external(em, cal, "Inside", day=20)
    em.put_event(USER, cal, {"subject": "Far", "start": {"dateTime": "2028-01-01T09:00:00",
                                                         "timeZone": "UTC"},
                             "end": {"dateTime": "2028-01-01T10:00:00", "timeZone": "UTC"}})
    assert [e.summary for e in connector.changes(cal, None, WINDOW).changed] == ["Inside"]


def test_expired_delta_token_raises_sync_token_invalid_then_full_resync_works(
        em: GraphEmulator, connector: OutlookConnector) -> None:
    cal = em.calendar_id(USER)
    external(em, cal)
    token = connector.changes(cal, None, WINDOW).token
    em.expire_delta_tokens()
    with pytest.raises(SyncTokenInvalid):
        connector.changes(cal, token, WINDOW)
    full = connector.changes(cal, None, WINDOW)
    assert full.full and len(full.changed) == 1


# --- writes -----------------------------------------------------------------------------

def test_create_tags_with_extended_property_and_find_by_key_adopts(
        em: GraphEmulator, connector: OutlookConnector) -> None:
    cal = em.calendar_id(USER)
    created = connector.create(cal, job())
    stored = em.events_in(USER, cal)[0]
    assert stored["singleValueExtendedProperties"] == [{"id": CALSYNC_PROPERTY_ID,
                                                        "value": "job-j1"}]
    # Graph accepts this IANA name (its documented "additional time zones")
    assert stored["start"] == {"dateTime": "2026-11-24T09:00:00",
                               "timeZone": "America/Chicago"}
    found = connector.find_by_key(cal, "job-j1", WINDOW)
    assert found is not None and found.remote_id == created.remote_id
    assert found.calsync_key == "job-j1"
    assert connector.find_by_key(cal, "job-other", WINDOW) is None
    # delta has no extended properties; the transactionId still names calsync's key
    pulled = connector.changes(cal, None, WINDOW).changed
    assert [e.calsync_key for e in pulled] == ["job-j1"]


def test_transaction_id_dedups_a_create_repeated_after_a_crash(
        em: GraphEmulator, connector: OutlookConnector) -> None:
    cal = em.calendar_id(USER)
    first = connector.create(cal, job())  # ... crash before the link is stored ...
    again = connector.create(cal, job())
    assert again.remote_id == first.remote_id
    assert len(em.events_in(USER, cal)) == 1
    # a repeat with different content reports the existing copy for adoption
    with pytest.raises(AlreadyExists) as info:
        connector.create(cal, job(summary="Install: Acme (moved)"))
    assert info.value.context["remote_id"] == first.remote_id
    assert len(em.events_in(USER, cal)) == 1


def test_update_and_delete_use_if_match(em: GraphEmulator,
                                        connector: OutlookConnector) -> None:
    cal = em.calendar_id(USER)
    created = connector.create(cal, job())
    updated = connector.update(cal, created.remote_id, job(summary="Repair"), created.etag)
    assert updated.summary == "Repair" and updated.etag != created.etag
    with pytest.raises(PreconditionFailed):
        connector.update(cal, created.remote_id, job(), created.etag)
    with pytest.raises(PreconditionFailed):
        connector.delete(cal, created.remote_id, created.etag)
    connector.delete(cal, created.remote_id, updated.etag)
    assert em.events_in(USER, cal) == []
    connector.delete(cal, created.remote_id, updated.etag)  # already gone: fine


def test_all_day_event_round_trip(em: GraphEmulator, connector: OutlookConnector) -> None:
    cal = em.calendar_id(USER)
    connector.create(cal, job("time_off-t1", summary="Time off", all_day=True,
                              start=dt.date(2026, 12, 24), end=dt.date(2026, 12, 27),
                              tzid="Europe/Berlin"))
    stored = em.events_in(USER, cal)[0]
    assert stored["isAllDay"] and stored["start"]["timeZone"] == "Europe/Berlin"
    event = connector.changes(cal, None, WINDOW).changed[0]
    assert event.all_day and event.start == dt.date(2026, 12, 24)
    assert event.end == dt.date(2026, 12, 27) and event.tzid == "Europe/Berlin"
    assert event.occurrences[0].start == dt.datetime(2026, 12, 23, 23, tzinfo=UTC)


# --- throttling, batching, concurrency -------------------------------------------------

def test_429_honours_retry_after(em: GraphEmulator, connector: OutlookConnector,
                                 sleeps: Sleeps) -> None:
    em.throttle(2, retry_after=7)
    assert connector.list_calendars()
    assert sleeps == [7.0, 7.0]


def test_throttling_beyond_the_retry_budget_raises_throttled(
        em: GraphEmulator, connector: OutlookConnector, sleeps: Sleeps) -> None:
    em.throttle(10, retry_after=3, status=503)
    with pytest.raises(Throttled) as info:
        connector.list_calendars()
    assert info.value.retry_after == 3.0
    assert len(sleeps) == 4  # sync.max_retries


def test_server_errors_back_off_then_succeed_or_fail_as_unavailable(
        em: GraphEmulator, connector: OutlookConnector, sleeps: Sleeps) -> None:
    em.fail(2, status=500)
    assert connector.list_calendars()
    assert len(sleeps) == 2 and all(0 < s <= 60 for s in sleeps)
    assert sleeps[1] >= sleeps[0]  # exponential with jitter: 0.25-0.5 s, then 0.5-1 s
    em.fail(10, status=502)
    with pytest.raises(ProviderUnavailable, match="HTTP 502"):
        connector.list_calendars()


def test_batch_create_retries_only_the_throttled_items(
        em: GraphEmulator, connector: OutlookConnector, sleeps: Sleeps) -> None:
    cal = em.calendar_id(USER)
    em.throttle_batch_items(3, retry_after=5)
    results = connector.create_many(cal, [job(f"job-{i}") for i in range(45)])
    assert all(not isinstance(r, Exception) for r in results)
    assert [r.calsync_key for r in results] == [f"job-{i}" for i in range(45)]
    assert len(em.events_in(USER, cal)) == 45
    posts = [p for m, p in em.requests if m == "POST" and p.endswith("/events")]
    assert len(posts) == 45  # each created once
    # 20 + 20 + 5 first; then only the 3 throttled items again (in one or more retries,
    # as the three batches run in parallel)
    assert sum(em.batch_sizes) == 45 + 3 and sorted(em.batch_sizes)[-3:] == [5, 20, 20]
    assert 5.0 in sleeps


def test_at_most_four_concurrent_requests_per_mailbox(
        em: GraphEmulator, factory: OutlookFactory, settings: Settings) -> None:
    ctx = signed_in(factory, settings)
    connectors = [factory.connect(ctx) for _ in range(3)]  # share the mailbox's semaphore
    em.latency = 0.02
    errors: list[BaseException] = []

    def work(c: OutlookConnector) -> None:
        try:
            for _ in range(8):
                c.list_calendars()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(connectors[i % 3],)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert 2 <= em.max_in_flight[USER] <= 4
    for c in connectors:
        c.close()


# --- mapping ----------------------------------------------------------------------------

@pytest.mark.parametrize(("show_as", "busy"), [
    ("free", "free"), ("tentative", "tentative"), ("busy", "busy"), ("oof", "oof"),
    ("workingElsewhere", "workingElsewhere"), ("unknown", "busy")])
def test_show_as_mapping(em: GraphEmulator, connector: OutlookConnector, show_as: str,
                         busy: str) -> None:
    cal = em.calendar_id(USER)
    external(em, cal, showAs=show_as)
    assert connector.changes(cal, None, WINDOW).changed[0].busy == busy


@pytest.mark.parametrize(("sensitivity", "private"), [
    ("normal", False), ("personal", False), ("private", True), ("confidential", True)])
def test_sensitivity_mapping(em: GraphEmulator, connector: OutlookConnector,
                             sensitivity: str, private: bool) -> None:
    cal = em.calendar_id(USER)
    external(em, cal, sensitivity=sensitivity)
    assert connector.changes(cal, None, WINDOW).changed[0].private is private


def test_cancelled_declined_and_timezone(em: GraphEmulator,
                                         connector: OutlookConnector) -> None:
    cal = em.calendar_id(USER)
    external(em, cal, "Cancelled", day=5, isCancelled=True)
    external(em, cal, "Declined", day=6, responseStatus={"response": "declined"})
    events = {e.summary: e for e in connector.changes(cal, None, WINDOW).changed}
    assert events["Cancelled"].status == "cancelled"
    assert events["Declined"].response == "declined"
    assert events["Declined"].tzid == "America/Chicago"
    assert events["Declined"].start == dt.datetime(2026, 11, 6, 15, tzinfo=UTC)


def test_recurring_series_with_exceptions_expands_to_occurrences(
        em: GraphEmulator, connector: OutlookConnector) -> None:
    cal = em.calendar_id(USER)
    master = em.put_event(USER, cal, {
        "subject": "Standup",
        "start": {"dateTime": "2026-11-02T08:00:00", "timeZone": "Central Standard Time"},
        "end": {"dateTime": "2026-11-02T08:15:00", "timeZone": "Central Standard Time"},
        "recurrence": {"pattern": {"type": "weekly", "interval": 1,
                                   "daysOfWeek": ["monday", "wednesday"]},
                       "range": {"type": "numbered", "startDate": "2026-11-02",
                                 "numberOfOccurrences": 6}}})
    em.set_exception(USER, master["id"], dt.date(2026, 11, 4), None)  # cancelled one
    em.set_exception(USER, master["id"], dt.date(2026, 11, 9), {
        "subject": "Standup (late)",
        "start": {"dateTime": "2026-11-09T10:00:00", "timeZone": "Central Standard Time"},
        "end": {"dateTime": "2026-11-09T10:15:00", "timeZone": "Central Standard Time"}})
    first = connector.changes(cal, None, WINDOW)
    starts = sorted((e.occurrences[0].start, e.summary) for e in first.changed)
    assert [s for s, _ in starts] == [
        dt.datetime(2026, 11, 2, 14, tzinfo=UTC), dt.datetime(2026, 11, 9, 16, tzinfo=UTC),
        dt.datetime(2026, 11, 11, 14, tzinfo=UTC), dt.datetime(2026, 11, 16, 14, tzinfo=UTC),
        dt.datetime(2026, 11, 18, 14, tzinfo=UTC)]
    assert all(e.recurring and len(e.occurrences) == 1 for e in first.changed)
    assert ("Standup (late)" in {s for _, s in starts})
    em.set_exception(USER, master["id"], dt.date(2026, 11, 16), None)
    second = connector.changes(cal, first.token, WINDOW)
    gone = f"{master['id']}_20261116"
    assert second.deleted == [gone]
    # the series' other occurrences may be re-reported (the master changed): same data
    assert {e.remote_id for e in second.changed} <= {e.remote_id for e in first.changed} - {gone}


def test_windows_iana_table() -> None:
    assert windows_to_iana("Central Standard Time") == "America/Chicago"
    assert windows_to_iana("W. Europe Standard Time") == "Europe/Berlin"
    assert windows_to_iana("Pacific Standard Time") == "America/Los_Angeles"
    assert windows_to_iana("Eastern Standard Time") == "America/New_York"
    assert windows_to_iana("GMT Standard Time") == "Europe/London"
    assert windows_to_iana("UTC") == "UTC"
    assert windows_to_iana("Europe/Paris") == "Europe/Paris"
    assert windows_to_iana("Made Up Standard Time") is None
    assert iana_to_windows("America/Chicago") == "Central Standard Time"
    assert iana_to_windows("Europe/Berlin") == "W. Europe Standard Time"
    assert iana_to_windows("Etc/UTC") == "UTC"


def test_dedup_returning_an_older_description_is_reported_for_adoption(
        em: GraphEmulator, connector: OutlookConnector) -> None:
    cal = em.calendar_id(USER)
    first = connector.create(cal, job())
    with pytest.raises(AlreadyExists) as info:
        connector.create(cal, job(description="Gate code 9999"))
    assert info.value.context["remote_id"] == first.remote_id
    assert len(em.events_in(USER, cal)) == 1


def test_web_code_flow_as_a_confidential_client_refreshes_with_its_secret(
        sleeps: Sleeps) -> None:
    import base64
    import hashlib
    import re
    import secrets

    import httpx

    with GraphEmulator(client_secret="s3cret-value") as em:
        em.add_mailbox(USER)
        settings = em.configure(load_settings(env={"CALSYNC_SECRET_KEY": SECRET}))
        http = OutlookHttp(em.identity_session(), em.graph_client())
        factory = OutlookFactory(http=http, sleep=sleeps)
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(
            hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        redirect = "https://calsync.example.com/oauth/outlook/callback"
        ctx = ConnectContext("outlook", None, "", {}, settings)
        url = factory.authorization_url(ctx, "st4te", challenge, redirect)
        with httpx.Client(verify=em.ssl_context(), trust_env=False) as browser:
            page = browser.get(url).text
        fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', page))
        assert fields["state"] == "st4te"
        with pytest.raises(Exception, match="invalid_grant"):  # wrong verifier
            factory.exchange_code(ctx, fields["code"], verifier + "x", redirect)
        url = factory.authorization_url(ctx, "st4te2", challenge, redirect)
        with httpx.Client(verify=em.ssl_context(), trust_env=False) as browser:
            fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', browser.get(url).text))
        signed = factory.exchange_code(ctx, fields["code"], verifier, redirect)
        assert signed.account == USER and signed.credentials["client"] == "confidential"
        connector = factory.connect(signed)
        em.expire_access_tokens()
        assert connector.list_calendars()
        assert em.token_requests["refresh_token"] == 1  # accepted: the secret was right
        connector.close()
        http.graph.close()
        http.identity.close()
