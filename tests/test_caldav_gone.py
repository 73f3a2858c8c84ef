"""A calendar whose collection was deleted on the server raises CalendarGone from
``changes`` (full, incremental and ctag pulls), on real Radicale and Xandikos."""

from __future__ import annotations

import datetime as dt

import pytest

from calsync.errors import CalendarGone
from calsync.sync.connector import Window
from tests.caldav_servers import (  # noqa: F401 - fixtures used by name
    DavServer,
    dav_server,
)
from tests.test_caldav_connector import connector, put_external

UTC = dt.timezone.utc
WINDOW = Window(dt.datetime(2026, 10, 1, tzinfo=UTC), dt.datetime(2027, 12, 1, tzinfo=UTC))


@pytest.mark.parametrize("pull", ["full", "incremental", "ctag-full", "ctag-incremental"])
def test_deleted_collection_raises_calendar_gone(dav_server: DavServer, pull: str) -> None:
    cal = dav_server.make_calendar("Family")
    put_external(dav_server, cal, "SUMMARY:School run\r\nDTSTART:20261125T150000Z\r\n"
                                  "DTEND:20261125T160000Z\r\n")
    conn = connector(dav_server, sync_collection=not pull.startswith("ctag"))
    first = conn.changes(cal, None, WINDOW)
    assert len(first.changed) == 1
    assert dav_server.http.delete(cal).status_code in (200, 204)
    token = None if pull.endswith("full") else first.token
    with pytest.raises(CalendarGone) as info:
        conn.changes(cal, token, WINDOW)
    message = str(info.value)
    assert f"the calendar at {cal} no longer exists on the server (HTTP 404" in message
    assert "choose another calendar" in message and "remove it" in message
    assert info.value.context["calendar"] == cal
    conn.close()


def test_a_missing_object_is_not_a_missing_calendar(dav_server: DavServer) -> None:
    cal = dav_server.make_calendar()
    conn = connector(dav_server)
    assert conn.get(cal, f"{cal}nothing-here.ics", WINDOW) is None
    assert conn.changes(cal, None, WINDOW).changed == []
    conn.close()
