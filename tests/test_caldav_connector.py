"""The CalDAV connector against real Radicale and Xandikos servers (and, for error
mapping, an httpx mock transport)."""

from __future__ import annotations

import datetime as dt
import uuid
from zoneinfo import ZoneInfo

import httpx
import pytest

from calsync.config import Settings
from calsync.errors import (
    AlreadyExists,
    NeedsReauth,
    PreconditionFailed,
    ProviderError,
    ProviderUnavailable,
    SyncError,
    SyncTokenInvalid,
    Throttled,
    UserError,
)
from calsync.sync.connector import (
    ConnectContext,
    Occurrence,
    OutgoingEvent,
    Window,
    load_connector_factory,
)
from calsync_caldav.connector import CaldavConnector, WriteLedger
from tests.caldav_servers import (  # noqa: F401 - fixtures used by name
    DavServer,
    dav_server,
    radicale_server,
    xandikos_server,
)

UTC = dt.timezone.utc
CHI = ZoneInfo("America/Chicago")
WINDOW = Window(dt.datetime(2026, 10, 1, tzinfo=UTC), dt.datetime(2027, 12, 1, tzinfo=UTC))


def ctx_for(server: DavServer, **options: object) -> ConnectContext:
    return ConnectContext(provider="caldav", url=server.base_url, account=server.username,
                          credentials={"username": server.username, "password": "secret"},
                          settings=Settings(), options=dict(options))


def connector(server: DavServer, **options: object) -> CaldavConnector:
    conn = load_connector_factory("caldav").connect(ctx_for(server, **options))
    assert isinstance(conn, CaldavConnector)
    return conn


def job(key: str = "job-j1", **kw: object) -> OutgoingEvent:
    base: dict[str, object] = dict(
        key=key, uid=f"calsync-{key}@example.com", summary="Install: Acme",
        start=dt.datetime(2026, 11, 24, 9, tzinfo=CHI),
        end=dt.datetime(2026, 11, 24, 11, tzinfo=CHI), all_day=False, tzid="America/Chicago",
        description="Gate code 1234", location="1 Main St", categories=("job", "Install"))
    base.update(kw)
    return OutgoingEvent(**base)  # type: ignore[arg-type]


def external(uid: str, body: str) -> str:
    return ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\n"
            f"BEGIN:VEVENT\r\nUID:{uid}\r\nDTSTAMP:20261101T000000Z\r\n{body}"
            "END:VEVENT\r\nEND:VCALENDAR\r\n")


def put_external(server: DavServer, cal: str, body: str, extra: str = "") -> str:
    uid = uuid.uuid4().hex
    ics = external(uid, body)
    if extra:
        ics = ics.replace("END:VCALENDAR\r\n", extra + "END:VCALENDAR\r\n")
    resp = server.put(f"{cal}{uid}.ics", ics)
    assert resp.status_code in (201, 204), resp.text
    return f"{httpx.URL(cal).path}{uid}.ics"


def test_verify_discovers_home_and_lists_event_calendars_only(dav_server: DavServer) -> None:
    cal = dav_server.make_calendar("Work")
    todo = dav_server.make_calendar("Reminders", components=("VTODO",))
    factory = load_connector_factory("caldav")
    ctx, calendars = factory.verify(ctx_for(dav_server))
    ids = {c.id for c in calendars}
    assert cal in ids
    assert todo not in ids
    assert ctx.url == dav_server.home_url
    work = next(c for c in calendars if c.id == cal)
    assert work.name == "Work" and not work.read_only and work.supports_events


