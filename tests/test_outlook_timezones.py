"""Outlook time zones: events of users in every CLDR zone (Manila, Bogotá, Lagos, Jakarta,
Karachi, Nairobi, …) are written in their own zone, in a name Graph accepts, and read back
with the right instants; events that Outlook users create in those zones are read right.
Driven through the real msal/httpx against the Graph emulator, which refuses zone names
Graph does not know (400 TimeZoneNotSupportedException)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import zoneinfo
from collections.abc import Iterator

import pytest
from calsync_outlook.connector import OutlookConnector
from calsync_outlook.timezones import (
    WINDOWS_TO_IANA,
    graph_zone_name,
    iana_to_windows,
    windows_to_iana,
)

from calsync.config import Settings, load_settings
from calsync.sync.connector import OutgoingEvent, Window
from tests.conftest import SECRET
from tests.emulators.graph import GraphEmulator, signed_in_connector, supported_zone

UTC = dt.timezone.utc
USER = "ana@contoso.com"
WINDOW = Window(dt.datetime(2026, 11, 1, tzinfo=UTC), dt.datetime(2027, 3, 1, tzinfo=UTC))

# (user's IANA zone, the name calsync must send Graph, UTC offset in November 2026)
ZONES = [
    ("Asia/Manila", "Singapore Standard Time", 8),
    ("America/Bogota", "America/Bogota", -5),
    ("Africa/Lagos", "Africa/Lagos", 1),
    ("Asia/Jakarta", "SE Asia Standard Time", 7),
    ("Asia/Karachi", "Asia/Karachi", 5),
    ("Africa/Nairobi", "Africa/Nairobi", 3),
    ("Europe/Kyiv", "FLE Standard Time", 2),
    ("America/Vancouver", "Pacific Standard Time", -8),
]


@pytest.fixture
def em() -> Iterator[GraphEmulator]:
    with GraphEmulator() as emulator:
        emulator.add_mailbox(USER)
        yield emulator


@pytest.fixture
def connector(em: GraphEmulator) -> Iterator[OutlookConnector]:
    settings: Settings = em.configure(load_settings(env={"CALSYNC_SECRET_KEY": SECRET}))
    with signed_in_connector(em, settings) as c:
        yield c


def item(tzid: str, **changes: object) -> OutgoingEvent:
    base = OutgoingEvent(key="job-j1", uid="job-j1@calsync", summary="Install",
                         start=dt.datetime(2026, 11, 24, 15, tzinfo=UTC),
                         end=dt.datetime(2026, 11, 24, 17, tzinfo=UTC), all_day=False,
                         tzid=tzid)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(("tzid", "sent", "offset"), ZONES)
def test_timed_item_is_written_in_the_users_zone_and_reads_back_at_the_same_instant(
        em: GraphEmulator, connector: OutlookConnector, tzid: str, sent: str,
        offset: int) -> None:
    cal = em.calendar_id(USER)
    connector.create(cal, item(tzid))
    stored = em.events_in(USER, cal)[0]
    assert stored["start"]["timeZone"] == sent and stored["end"]["timeZone"] == sent
    local = dt.datetime(2026, 11, 24, 15) + dt.timedelta(hours=offset)
    assert stored["start"]["dateTime"] == local.strftime("%Y-%m-%dT%H:%M:%S")
    event = connector.changes(cal, None, WINDOW).changed[0]
    assert event.start == dt.datetime(2026, 11, 24, 15, tzinfo=UTC)
    assert event.end == dt.datetime(2026, 11, 24, 17, tzinfo=UTC)
    assert zoneinfo.ZoneInfo(event.tzid or "UTC").utcoffset(local) == \
        dt.timedelta(hours=offset)


@pytest.mark.parametrize(("tzid", "sent", "offset"), ZONES)
def test_all_day_item_covers_the_users_local_day(
        em: GraphEmulator, connector: OutlookConnector, tzid: str, sent: str,
        offset: int) -> None:
    cal = em.calendar_id(USER)
    connector.create(cal, item(tzid, key="time_off-t1", all_day=True,
                               start=dt.date(2026, 12, 24), end=dt.date(2026, 12, 25)))
    stored = em.events_in(USER, cal)[0]
    assert stored["isAllDay"] and stored["start"]["timeZone"] == sent
    event = connector.changes(cal, None, WINDOW).changed[0]
    assert event.all_day and event.start == dt.date(2026, 12, 24)
    midnight = dt.datetime(2026, 12, 24, tzinfo=UTC) - dt.timedelta(hours=offset)
    assert event.occurrences[0].start == midnight
    assert event.occurrences[0].end == midnight + dt.timedelta(days=1)


@pytest.mark.parametrize(("windows", "offset"), [
    ("SA Pacific Standard Time", -5), ("W. Central Africa Standard Time", 1),
    ("SE Asia Standard Time", 7), ("Pakistan Standard Time", 5),
    ("E. Africa Standard Time", 3), ("Singapore Standard Time", 8)])
def test_events_outlook_users_create_in_those_zones_are_read_at_the_right_instants(
        em: GraphEmulator, connector: OutlookConnector, windows: str, offset: int) -> None:
    cal = em.calendar_id(USER)
    em.put_event(USER, cal, {
        "subject": "Day off", "isAllDay": True,
        "start": {"dateTime": "2026-11-20T00:00:00.0000000", "timeZone": windows},
        "end": {"dateTime": "2026-11-21T00:00:00.0000000", "timeZone": windows}})
    em.put_event(USER, cal, {
        "subject": "Dentist",
        "start": {"dateTime": "2026-11-25T09:00:00.0000000", "timeZone": windows},
        "end": {"dateTime": "2026-11-25T10:00:00.0000000", "timeZone": windows}})
    events = {e.summary: e for e in connector.changes(cal, None, WINDOW).changed}
    shift = dt.timedelta(hours=offset)
    assert events["Day off"].occurrences[0].start == dt.datetime(2026, 11, 20, tzinfo=UTC) - shift
    assert events["Dentist"].occurrences[0].start == \
        dt.datetime(2026, 11, 25, 9, tzinfo=UTC) - shift
    assert events["Dentist"].tzid == WINDOWS_TO_IANA[windows]


def test_an_unknown_zone_is_written_as_utc_instants_not_refused(
        em: GraphEmulator, connector: OutlookConnector) -> None:
    cal = em.calendar_id(USER)
    connector.create(cal, item("Antarctica/Troll"))
    stored = em.events_in(USER, cal)[0]
    assert stored["start"] == {"dateTime": "2026-11-24T15:00:00", "timeZone": "UTC"}


def test_the_tables_are_cldrs_complete_mapping() -> None:
    assert len(WINDOWS_TO_IANA) >= 139  # every Windows zone CLDR knows
    for windows, iana in WINDOWS_TO_IANA.items():
        zoneinfo.ZoneInfo(iana)
        assert windows_to_iana(windows) == ("UTC" if windows == "UTC" else iana)
    assert iana_to_windows("Asia/Manila") == "Singapore Standard Time"
    assert iana_to_windows("Asia/Jakarta") == "SE Asia Standard Time"
    assert iana_to_windows("America/Bogota") == "SA Pacific Standard Time"
    assert iana_to_windows("Africa/Lagos") == "W. Central Africa Standard Time"
    assert iana_to_windows("Asia/Karachi") == "Pakistan Standard Time"
    assert iana_to_windows("Africa/Nairobi") == "E. Africa Standard Time"
    assert windows_to_iana("tzone://Microsoft/Utc") == "UTC"
    assert windows_to_iana("Not/AZone") is None


def test_every_zone_a_user_can_pick_is_sent_in_a_name_graph_accepts() -> None:
    import pytz

    unnamed = []
    for name in pytz.common_timezones:
        sent = graph_zone_name(name)
        if sent is None:
            unnamed.append(name)
        else:
            assert supported_zone(sent), (name, sent)
    # CLDR has no Windows zone for Troll station (UTC+0/+2): written as UTC instants
    assert unnamed == ["Antarctica/Troll"]


def test_answers_follow_the_prefer_header_and_default_to_utc(
        em: GraphEmulator, connector: OutlookConnector) -> None:
    cal = em.calendar_id(USER)
    created = connector.create(cal, item("Asia/Manila"))
    path = f"/me/calendars/{cal}/events/{created.remote_id}"
    plain = connector.graph.request("GET", path).body
    assert plain["start"] == {"dateTime": "2026-11-24T15:00:00.0000000", "timeZone": "UTC"}
    assert plain["originalStartTimeZone"] == "Singapore Standard Time"
    tokyo = connector.graph.request(
        "GET", path, headers={"Prefer": 'outlook.timezone="Tokyo Standard Time"'}).body
    assert tokyo["start"] == {"dateTime": "2026-11-25T00:00:00.0000000",
                              "timeZone": "Tokyo Standard Time"}
