"""Feeds served from memory (calsync.feeds.memo + the fast path) on SQLite and PostgreSQL:
a feed served once is served again with no database statement at all, with the same body
and validators (200, 304, HEAD, gzip); a change, a regenerated or revoked link, or a change
committed by another process reaches the next request; feed requests are counted by
outcome and client family on /metrics."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event

from calsync.db.session import Database
from calsync.feeds import ics
from tests.conftest import SECRET
from tests.test_feed_http import _issue, admin  # noqa: F401 - the fixture

BLOCK = {"user": "u1", "title": "Fresh block", "start": "2026-11-30T10:00:00-06:00",
         "end": "2026-11-30T11:00:00-06:00"}


@pytest.fixture
def statements(db: Database) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(_conn, _cursor, statement, *_rest):  # type: ignore[no-untyped-def]
        seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", count)
    yield seen
    event.remove(db.engine, "before_cursor_execute", count)


def wait_memo_ready(db: Database) -> None:
    from calsync.feeds.memo import memo_for

    memo = memo_for(db.engine, 256 * 1024 * 1024)  # the size the app asks for
    deadline = time.monotonic() + 30
    while not memo.usable():
        assert time.monotonic() < deadline, "the memo never became usable"
        time.sleep(0.05)


def _from_memory(db: Database, statements: list[str]) -> bool:
    """Answered from memory: no statement on SQLite; on PostgreSQL only the one primary-key
    read of the link material (NOTIFY lags a commit of another process, so a regenerated or
    revoked link is checked synchronously)."""
    if db.dialect == "sqlite":
        return statements == []
    return len(statements) <= 1 and all(q.startswith("SELECT feed_version, feed_enabled")
                                        for q in statements)


def test_a_feed_served_once_is_served_again_without_the_database(
        app_client, admin, db: Database, statements: list[str]) -> None:  # noqa: F811
    path = _issue(app_client, admin)
    wait_memo_ready(db)
    plain = {"Accept-Encoding": "identity"}
    first = app_client.get(path, headers=plain)  # renders, and writes the fetch time
    assert first.status_code == 200 and "content-encoding" not in first.headers
    # A request whose reads no change overlapped fills the memo (on PostgreSQL the
    # NOTIFY of the first request's own render may still arrive and drop one entry).
    for _ in range(20):
        statements.clear()
        again = app_client.get(path, headers=plain)
        if _from_memory(db, statements):
            break
        time.sleep(0.1)
    assert _from_memory(db, statements)  # answered from memory
    assert again.content == first.content
    for header in ("etag", "last-modified", "content-type", "cache-control", "vary"):
        assert again.headers[header] == first.headers[header]
    not_modified = app_client.get(path, headers={**plain,
                                                 "If-None-Match": first.headers["etag"]})
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["etag"] == first.headers["etag"]
    since = app_client.get(path, headers={**plain,
                                          "If-Modified-Since": first.headers["last-modified"]})
    assert since.status_code == 304
    head = app_client.head(path, headers=plain)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(first.content))
    assert len([q for q in statements if not q.startswith("SELECT feed_version, feed_enabled")
                ]) == 0
    packed = app_client.get(path, headers={"Accept-Encoding": "gzip"})  # fills the variant
    statements.clear()
    packed_again = app_client.get(path, headers={"Accept-Encoding": "gzip"})
    assert _from_memory(db, statements)
    assert packed_again.headers["content-encoding"] == "gzip"
    assert packed_again.headers["etag"] == packed.headers["etag"] != first.headers["etag"]
    assert packed_again.content == first.content  # httpx decodes it


def test_changes_and_link_changes_reach_the_next_request(app_client, admin,  # noqa: F811
                                                         db: Database) -> None:
    path = _issue(app_client, admin)
    wait_memo_ready(db)
    first = app_client.get(path)
    app_client.get(path)  # from memory now
    assert app_client.put("/api/blocks/b-fresh", json=BLOCK, headers=admin).status_code == 201
    changed = app_client.get(path)
    assert changed.status_code == 200 and changed.headers["etag"] != first.headers["etag"]
    assert "SUMMARY:Fresh block" in ics.unfold(changed.text)
    new_path = _issue(app_client, admin)  # regenerate: the old link dies at once
    assert app_client.get(path).status_code == 404
    assert app_client.get(new_path).status_code == 200
    app_client.get(new_path)
    assert app_client.delete("/api/users/u1/feed", headers=admin).status_code == 200
    assert app_client.get(new_path).status_code == 404
    assert app_client.head(new_path).status_code == 404


OTHER_PROCESS = textwrap.dedent("""
    import datetime as dt, sys
    from calsync.db.session import Database
    from calsync.schedule.records import parse_block
    from calsync.schedule.store import upsert_item
    db = Database(sys.argv[1])
    with db.session() as s:
        upsert_item(s, parse_block({"id": "b-other", "user": "u1", "title": "From elsewhere",
                                    "start": "2026-11-30T12:00:00-06:00",
                                    "end": "2026-11-30T13:00:00-06:00"}),
                    now=dt.datetime.now(dt.timezone.utc))