def test_create_is_idempotent_and_update_delete_carry_preconditions(
        dav_server: DavServer) -> None:
    cal = dav_server.make_calendar()
    conn = connector(dav_server)
    created = conn.create(cal, job())
    assert created.remote_id.endswith("/job-j1.ics")
    assert created.calsync_key == "job-j1" and created.etag
    assert created.start == dt.datetime(2026, 11, 24, 9, tzinfo=CHI)
    assert created.occurrences == [Occurrence(dt.datetime(2026, 11, 24, 15, tzinfo=UTC),
                                              dt.datetime(2026, 11, 24, 17, tzinfo=UTC))]
    with pytest.raises(AlreadyExists):
        conn.create(cal, job(summary="again"))

    found = conn.find_by_key(cal, "job-j1", WINDOW)
    assert found is not None and found.remote_id == created.remote_id
    assert found.summary == "Install: Acme" and found.tzid == "America/Chicago"
    assert found.etag == created.etag
    assert conn.find_by_key(cal, "job-missing", WINDOW) is None

    updated = conn.update(cal, created.remote_id, job(summary="Repair: Acme", sequence=1),
                          created.etag)
    assert updated.etag and updated.etag != created.etag
    with pytest.raises(PreconditionFailed):
        conn.update(cal, created.remote_id, job(summary="stale"), created.etag)
    with pytest.raises(PreconditionFailed):
        conn.delete(cal, created.remote_id, created.etag)
    current = conn.get(cal, created.remote_id, WINDOW)
    assert current is not None and current.summary == "Repair: Acme"
    conn.delete(cal, created.remote_id, updated.etag)
    assert conn.get(cal, created.remote_id, WINDOW) is None
    conn.delete(cal, created.remote_id, updated.etag)  # already gone: not an error
    conn.close()


def test_all_day_copy_is_written_as_dates(dav_server: DavServer) -> None:
    cal = dav_server.make_calendar()
    conn = connector(dav_server, timezone="America/Chicago")
    event = job("timeoff-t1", summary="Time off", start=dt.date(2026, 12, 24),
                end=dt.date(2026, 12, 27), all_day=True)
    created = conn.create(cal, event)
    raw = dav_server.get(f"{cal}timeoff-t1.ics").text
    assert "DTSTART;VALUE=DATE:20261224" in raw and "DTEND;VALUE=DATE:20261227" in raw
    assert "X-CALSYNC-KEY:timeoff-t1" in raw
    assert created.all_day and created.start == dt.date(2026, 12, 24)
    got = conn.get(cal, created.remote_id, WINDOW)
    assert got is not None and got.occurrences == [
        Occurrence(dt.datetime(2026, 12, 24, 6, tzinfo=UTC),
                   dt.datetime(2026, 12, 27, 6, tzinfo=UTC))]


@pytest.mark.parametrize("use_sync_collection", [True, False], ids=["sync-collection", "ctag"])
def test_incremental_pull(dav_server: DavServer, use_sync_collection: bool) -> None:
    cal = dav_server.make_calendar()
    conn = connector(dav_server, sync_collection=use_sync_collection)
    mine = conn.create(cal, job())
    ext = put_external(dav_server, cal, "SUMMARY:Dentist\r\nDTSTART:20261125T150000Z\r\n"
                                        "DTEND:20261125T160000Z\r\n")
    first = conn.changes(cal, None, WINDOW)
    assert first.full and first.token
    assert first.token.startswith("caldav1:sync:" if use_sync_collection else "caldav1:ctag:")
    by_id = {e.remote_id: e for e in first.changed}
    assert set(by_id) == {mine.remote_id, ext}
    assert by_id[mine.remote_id].calsync_key == "job-j1"
    assert by_id[ext].calsync_key is None and by_id[ext].summary == "Dentist"

    noop = conn.changes(cal, first.token, WINDOW)
    assert noop.requests == 1
    assert not noop.changed and not noop.deleted and not noop.full

    dav_server.delete(f"{cal}{ext.rsplit('/', 1)[1]}")
    ext2 = put_external(dav_server, cal, "SUMMARY:Lunch\r\nDTSTART:20261126T180000Z\r\n"
                                         "DTEND:20261126T190000Z\r\n")
    later = conn.changes(cal, noop.token, WINDOW)
    assert [e.remote_id for e in later.changed] == [ext2]
    assert later.deleted == [ext]
    # Radicale returns the changed objects in the sync-collection answer; Xandikos leaves
    # calendar-data out (one calendar-multiget more); the fallback needs getctag, the etag
    # listing and a calendar-multiget
    if use_sync_collection:
        assert later.requests == {"radicale": 1, "xandikos": 2}[dav_server.kind]
    else:
        assert later.requests == 3

    again = conn.changes(cal, later.token, WINDOW)
    assert again.requests == 1 and not again.changed and not again.deleted

    # calsync's own writes are not fetched back: their etags are the ones the PUTs got
    conn.create(cal, job("job-j2"))
    conn.update(cal, mine.remote_id, job(summary="Moved"), mine.etag)
    echo = conn.changes(cal, again.token, WINDOW)
    assert not echo.changed and not echo.deleted
    assert echo.requests == (1 if use_sync_collection else 2)
    # ...but a fresh process (no ledger) reads them like any change
    other = connector(dav_server, sync_collection=use_sync_collection)
    other.ledger = WriteLedger()
    assert {e.calsync_key for e in other.changes(cal, again.token, WINDOW).changed} == \
        {"job-j1", "job-j2"}
    conn.close()
    other.close()


