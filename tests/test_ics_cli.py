"""``calsync connect ics``: a real feed on 127.0.0.1 becomes a conflict calendar that
``calsync sync`` fills; a bad address is one line on stderr, no traceback."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from calsync.db.models import ExternalEvent
from calsync.db.session import Database
from tests.ics_feed_server import FeedServer
from tests.test_sync_cli import calsync, cli_env  # noqa: F401 - fixture used by name


@pytest.fixture
def feed() -> Iterator[FeedServer]:
    server = FeedServer()
    server.start()
    server.serve_file("ical4j__2207678.ics")
    yield server
    server.stop()


def test_connect_ics_then_sync_fills_the_conflict_calendar(
        cli_env: Database, feed: FeedServer, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = calsync(monkeypatch, capsys, "connect", "ics", "u1", "--url", feed.url,
                             "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["provider"] == "ics" and summary["created"]
    [cal] = summary["calendars"]
    assert (cal["name"], cal["role"], cal["read_only"]) == ("Calendar SGSINEBESZ",
                                                            "conflict", True)
    assert "secret-key" not in out
    code, out, err = calsync(monkeypatch, capsys, "calendars", "list", "u1")
    assert code == 0 and cal["id"] in out and "conflict read-only" in out
    code, out, err = calsync(monkeypatch, capsys, "sync", "--user", "u1")
    assert code == 0, err
    assert "1 imported" in out
    with cli_env.read_session() as s:
        assert s.scalar(select(func.count()).select_from(ExternalEvent)) == 1
    code, out, err = calsync(monkeypatch, capsys, "connections", "list")
    assert code == 0 and "ics" in out and "secret-key" not in out


@pytest.mark.parametrize("url, message", [
    ("ftp://files.example.com/cal.ics", "http://, https:// or webcal://"),
    ("http://127.0.0.1:9/nothing.ics", "cannot fetch"),
])
def test_connect_ics_with_a_bad_address_is_one_line(
        cli_env: Database, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        capsys: pytest.CaptureFixture[str], url: str, message: str) -> None:
    code, out, err = calsync(monkeypatch, capsys, "connect", "ics", "u1", "--url", url)
    assert code != 0 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
