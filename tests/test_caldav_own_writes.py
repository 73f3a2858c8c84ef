"""Changes made after calsync's own writes are seen by a later pull in another process,
on both servers. Xandikos's sync-token is a hash of the collection's state and it answers
the difference between two states: a copy calsync created after a token and the user then
deleted is never listed from that token. ``token_after_writes`` gives the token to keep
once the writes are done, so nothing depends on this process remembering them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

from calsync.sync.connector import Window
from calsync_caldav.connector import CaldavConnector, WriteLedger
from tests.caldav_servers import (  # noqa: F401 - fixtures used by name
    DavServer,
    dav_server,
)
from tests.test_caldav_connector import connector, external, job, put_external

UTC = dt.timezone.utc
WINDOW = Window(dt.datetime(2026, 10, 1, tzinfo=UTC), dt.datetime(2027, 12, 1, tzinfo=UTC))


def fresh_process(server: DavServer, use_sync_collection: bool) -> CaldavConnector:
    """A connector of a new process: nothing remembered of earlier writes."""
    conn = connector(server, sync_collection=use_sync_collection)
    conn.ledger = WriteLedger()
    return conn


def edit(server: DavServer, url: str, old: str, new: str) -> None:
    got = server.get(url)
    assert got.status_code == 200
    resp = server.put(url, got.text.replace(old, new), {"If-Match": got.headers["etag"]})
    assert resp.status_code in (200, 201, 204), resp.text


Change = Callable[[DavServer, str, dict[str, str]], None]


def delete_copy(server: DavServer, cal: str, made: dict[str, str]) -> None:
    assert server.delete(f"{cal}block-b1.ics").status_code in (200, 204)


def edit_copy(server: DavServer, cal: str, made: dict[str, str]) -> None:
    edit(server, f"{cal}block-b1.ics", "SUMMARY:Install: Acme", "SUMMARY:Training (room 2)")


def create_external(server: DavServer, cal: str, made: dict[str, str]) -> None:
    made["new"] = put_external(server, cal, "SUMMARY:Dentist\r\nDTSTART:20261203T150000Z\r\n"
                                            "DTEND:20261203T160000Z\r\n")


def edit_external(server: DavServer, cal: str, made: dict[str, str]) -> None:
    edit(server, server.base_url.rstrip("/") + made["external"], "DTSTART:20261202T150000Z",
         "DTSTART:20261202T143000Z")


def delete_external(server: DavServer, cal: str, made: dict[str, str]) -> None:
    assert server.delete(server.base_url.rstrip("/") + made["external"]).status_code in (200,
                                                                                         204)


CHANGES: dict[str, Change] = {"delete-own-copy": delete_copy, "edit-own-copy": edit_copy,
                              "create-external": create_external,
                              "edit-external": edit_external,
                              "delete-external": delete_external}


@pytest.mark.parametrize("use_sync_collection", [True, False], ids=["sync-collection", "ctag"])
@pytest.mark.parametrize("kind", sorted(CHANGES))
def test_change_after_own_writes_is_seen_by_another_process(
        dav_server: DavServer, kind: str, use_sync_collection: bool) -> None:
    cal = dav_server.make_calendar()
    made = {"external": put_external(dav_server, cal, "SUMMARY:Lunch\r\n"
                                     "DTSTART:20261202T150000Z\r\nDTEND:20261202T160000Z\r\n")}
    first_run = connector(dav_server, sync_collection=use_sync_collection)
    first_run.ledger = WriteLedger()
    pulled = first_run.changes(cal, None, WINDOW)  # the engine pulls, then writes
    assert [e.summary for e in pulled.changed] == ["Lunch"]
    copy = first_run.create(cal, job("block-b1"))
    first_run.create(cal, job("job-j1"))
    kept = first_run.token_after_writes(cal, pulled.token)  # what the engine stores
    assert kept != pulled.token
    first_run.close()

    CHANGES[kind](dav_server, cal, made)

    second_run = fresh_process(dav_server, use_sync_collection)
    out = second_run.changes(cal, kept, WINDOW)
    second_run.close()
    assert not out.full and not out.quarantined
    changed = {e.remote_id: e for e in out.changed}
    if kind == "delete-own-copy":
        assert out.deleted == [copy.remote_id] and not changed
    elif kind == "edit-own-copy":
        assert [e.summary for e in out.changed] == ["Training (room 2)"] and not out.deleted
        assert out.changed[0].calsync_key == "block-b1"
    elif kind == "create-external":
        assert list(changed) == [made["new"]] and not out.deleted
    elif kind == "edit-external":
        [event] = out.changed
        assert event.remote_id == made["external"] and not out.deleted
        assert event.occurrences[0].start == dt.datetime(2026, 12, 2, 14, 30, tzinfo=UTC)
    else:
        assert out.deleted == [made["external"]] and not changed


def test_nothing_written_keeps_the_token_without_a_request(dav_server: DavServer) -> None:
    cal = dav_server.make_calendar()
    conn = connector(dav_server)
    conn.ledger = WriteLedger()
    pulled = conn.changes(cal, None, WINDOW)
    before = conn.session.requests
    assert conn.token_after_writes(cal, pulled.token) == pulled.token
    assert conn.token_after_writes(cal, None) is None
    assert conn.session.requests == before
    conn.close()


@pytest.mark.parametrize("use_sync_collection", [True, False], ids=["sync-collection", "ctag"])
def test_foreign_changes_between_pull_and_writes_are_still_pulled(
        dav_server: DavServer, use_sync_collection: bool) -> None:
    """What others change while calsync writes is named in the kept token and read by the
    next pull, and calsync's own copies stay covered (a later delete of one is seen)."""
    cal = dav_server.make_calendar()
    lunch = put_external(dav_server, cal, "SUMMARY:Lunch\r\nDTSTART:20261202T150000Z\r\n"
                                          "DTEND:20261202T160000Z\r\n")
    conn = connector(dav_server, sync_collection=use_sync_collection)
    conn.ledger = WriteLedger()
    pulled = conn.changes(cal, None, WINDOW)
    copy = conn.create(cal, job("block-b1"))
    # meanwhile, in the user's calendar app:
    assert dav_server.put(f"{cal}meanwhile.ics", external(
        "meanwhile@example.com", "SUMMARY:Meanwhile\r\nDTSTART:20261204T150000Z\r\n"
                                 "DTEND:20261204T160000Z\r\n")).status_code in (201, 204)
    assert dav_server.delete(dav_server.base_url.rstrip("/") + lunch).status_code in (200, 204)
    kept = conn.token_after_writes(cal, pulled.token)
    conn.close()
    assert kept is not None and kept != pulled.token
    assert dav_server.delete(f"{cal}block-b1.ics").status_code in (200, 204)

    later = fresh_process(dav_server, use_sync_collection)
    out = later.changes(cal, kept, WINDOW)
    later.close()
    assert [e.summary for e in out.changed] == ["Meanwhile"]
    assert sorted(out.deleted) == sorted([copy.remote_id, lunch])


def test_a_damaged_recheck_token_means_a_full_resync(dav_server: DavServer) -> None:
    from calsync.errors import SyncTokenInvalid

    cal = dav_server.make_calendar()
    conn = connector(dav_server)
    with pytest.raises(SyncTokenInvalid):
        conn.changes(cal, "caldav1:sync-recheck:not-base64!", WINDOW)
    conn.close()