def test_unknown_sync_token_means_full_resync(dav_server: DavServer) -> None:
    cal = dav_server.make_calendar()
    conn = connector(dav_server)
    first = conn.changes(cal, None, WINDOW)
    assert first.token
    bogus = "caldav1:sync:" + first.token.split(":", 2)[2][:-4] + "dead"
    with pytest.raises(SyncTokenInvalid):
        conn.changes(cal, bogus, WINDOW)
    with pytest.raises(SyncTokenInvalid):
        conn.changes(cal, "v0:something-else", WINDOW)


def test_recurring_external_event_is_expanded_with_exdate_and_override(
        dav_server: DavServer) -> None:
    cal = dav_server.make_calendar()
    conn = connector(dav_server)
    uid = "weekly-standup"
    ics = ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\n"
           "BEGIN:VEVENT\r\nUID:weekly-standup\r\nDTSTAMP:20261101T000000Z\r\n"
           "SUMMARY:Standup\r\nDTSTART;TZID=America/Chicago:20261102T090000\r\n"
           "DTEND;TZID=America/Chicago:20261102T093000\r\nRRULE:FREQ=WEEKLY;COUNT=4\r\n"
           "EXDATE;TZID=America/Chicago:20261109T090000\r\nEND:VEVENT\r\n"
           "BEGIN:VEVENT\r\nUID:weekly-standup\r\nDTSTAMP:20261101T000000Z\r\n"
           "RECURRENCE-ID;TZID=America/Chicago:20261116T090000\r\nSUMMARY:Standup (moved)\r\n"
           "DTSTART;TZID=America/Chicago:20261116T140000\r\n"
           "DTEND;TZID=America/Chicago:20261116T150000\r\nEND:VEVENT\r\n"
           "END:VCALENDAR\r\n")
    assert dav_server.put(f"{cal}{uid}.ics", ics).status_code == 201
    allday = put_external(dav_server, cal, "SUMMARY:Trip\r\nDTSTART;VALUE=DATE:20261201\r\n"
                                           "DTEND;VALUE=DATE:20261203\r\nTRANSP:TRANSPARENT\r\n")
    got = {e.remote_id: e for e in conn.changes(cal, None, WINDOW).changed}
    series = got[f"{httpx.URL(cal).path}{uid}.ics"]
    assert series.recurring and series.summary == "Standup"
    assert series.occurrences == [
        Occurrence(dt.datetime(2026, 11, 2, 15, tzinfo=UTC),
                   dt.datetime(2026, 11, 2, 15, 30, tzinfo=UTC)),
        Occurrence(dt.datetime(2026, 11, 16, 20, tzinfo=UTC),
                   dt.datetime(2026, 11, 16, 21, tzinfo=UTC)),
        Occurrence(dt.datetime(2026, 11, 23, 15, tzinfo=UTC),
                   dt.datetime(2026, 11, 23, 15, 30, tzinfo=UTC)),
    ]
    trip = got[allday]
    assert trip.all_day and trip.busy == "free"
    assert trip.start == dt.date(2026, 12, 1) and trip.end == dt.date(2026, 12, 3)
    # the window cuts the series: only occurrences inside it are reported
    narrow = Window(dt.datetime(2026, 11, 10, tzinfo=UTC), dt.datetime(2026, 11, 20, tzinfo=UTC))
    only = conn.get(cal, series.remote_id, narrow)
    assert only is not None and len(only.occurrences) == 1