""")


def eventually(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_change_committed_by_another_process_is_served(app_client, admin,  # noqa: F811
                                                         db: Database) -> None:
    path = _issue(app_client, admin)
    wait_memo_ready(db)
    app_client.get(path)
    app_client.get(path)
    done = subprocess.run([sys.executable, "-c", OTHER_PROCESS, db.url], capture_output=True,
                          text=True, timeout=60, env={"CALSYNC_SECRET_KEY": SECRET,
                                                      "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    # SQLite: the very next request (data_version moved); PostgreSQL: once NOTIFY is heard
    eventually(lambda: "From elsewhere" in ics.unfold(app_client.get(path).text),
               "the other process's change")


def _feed_requests(client) -> dict[tuple[str, str], float]:  # type: ignore[no-untyped-def]
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        if family.name == "calsync_feed_requests":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[(sample.labels["outcome"], sample.labels["client"])] = sample.value
    return out


def test_feed_requests_are_counted_by_outcome_and_client(app_client, admin,  # noqa: F811
                                                         db: Database) -> None:
    path = _issue(app_client, admin)
    wait_memo_ready(db)
    before = _feed_requests(app_client)
    thunderbird = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 "
                                 "Thunderbird/128.3.1"}
    google = {"User-Agent": "Google-Calendar-Importer"}
    first = app_client.get(path, headers=thunderbird)  # the route
    app_client.get(path, headers=thunderbird)  # memory
    app_client.get(path, headers={**google, "If-None-Match": first.headers["etag"]})
    app_client.get("/feeds/nobody/x.ics", headers=google)
    after = _feed_requests(app_client)

    def delta(key: tuple[str, str]) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta(("200", "thunderbird")) == 2
    assert delta(("304", "google")) == 1
    assert delta(("404", "google")) == 1


UNRELATED_COMMIT = textwrap.dedent("""
    import sys
    from sqlalchemy import text
    from calsync.db.session import Database
    db = Database(sys.argv[1])
    with db.session() as s:  # a commit that touches no feed (a sync worker's, say)
        s.execute(text("CREATE TABLE IF NOT EXISTS scratch_commits (n INTEGER)"))
        s.execute(text("INSERT INTO scratch_commits VALUES (1)"))
""")


def test_a_commit_elsewhere_that_leaves_the_feed_as_it_was_keeps_it_in_memory(
        app_client, admin, db: Database, statements: list[str]) -> None:  # noqa: F811
    path = _issue(app_client, admin)
    wait_memo_ready(db)
    first = app_client.get(path)
    eventually(lambda: (statements.clear(), app_client.get(path),
                        _from_memory(db, statements))[-1], "the feed held in memory")
    for _ in range(3):  # commits of other connections, each before a request
        done = subprocess.run([sys.executable, "-c", UNRELATED_COMMIT, db.url],
                              capture_output=True, text=True, timeout=60,
                              env={"CALSYNC_SECRET_KEY": SECRET, "PATH": "/usr/bin:/bin"})
        assert done.returncode == 0, done.stderr
        statements.clear()
        again = app_client.get(path)
        assert _from_memory(db, statements), statements  # not emptied by the commit
        assert again.content == first.content
        assert again.headers["etag"] == first.headers["etag"]
    # a change to this user's feed still reaches the very next request
    assert app_client.put("/api/blocks/b-fresh", json=BLOCK, headers=admin).status_code == 201
    assert "SUMMARY:Fresh block" in ics.unfold(app_client.get(path).text)
