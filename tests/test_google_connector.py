"""The Google connector through the real google-api-python-client against the emulator:
calendars, sync tokens and paging, 410 resets, cancelled events, recurring series,
idempotent creates, If-Match, field mapping, rate limits and provider errors."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from typing import Any

import pytest

from calsync.errors import (
    AlreadyExists,
    NotFound,
    PreconditionFailed,
    ProviderError,
    ProviderUnavailable,
    SyncTokenInvalid,
    Throttled,
)
from calsync.sync.connector import OutgoingEvent, Window, load_connector_factory
from calsync_google import GoogleConnector, event_id_for_key
from tests.emulators.google import GoogleEmulator, google_emulator_fixture, signed_in_context

UTC = dt.timezone.utc
CAL = "tech@example.com"
WINDOW = Window(dt.datetime(2026, 11, 1, tzinfo=UTC), dt.datetime(2027, 11, 1, tzinfo=UTC))
CHI = "America/Chicago"

google_emulator = google_emulator_fixture()


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def connect(em: GoogleEmulator, sleeps: Sleeps | None = None, **kw: Any) -> GoogleConnector:
    ctx = signed_in_context(em, CAL, sleep=sleeps if sleeps is not None else Sleeps(),
                            random=lambda: 0.5, **kw)
    connector = load_connector_factory("google").connect(ctx)
    assert isinstance(connector, GoogleConnector)
    return connector


def timed(summary: str, day: int, hour: int = 9, **extra: Any) -> dict[str, Any]:
    start = dt.datetime(2026, 11, day, hour, tzinfo=dt.timezone(dt.timedelta(hours=-6)))
    return {"summary": summary,
            "start": {"dateTime": start.isoformat(), "timeZone": CHI},
            "end": {"dateTime": (start + dt.timedelta(hours=1)).isoformat(), "timeZone": CHI},
            **extra}


def job(key: str = "job-j1", summary: str = "Install: Acme") -> OutgoingEvent:
    return OutgoingEvent(key=key, uid=f"{key}@calsync", summary=summary,
                         start=dt.datetime(2026, 11, 24, 15, tzinfo=UTC),
                         end=dt.datetime(2026, 11, 24, 17, tzinfo=UTC), all_day=False,
                         tzid=CHI, description="Gate code 1234", location="1 Main St")


@pytest.fixture
def em(google_emulator: GoogleEmulator) -> GoogleEmulator:
    return google_emulator


def test_factory_found_by_entry_point_and_package_does_not_shadow_google() -> None:
    import google.oauth2.credentials  # the SDK namespace stays importable

    factory = load_connector_factory("google")
    assert factory.providers == ("google",)
    assert google.oauth2.credentials.Credentials is not None


def test_list_calendars_marks_reader_and_free_busy_calendars_read_only(em: GoogleEmulator) -> None:
    em.add_calendar(CAL, "team@group.calendar.google.com", "Team", role="reader")
    em.add_calendar(CAL, "boss@example.com", "Boss", role="freeBusyReader")
    em.add_calendar(CAL, "shared@group.calendar.google.com", "Shared", role="writer")
    calendars = {c.id: c for c in connect(em).list_calendars()}
    assert set(calendars) == {CAL, "team@group.calendar.google.com", "boss@example.com",
                              "shared@group.calendar.google.com"}
    assert calendars["team@group.calendar.google.com"].read_only
    assert calendars["boss@example.com"].read_only
    assert not calendars["shared@group.calendar.google.com"].read_only
    assert not calendars[CAL].read_only
    assert calendars["team@group.calendar.google.com"].name == "Team"


def test_sync_token_paging_with_short_and_empty_pages(em: GoogleEmulator) -> None:
    for i in range(7):
        em.put_event(CAL, timed(f"e{i}", 2 + i))
    em.page_sizes = [2, 0, 1]  # documented: pages may be short or empty
    c = connect(em)
    full = c.changes(CAL, None, WINDOW)
    assert full.full and sorted(e.summary or "" for e in full.changed) == [
        f"e{i}" for i in range(7)]
    # 2 + 0 + 1 + 2 + 0 + 1 + 1 items: seven pages, each a request.
    assert full.requests == 7
    assert full.token and full.token.startswith("g1:")
    listed = [q for q in em.requests if q[1].endswith("/events")]
    assert len(listed) == 7

    em.page_sizes = None
    noop = c.changes(CAL, full.token, WINDOW)
    assert (noop.changed, noop.deleted, noop.requests, noop.full) == ([], [], 1, False)

    em.page_sizes = [1, 0]
    moved = em.events(CAL)
    first = next(e for e in moved.values() if e["summary"] == "e0")
    em.put_event(CAL, {**first, "summary": "e0 moved"})
    em.put_event(CAL, timed("e7", 20))
    inc = c.changes(CAL, noop.token, WINDOW)
    assert sorted(e.summary or "" for e in inc.changed) == ["e0 moved", "e7"]
    assert inc.requests == 3  # 1 + 0 + 1 items
    assert not inc.full
    assert inc.token != noop.token


def test_expired_sync_token_raises_and_full_resync_recovers(em: GoogleEmulator) -> None:
    em.put_event(CAL, timed("kept", 3))
    c = connect(em)
    token = c.changes(CAL, None, WINDOW).token
    em.invalidate_sync_tokens()
    with pytest.raises(SyncTokenInvalid):
        c.changes(CAL, token, WINDOW)
    again = c.changes(CAL, None, WINDOW)
    assert again.full and [e.summary for e in again.changed] == ["kept"]
    with pytest.raises(SyncTokenInvalid):
        c.changes(CAL, "v0:unknown-format", WINDOW)


def test_cancelled_events_and_instances_come_back_as_deletions(em: GoogleEmulator) -> None:
    single = em.put_event(CAL, timed("dentist", 4))
    series = em.put_event(CAL, {**timed("standup", 2), "recurrence": ["RRULE:FREQ=DAILY;COUNT=3"]})
    c = connect(em)
    token = c.changes(CAL, None, WINDOW).token
    em.remove_event(CAL, single["id"])
    gone = em.cancel_instance(CAL, series["id"], "2026-11-03T09:00:00-06:00")
    inc = c.changes(CAL, token, WINDOW)
    assert single["id"] in inc.deleted
    assert gone in inc.deleted
    assert gone == f"{series['id']}_20261103T150000Z"
    assert {e.remote_id for e in inc.changed} == {f"{series['id']}_20261102T150000Z",
                                                  f"{series['id']}_20261104T150000Z"}


def test_recurring_series_with_exceptions_expand_to_instances(em: GoogleEmulator) -> None:
    series = em.put_event(CAL, {**timed("weekly review", 2, 14),
                                "recurrence": ["RRULE:FREQ=WEEKLY;COUNT=4"]})
    em.cancel_instance(CAL, series["id"], "2026-11-09T14:00:00-06:00")
    moved = em.modify_instance(CAL, series["id"], "2026-11-16T14:00:00-06:00", {
        "summary": "weekly review (moved)",
        "start": {"dateTime": "2026-11-17T10:00:00-06:00", "timeZone": CHI},
        "end": {"dateTime": "2026-11-17T11:30:00-06:00", "timeZone": CHI}})
    full = connect(em).changes(CAL, None, WINDOW)
    got = {e.remote_id: e for e in full.changed}
    assert len(got) == 3
    assert all(e.recurring for e in got.values())
    assert got[moved].summary == "weekly review (moved)"
    assert got[moved].occurrences[0].start == dt.datetime(2026, 11, 17, 16, tzinfo=UTC)
    assert got[moved].occurrences[0].end == dt.datetime(2026, 11, 17, 17, 30, tzinfo=UTC)
    starts = sorted(e.occurrences[0].start for e in got.values())
    assert starts == [dt.datetime(2026, 11, 2, 20, tzinfo=UTC),
                      dt.datetime(2026, 11, 17, 16, tzinfo=UTC),
                      dt.datetime(2026, 11, 23, 20, tzinfo=UTC)]  # after DST: 14:00 CST
    cancelled = f"{series['id']}_20261109T200000Z"
    assert cancelled in full.deleted  # showDeleted on the full listing


def test_create_uses_client_chosen_id_and_tags_the_event(em: GoogleEmulator) -> None:
    c = connect(em)
    created = c.create(CAL, job())
    assert created.remote_id == event_id_for_key("job-j1")
    assert re.fullmatch(r"[a-v0-9]{5,1024}", created.remote_id)
    assert created.calsync_key == "job-j1"
    stored = em.events(CAL)[created.remote_id]
    assert stored["extendedProperties"]["private"]["calsyncKey"] == "job-j1"
    assert stored["start"] == {"dateTime": "2026-11-24T09:00:00-06:00", "timeZone": CHI}
    assert stored["description"] == "Gate code 1234"
    assert event_id_for_key("job-j1") == event_id_for_key("job-j1") != event_id_for_key("job-j2")


def test_crash_between_create_and_link_adopts_instead_of_duplicating(em: GoogleEmulator) -> None:
    first = connect(em)
    created = first.create(CAL, job())  # ... and the process dies before storing the link
    second = connect(em)
    with pytest.raises(AlreadyExists):
        second.create(CAL, job())
    adopted = second.find_by_key(CAL, "job-j1", WINDOW)
    assert adopted is not None and adopted.remote_id == created.remote_id
    assert adopted.etag == created.etag
    assert len([e for e in em.events(CAL).values() if e["status"] != "cancelled"]) == 1
    assert second.find_by_key(CAL, "job-unknown", WINDOW) is None


def test_find_by_key_falls_back_to_the_extended_property_filter(em: GoogleEmulator) -> None:
    em.put_event(CAL, {**timed("legacy copy", 5), "id": "legacycopy01",
                       "extendedProperties": {"private": {"calsyncKey": "block-b7"}}})
    found = connect(em).find_by_key(CAL, "block-b7", WINDOW)
    # not at the id derived from the key: only the privateExtendedProperty filter finds it
    assert found is not None and found.remote_id == "legacycopy01"
    assert found.calsync_key == "block-b7"


def test_recreating_a_deleted_copy_restores_the_reserved_id(em: GoogleEmulator) -> None:
    c = connect(em)
    created = c.create(CAL, job())
    em.remove_event(CAL, created.remote_id)  # the user deleted the job's copy
    again = c.create(CAL, job())  # the engine reverts the delete
    assert again.remote_id == created.remote_id
    assert em.events(CAL)[created.remote_id]["status"] == "confirmed"


def test_update_sends_if_match_and_delete_tolerates_missing(em: GoogleEmulator) -> None:
    c = connect(em)
    created = c.create(CAL, job())
    updated = c.update(CAL, created.remote_id, job(summary="Repair: Acme"), created.etag)
    assert updated.summary == "Repair: Acme" and updated.etag != created.etag
    with pytest.raises(PreconditionFailed):
        c.update(CAL, created.remote_id, job(summary="stale"), created.etag)
    with pytest.raises(PreconditionFailed):
        c.delete(CAL, created.remote_id, created.etag)
    assert em.events(CAL)[created.remote_id]["summary"] == "Repair: Acme"
    c.delete(CAL, created.remote_id, updated.etag)
    c.delete(CAL, created.remote_id, None)  # 410 already deleted: fine
    c.delete(CAL, "neverexisted1", None)  # 404: fine
    assert c.get(CAL, created.remote_id, WINDOW) is None
    with pytest.raises(NotFound):
        c.update(CAL, "neverexisted1", job(), None)


def test_all_day_create_and_free_busy_mapping(em: GoogleEmulator) -> None:
    c = connect(em)
    off = OutgoingEvent(key="time_off-t1", uid="t1", summary="Time off", all_day=True,
                        start=dt.date(2026, 12, 24), end=dt.date(2026, 12, 27), tzid=CHI,
                        busy="oof")
    created = c.create(CAL, off)
    stored = em.events(CAL)[created.remote_id]
    assert stored["start"] == {"date": "2026-12-24"} and stored["end"] == {"date": "2026-12-27"}
    assert stored["transparency"] == "opaque"
    assert created.all_day and created.start == dt.date(2026, 12, 24)
    free = c.create(CAL, dataclasses.replace(job("block-b1"), busy="free"))
    assert em.events(CAL)[free.remote_id]["transparency"] == "transparent"


def test_field_mapping_of_external_events(em: GoogleEmulator) -> None:
    em.put_event(CAL, {**timed("lunch", 3), "id": "transparent01", "transparency": "transparent"})
    em.put_event(CAL, {**timed("doctor", 3, 11), "id": "private0001", "visibility": "private",
                       "location": "Clinic", "description": "secret"})
    em.put_event(CAL, {**timed("hr", 3, 12), "id": "confidential1",
                       "visibility": "confidential"})
    em.put_event(CAL, {**timed("away", 4), "id": "outofoffice1", "eventType": "outOfOffice"})
    em.put_event(CAL, {**timed("home", 5), "id": "workingloc01", "eventType": "workingLocation",
                       "transparency": "transparent"})
    em.put_event(CAL, {**timed("deep work", 6), "id": "focustime001", "eventType": "focusTime"})
    em.put_event(CAL, {**timed("maybe", 7), "id": "tentative001", "status": "tentative"})
    em.put_event(CAL, {**timed("all hands", 9), "id": "declined0001",
                       "organizer": {"email": "ceo@example.com"},
                       "attendees": [{"email": "ceo@example.com", "responseStatus": "accepted"},
                                     {"email": CAL, "self": True,
                                      "responseStatus": "declined"}]})
    em.put_event(CAL, {"id": "alldayevent1", "summary": "conference",
                       "start": {"date": "2026-11-10"}, "end": {"date": "2026-11-12"}})
    em.put_event(CAL, {"id": "tokyocall001", "summary": "call",
                       "start": {"dateTime": "2026-11-12T09:00:00+09:00",
                                 "timeZone": "Asia/Tokyo"},
                       "end": {"dateTime": "2026-11-12T10:00:00+09:00",
                               "timeZone": "Asia/Tokyo"}})
    got = {e.remote_id: e for e in connect(em).changes(CAL, None, WINDOW).changed}
    assert got["transparent01"].busy == "free"
    assert got["private0001"].private and got["confidential1"].private
    assert not got["transparent01"].private
    assert got["outofoffice1"].busy == "oof"
    assert got["workingloc01"].busy == "workingElsewhere"
    assert got["focustime001"].busy == "busy"
    assert got["tentative001"].busy == "tentative" and got["tentative001"].status == "tentative"
    declined = got["declined0001"]
    assert declined.response == "declined" and declined.organizer == "ceo@example.com"
    assert declined.attendees == ["ceo@example.com", CAL]
    allday = got["alldayevent1"]
    assert allday.all_day and allday.start == dt.date(2026, 11, 10)
    # all-day spans are midnight-to-midnight in the calendar's zone (America/Chicago)
    assert allday.occurrences[0].start == dt.datetime(2026, 11, 10, 6, tzinfo=UTC)
    assert allday.occurrences[0].end == dt.datetime(2026, 11, 12, 6, tzinfo=UTC)
    tokyo = got["tokyocall001"]
    assert tokyo.tzid == "Asia/Tokyo"
    assert tokyo.occurrences[0].start == dt.datetime(2026, 11, 12, 0, tzinfo=UTC)
    assert json.loads(tokyo.raw or "{}")["id"] == "tokyocall001"


def test_unreadable_event_is_quarantined_not_dropped(em: GoogleEmulator) -> None:
    em.put_event(CAL, {"id": "brokenevent1", "summary": "broken",
                       "start": {"dateTime": "not a time"}, "end": {"dateTime": "nope"}})
    em.put_event(CAL, {**timed("fine", 3), "id": "fineevent001"})
    em.put_event(CAL, {"id": "mixedkinds01", "summary": "mixed",
                       "start": {"date": "2026-11-05"},
                       "end": {"dateTime": "2026-11-05T10:00:00Z"}})
    full = connect(em).changes(CAL, None, WINDOW)
    assert [e.remote_id for e in full.changed] == ["fineevent001"]
    reasons = {q.remote_id: q.reason for q in full.quarantined}
    assert set(reasons) == {"brokenevent1", "mixedkinds01"}
    assert "start" in reasons["brokenevent1"] and "mix" in reasons["mixedkinds01"]
    assert json.loads(full.quarantined[0].raw or "{}")["summary"] == "broken"


@pytest.mark.parametrize("status,reason", [(429, "rateLimitExceeded"),
                                           (403, "rateLimitExceeded"),
                                           (403, "userRateLimitExceeded")])
def test_rate_limits_are_retried_with_backoff(em: GoogleEmulator, status: int,
                                              reason: str) -> None:
    sleeps = Sleeps()
    c = connect(em, sleeps)
    em.fail_next(status, reason, count=2)
    assert c.list_calendars()[0].id == CAL
    # equal jitter with random() = 0.5: 0.75 * 1, 2 seconds
    assert sleeps == [0.75, 1.5]
    assert em.counts["api"] == 3
    em.fail_next(status, reason, count=5)
    with pytest.raises(Throttled) as err:
        c.list_calendars()
    # sync.max_retries (4) retries, then the runner is told to wait what would come next
    assert sleeps[2:] == [0.75, 1.5, 3.0, 6.0] and err.value.retry_after == 12.0
    assert em.counts["api"] == 3 + 5


def test_retry_after_is_honoured_then_throttled_when_retries_run_out(em: GoogleEmulator) -> None:
    sleeps = Sleeps()
    c = connect(em, sleeps)
    em.fail_next(429, "rateLimitExceeded", retry_after="7", count=10)
    with pytest.raises(Throttled) as err:
        c.changes(CAL, None, WINDOW)
    assert err.value.retry_after == 7.0
    assert sleeps == [7.0] * 4  # sync.max_retries, then the runner reschedules
    assert em.counts["api"] == 5


def test_inline_retries_follow_the_context_option(em: GoogleEmulator) -> None:
    sleeps = Sleeps()
    c = connect(em, sleeps, max_retries=0)
    em.fail_next(429, "rateLimitExceeded")
    with pytest.raises(Throttled):
        c.list_calendars()
    assert sleeps == [] and em.counts["api"] == 1


def test_server_errors_retry_then_become_provider_unavailable(em: GoogleEmulator) -> None:
    sleeps = Sleeps()
    c = connect(em, sleeps)
    em.fail_next(503, "backendError", count=2)
    assert c.list_calendars()
    assert len(sleeps) == 2
    em.fail_next(500, "backendError", count=10)
    with pytest.raises(ProviderUnavailable):
        c.list_calendars()


def test_writing_to_a_read_only_calendar_is_a_provider_error_not_retried(
        em: GoogleEmulator) -> None:
    em.add_calendar(CAL, "team@group.calendar.google.com", "Team", role="reader")
    sleeps = Sleeps()
    c = connect(em, sleeps)
    with pytest.raises(ProviderError) as err:
        c.create("team@group.calendar.google.com", job())
    assert not isinstance(err.value, (Throttled, ProviderUnavailable))
    assert "writ" in str(err.value) and sleeps == []


def test_credentials_are_returned_only_after_a_refresh(em: GoogleEmulator) -> None:
    c = connect(em)
    c.list_calendars()
    assert c.credentials() is None
    assert em.counts["token:refresh_token"] == 0


def test_static_discovery_urls_follow_the_configured_api_root() -> None:
    from calsync.config import Settings
    from calsync_google.client import api_endpoint, calendar_api

    # the discovery document's rootUrl + servicePath; api_endpoint replaces both
    assert api_endpoint("https://www.googleapis.com/") == "https://www.googleapis.com/calendar/v3/"
    real = calendar_api(Settings())
    request = real.events.list(calendarId="tech@example.com", syncToken="abc")
    assert request.uri.startswith(
        "https://www.googleapis.com/calendar/v3/calendars/tech%40example.com/events?")
    assert "syncToken=abc" in request.uri
    stop = real.channels.stop(body={"id": "c", "resourceId": "r"})
    assert stop.uri.startswith("https://www.googleapis.com/calendar/v3/channels/stop")


def test_api_calls_reach_the_emulator_under_calendar_v3(em: GoogleEmulator) -> None:
    connect(em).changes(CAL, None, WINDOW)
    assert ("GET", "/calendar/v3/calendars/tech%40example.com/events") in em.requests


def test_all_day_series_starting_on_a_dst_change_keeps_whole_days(em: GoogleEmulator) -> None:
    # 2027-03-14 is 23 hours long in Chicago (DST starts)
    series = em.put_event(CAL, {"summary": "on call", "start": {"date": "2027-03-14"},
                                "end": {"date": "2027-03-15"},
                                "recurrence": ["RRULE:FREQ=DAILY;COUNT=3"]})
    window = Window(dt.datetime(2027, 3, 1, tzinfo=UTC), dt.datetime(2027, 4, 1, tzinfo=UTC))
    got = {e.remote_id: e for e in connect(em).changes(CAL, None, window).changed}
    assert sorted(got) == [f"{series['id']}_202703{d}" for d in (14, 15, 16)]
    first = got[f"{series['id']}_20270314"]
    assert (first.start, first.end) == (dt.date(2027, 3, 14), dt.date(2027, 3, 15))
    assert first.occurrences[0].end - first.occurrences[0].start == dt.timedelta(hours=23)
    second = got[f"{series['id']}_20270315"]
    assert (second.start, second.end) == (dt.date(2027, 3, 15), dt.date(2027, 3, 16))


def test_instances_can_be_read_by_id_and_patch_keeps_other_fields(em: GoogleEmulator) -> None:
    series = em.put_event(CAL, {**timed("standup", 2), "recurrence": ["RRULE:FREQ=DAILY;COUNT=3"]})
    c = connect(em)
    instance = c.get(CAL, f"{series['id']}_20261103T150000Z", WINDOW)
    assert instance is not None and instance.recurring
    assert instance.occurrences[0].start == dt.datetime(2026, 11, 3, 15, tzinfo=UTC)
    assert c.get(CAL, f"{series['id']}_20261110T150000Z", WINDOW) is None  # past COUNT

    created = c.create(CAL, job())
    patched = c.runner.run(c.api.events.patch(calendarId=CAL, eventId=created.remote_id,
                                              body={"location": "2 Side St"}), "patch")
    assert patched["location"] == "2 Side St" and patched["summary"] == "Install: Acme"
    assert patched["extendedProperties"]["private"]["calsyncKey"] == "job-j1"
    assert patched["etag"] != created.etag


def test_unreachable_google_is_provider_unavailable_after_retries() -> None:
    with GoogleEmulator() as em:
        em.add_account(CAL)
        sleeps = Sleeps()
        c = connect(em, sleeps)
    # the emulator is gone: connection refused on every attempt
    with pytest.raises(ProviderUnavailable, match="retries later"):
        c.list_calendars()
    assert sleeps == [0.75, 1.5, 3.0, 6.0]