def test_malformed_object_is_quarantined_not_raised(radicale_server: DavServer) -> None:
    cal = radicale_server.make_calendar()
    conn = connector(radicale_server)
    good = put_external(radicale_server, cal, "SUMMARY:ok\r\nDTSTART:20261125T150000Z\r\n"
                                              "DTEND:20261125T160000Z\r\n")
    bad = put_external(radicale_server, cal, "SUMMARY:bad\r\nDTSTART:20261125T150000Z\r\n"
                                             "DTEND:20261125T140000Z\r\n")
    todo_ics = ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VTODO\r\n"
                "UID:todo-1\r\nDTSTAMP:20261101T000000Z\r\nSUMMARY:buy milk\r\nEND:VTODO\r\n"
                "END:VCALENDAR\r\n")
    assert radicale_server.put(f"{cal}todo-1.ics", todo_ics).status_code == 201
    out = conn.changes(cal, None, WINDOW)
    assert [e.remote_id for e in out.changed] == [good]
    assert [q.remote_id for q in out.quarantined] == [bad]
    assert "DTEND" in out.quarantined[0].reason and "before DTSTART" in out.quarantined[0].reason


def test_owner_response_and_privacy_fields(radicale_server: DavServer) -> None:
    cal = radicale_server.make_calendar()
    conn = connector(radicale_server)
    ext = put_external(
        radicale_server, cal,
        "SUMMARY:Board\r\nDTSTART:20261125T150000Z\r\nDTEND:20261125T160000Z\r\n"
        "CLASS:CONFIDENTIAL\r\nSTATUS:TENTATIVE\r\nX-MICROSOFT-CDO-BUSYSTATUS:OOF\r\n"
        "ORGANIZER;CN=Boss:mailto:boss@example.com\r\n"
        "ATTENDEE;PARTSTAT=DECLINED:mailto:Tech@Example.com\r\n"
        "ATTENDEE;PARTSTAT=ACCEPTED:mailto:other@example.com\r\n")
    event = conn.get(cal, ext, WINDOW)
    assert event is not None
    assert event.private and event.status == "tentative" and event.busy == "oof"
    assert event.response == "declined" and event.organizer == "boss@example.com"
    assert event.attendees == ["tech@example.com", "other@example.com"]


# -- error mapping at the edge (mock transport) ---------------------------------------

def mock_connector(handler: object, verifying: bool = False) -> CaldavConnector:
    transport = httpx.MockTransport(handler)  # type: ignore[arg-type]
    ctx = ConnectContext(provider="caldav", url="https://dav.example.com/", account="a",
                         credentials={"username": "a", "password": "hunter2"},
                         settings=Settings(), http=transport,
                         options={"sleep": lambda _seconds: None})  # retries: no waiting
    conn = load_connector_factory("caldav").connect(ctx)
    assert isinstance(conn, CaldavConnector)
    conn.session.verifying = verifying
    return conn


def test_throttling_maps_to_throttled_with_retry_after() -> None:
    conn = mock_connector(lambda req: httpx.Response(429, headers={"Retry-After": "42"}))
    with pytest.raises(Throttled) as info:
        conn.changes("https://dav.example.com/cal/", None, WINDOW)
    assert info.value.retry_after == 42
    conn = mock_connector(lambda req: httpx.Response(503, headers={"Retry-After": "7"}))
    with pytest.raises(Throttled) as info:
        conn.list_calendars()
    assert info.value.retry_after == 7


def test_server_errors_and_timeouts_map_to_provider_unavailable() -> None:
    conn = mock_connector(lambda req: httpx.Response(502))
    with pytest.raises(ProviderUnavailable):
        conn.changes("https://dav.example.com/cal/", None, WINDOW)

    def timeout(req: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=req)

    with pytest.raises(ProviderUnavailable):
        mock_connector(timeout).get("https://dav.example.com/cal/", "/cal/x.ics", WINDOW)


def test_401_later_means_needs_reauth_and_password_is_not_in_message() -> None:
    conn = mock_connector(lambda req: httpx.Response(401))
    with pytest.raises(NeedsReauth) as info:
        conn.delete("https://dav.example.com/cal/", "/cal/x.ics", '"1"')
    assert "hunter2" not in str(info.value)


def test_verify_wrong_password_and_unreachable_url_are_user_errors() -> None:
    factory = load_connector_factory("caldav")
    ctx = ConnectContext(provider="caldav", url="https://dav.example.com/", account="a",
                         credentials={"username": "a", "password": "hunter2"},
                         settings=Settings(),
                         http=httpx.MockTransport(lambda req: httpx.Response(401)))
    with pytest.raises(UserError, match="wrong username or app password for "
                                        "https://dav.example.com/"):
        factory.verify(ctx)
    port_url = "http://127.0.0.1:9/"
    with pytest.raises(UserError, match="127.0.0.1:9"):
        factory.verify(ConnectContext(provider="caldav", url=port_url, account="a",
                                      credentials={"username": "a", "password": "p"},
                                      settings=Settings()))


def test_conditional_headers_are_sent() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(201, headers={"ETag": '"e1"'})

    conn = mock_connector(handler)
    conn.create("https://dav.example.com/cal/", job("job-x y"))
    conn.update("https://dav.example.com/cal/", "/cal/job-x%20y.ics", job("job-x y"), '"e1"')
    assert seen[0].headers["if-none-match"] == "*"
    assert seen[0].url.path == "/cal/job-x y.ics"
    assert seen[1].headers["if-match"] == '"e1"'
    assert seen[0].headers["authorization"].startswith("Basic ")


def test_copy_written_and_deleted_after_the_token_is_reported_deleted(
        dav_server: DavServer) -> None:
    """Xandikos leaves out objects created and deleted after a token (and its state-hash
    tokens repeat): the connector checks its own writes that the answer does not list."""
    cal = dav_server.make_calendar()
    conn = connector(dav_server)
    first = conn.changes(cal, None, WINDOW)  # the engine keeps this token, then pushes
    created = conn.create(cal, job("block-b1"))
    assert dav_server.delete(f"{cal}block-b1.ics").status_code in (200, 204)
    out = conn.changes(cal, first.token, WINDOW)
    assert out.deleted == [created.remote_id] and not out.changed
    conn.close()


def test_discovery_falls_back_to_the_well_known_url() -> None:
    """A web server root that is not the DAV endpoint: /.well-known/caldav redirects."""
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/":
            return httpx.Response(405)
        if req.url.path == "/.well-known/caldav":
            return httpx.Response(301, headers={"Location": "/remote.php/dav/"})
        if req.url.path == "/remote.php/dav/":
            return httpx.Response(207, content=(
                b'<d:multistatus xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav">'
                b"<d:response><d:href>/remote.php/dav/</d:href><d:propstat><d:prop>"
                b"<c:calendar-home-set><d:href>/remote.php/dav/calendars/jane/</d:href>"
                b"</c:calendar-home-set></d:prop><d:status>HTTP/1.1 200 OK</d:status>"
                b"</d:propstat></d:response></d:multistatus>"))
        return httpx.Response(207, content=b'<d:multistatus xmlns:d="DAV:"/>')

    ctx = ConnectContext(provider="caldav", url="https://cloud.example.com/", account="jane",
                         credentials={"username": "jane", "password": "p"},
                         settings=Settings(), http=httpx.MockTransport(handler))
    found, calendars = load_connector_factory("caldav").verify(ctx)
    assert found.url == "https://cloud.example.com/remote.php/dav/calendars/jane/"
    assert calendars == []

    def not_dav(req: httpx.Request) -> httpx.Response:
        return httpx.Response(404)

    with pytest.raises(UserError, match="did not answer .* as a CalDAV server"):
        load_connector_factory("caldav").verify(ConnectContext(
            provider="caldav", url="https://www.example.com/", account="jane",
            credentials={"username": "jane", "password": "p"}, settings=Settings(),
            http=httpx.MockTransport(not_dav)))


def test_read_only_calendar_is_readable_and_refuses_writes(radicale_server: DavServer) -> None:
    cal = radicale_server.make_read_only_calendar("Holidays")
    put_external(radicale_server, cal, "SUMMARY:Holiday\r\nDTSTART;VALUE=DATE:20261225\r\n")
    conn = connector(radicale_server)
    pulled = conn.changes(cal, None, WINDOW)
    assert [e.summary for e in pulled.changed] == ["Holiday"]
    with pytest.raises(ProviderError, match="HTTP 403"):
        conn.create(cal, job())
    conn.close()


def test_retry_after_as_http_date() -> None:
    from calsync_caldav.transport import retry_after_seconds

    now = dt.datetime(2026, 11, 23, 12, tzinfo=UTC).timestamp()
    assert retry_after_seconds("Mon, 23 Nov 2026 12:01:30 GMT", now) == 90
    assert retry_after_seconds("120", now) == 120
    assert retry_after_seconds("soon", now) is None and retry_after_seconds(None, now) is None


def test_truncated_sync_collection_answer_is_continued() -> None:
    """RFC 6578 3.6: a 507 on the collection means more changes follow from the new token."""
    bodies = {
        "t1": (b'<d:response><d:href>/cal/a.ics</d:href><d:propstat><d:prop>'
               b'<d:getetag>"a1"</d:getetag></d:prop><d:status>HTTP/1.1 200 OK</d:status>'
               b'</d:propstat></d:response><d:response><d:href>/cal/</d:href>'
               b"<d:status>HTTP/1.1 507 Insufficient Storage</d:status></d:response>", "t2"),
        "t2": (b'<d:response><d:href>/cal/b.ics</d:href><d:status>HTTP/1.1 404 Not Found'
               b"</d:status></d:response>", "t3"),
    }
    asked: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        body = req.content.decode()
        if "sync-collection" in body:
            token = body.split("<d:sync-token>")[1].split("<")[0]
            asked.append(token)
            inner, new = bodies[token]
            return httpx.Response(207, content=b'<d:multistatus xmlns:d="DAV:">' + inner
                                  + f"<d:sync-token>{new}</d:sync-token>".encode()
                                  + b"</d:multistatus>")
        assert "calendar-multiget" in body and "/cal/a.ics" in body
        ics = external("a", "SUMMARY:A\r\nDTSTART:20261125T150000Z\r\n")
        return httpx.Response(207, content=(
            '<d:multistatus xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav">'
            '<d:response><d:href>/cal/a.ics</d:href><d:propstat><d:prop><d:getetag>"a1"'
            f"</d:getetag><c:calendar-data>{ics}</c:calendar-data></d:prop>"
            "<d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>"
            "</d:multistatus>").encode())

    conn = mock_connector(handler)
    out = conn.changes("https://dav.example.com/cal/", "caldav1:sync:t1", WINDOW)
    assert asked == ["t1", "t2"]
    assert [e.summary for e in out.changed] == ["A"] and out.deleted == ["/cal/b.ics"]
    assert out.token == "caldav1:sync:t3" and out.requests == 3


def test_damaged_copy_is_found_for_rewrite_and_get_reports_why(
        radicale_server: DavServer) -> None:
    cal = radicale_server.make_calendar()
    conn = connector(radicale_server)
    damaged = external("calsync-job-j9@example.com",
                       "X-CALSYNC-KEY:job-j9\r\nSUMMARY:x\r\nDTSTART:20261125T150000Z\r\n"
                       "DTEND:20261125T140000Z\r\n")
    assert radicale_server.put(f"{cal}job-j9.ics", damaged).status_code == 201
    with pytest.raises(AlreadyExists):
        conn.create(cal, job("job-j9"))
    found = conn.find_by_key(cal, "job-j9", WINDOW)
    assert found is not None and found.calsync_key == "job-j9" and found.etag
    with pytest.raises(SyncError, match="DTEND"):
        conn.get(cal, found.remote_id, WINDOW)
    repaired = conn.update(cal, found.remote_id, job("job-j9"), found.etag)
    assert repaired.summary == "Install: Acme"
    assert conn.get(cal, found.remote_id, WINDOW) is not None
