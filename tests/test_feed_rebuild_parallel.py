"""The rebuild with render worker processes (a cold nightly rebuild): the same feeds and
fragments as in-process, on both engines; a failing or dying worker leaves its chunk
unwritten and reports its users; an item changed during the rebuild is not stored with a
stale fragment; small renders stay in-process; workers die with their parent; migration
0012 (lz4 for feed bodies on PostgreSQL) goes up and down."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update

from calsync.config import load_settings
from calsync.db.models import FeedCache, ScheduleItem
from calsync.db.session import Database, upgrade
from calsync.feeds import bulk, ics
from calsync.feeds.parallel import RenderPool
from calsync.feeds.service import rebuild_all_feeds, refresh_dirty_feeds, render_users
from tests.conftest import SECRET, alembic_to, make_db
from tests.test_feed_rebuild import USERS, _cached, _load, _wipe

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SECRET_NOTES = "Gate code 4711, alarm 0000"


@pytest.fixture
def linked(settings):  # type: ignore[no-untyped-def]
    """Settings with a job link (the template must reach the workers)."""
    return replace(settings, feeds=replace(
        settings.feeds, job_url_template="https://dispatch.example/jobs/{job_id}"))


def _fragments(db: Database) -> dict[int, tuple[str | None, str | None]]:
    with db.read_session() as s:
        return {pk: (fragment, key) for pk, fragment, key in s.execute(
            select(ScheduleItem.pk, ScheduleItem.ics_fragment, ScheduleItem.fragment_key))}


def _workers(min_fragments: int = 1) -> RenderPool:
    return RenderPool(workers=2, min_fragments=min_fragments)


def test_workers_give_the_feeds_and_fragments_of_the_in_process_rebuild(
        db, linked, monkeypatch) -> None:
    _load(db, linked, NOW)
    with RenderPool(workers=0) as none:
        alone = rebuild_all_feeds(linked, db, NOW, pool=none)
    assert sorted(alone.rendered) == USERS and not none.used
    in_process, fragments = _cached(db), _fragments(db)
    rendered = sum(f is not None for f, _ in fragments.values())
    assert rendered > 30  # every item in the window

    _wipe(db)
    parent_renders: list[str] = []
    real = ics.render_event

    def counting(item, template=""):  # type: ignore[no-untyped-def]
        parent_renders.append(item.ext_id)  # a worker appends to its own copy
        return real(item, template)

    monkeypatch.setattr(ics, "render_event", counting)
    with _workers() as pool:
        report = rebuild_all_feeds(linked, db, NOW, pool=pool)
        assert pool.used
    assert sorted(report.rendered) == USERS and report.failed == []
    assert report.phases.fragments_rendered == rendered
    assert parent_renders == []  # every fragment came from a worker
    assert _cached(db) == in_process
    assert _fragments(db) == fragments
    assert b"URL:https://dispatch.example/jobs/j1" in ics.unfold(
        in_process["u1"][0].decode()).encode()


def test_a_failing_worker_leaves_the_chunk_unwritten_and_reports_its_users(
        db, linked, monkeypatch, caplog) -> None:
    _load(db, linked, NOW)
    with db.session() as s:
        s.execute(update(ScheduleItem).where(ScheduleItem.ext_id == "j3")
                  .values(notes=SECRET_NOTES))
    real = ics.render_event

    def failing(item, template=""):  # type: ignore[no-untyped-def]
        if item.ext_id == "j3":
            raise ValueError(f"cannot render {item.notes}")
        return real(item, template)

    monkeypatch.setattr(ics, "render_event", failing)
    caplog.set_level(logging.INFO, logger="calsync.feeds")
    with _workers() as pool:
        report = rebuild_all_feeds(linked, db, NOW, pool=pool)
    assert report.rendered == [] and sorted(report.failed) == USERS
    assert all(f is None and k is None for f, k in _fragments(db).values())  # none stored
    with db.read_session() as s:
        for row in s.scalars(select(FeedCache)):
            assert row.dirty and row.body is None, row.user_id
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    line = errors[0].getMessage()
    assert "\n" not in line and "ValueError" in line and "4 user(s)" in line
    assert "Gate code" not in caplog.text and "4711" not in caplog.text

    monkeypatch.setattr(ics, "render_event", real)
    again = refresh_dirty_feeds(linked, db, NOW)  # the dirty pass: in-process
    assert sorted(again.rendered) == USERS and again.failed == []


def in_workers(monkeypatch: pytest.MonkeyPatch, action: Any) -> Any:
    """Make every render in a worker process run ``action`` first (the parent renders as
    before); returns the real renderer."""
    parent = os.getpid()
    real = ics.render_event

    def render(item, template=""):  # type: ignore[no-untyped-def]
        if os.getpid() != parent:
            action()
        return real(item, template)

    monkeypatch.setattr(ics, "render_event", render)
    return real


def test_a_dying_worker_fails_its_chunk_and_later_chunks_render_in_process(
        db, linked, monkeypatch) -> None:
    _load(db, linked, NOW)
    in_workers(monkeypatch, lambda: os._exit(3))
    with _workers() as pool:
        first = rebuild_all_feeds(linked, db, NOW, pool=pool)
        assert first.rendered == [] and sorted(first.failed) == USERS
        assert pool.broken and not pool.wants(10**6)
        second = rebuild_all_feeds(linked, db, NOW, pool=pool)  # same pool: in-process
    assert sorted(second.rendered) == USERS and second.failed == []
    assert second.phases.fragments_rendered > 30


def test_a_hung_worker_is_stopped_and_fails_its_chunk(db, linked, monkeypatch) -> None:
    # a worker stuck for good (say, on a lock another thread of the parent held when it
    # forked) must not hold the nightly rebuild for ever
    _load(db, linked, NOW)
    real = in_workers(monkeypatch, lambda: time.sleep(120))
    done: dict[str, Any] = {}
    with RenderPool(workers=2, min_fragments=1, answer_seconds=1.0) as pool:
        worker = threading.Thread(
            target=lambda: done.update(report=rebuild_all_feeds(linked, db, NOW, pool=pool)),
            daemon=True)
        worker.start()
        worker.join(60)
        assert "report" in done, "the rebuild waited for a hung worker"
        assert done["report"].rendered == [] and sorted(done["report"].failed) == USERS
        assert pool.broken
    monkeypatch.setattr(ics, "render_event", real)
    again = refresh_dirty_feeds(linked, db, NOW)  # the dirty pass: in-process
    assert sorted(again.rendered) == USERS and again.failed == []


def test_small_renders_stay_in_process(db, linked) -> None:
    _load(db, linked, NOW)
    with _workers(min_fragments=10**6) as pool:
        report = rebuild_all_feeds(linked, db, NOW, pool=pool)
        assert not pool.used
    assert sorted(report.rendered) == USERS


@pytest.fixture
def pg_db(tmp_path: Path, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    database = make_db("postgresql", tmp_path, request)
    yield database
    database.dispose()


@pytest.fixture
def pg_linked(pg_db):  # type: ignore[no-untyped-def]
    base = load_settings(env={"CALSYNC_SECRET_KEY": SECRET})
    return replace(base, database=replace(base.database, url=pg_db.url), feeds=replace(
        base.feeds, job_url_template="https://dispatch.example/jobs/{job_id}"))


@pytest.mark.parametrize("workers", [False, True], ids=["in-process", "workers"])
def test_an_item_changed_during_the_rebuild_keeps_no_stale_fragment(
        pg_db, pg_linked, monkeypatch, workers: bool) -> None:
    """PostgreSQL: another transaction changes an item after the rebuild read it and
    before it stores the fragments; the store leaves that item out of date, and the next
    render shows the change."""
    db, settings = pg_db, pg_linked
    _load(db, settings, NOW)
    with db.read_session() as s:
        pk = s.scalar(select(ScheduleItem.pk).where(ScheduleItem.ext_id == "j1"))
    real_store = bulk._store_fragments
    changed: list[int] = []

    def store_after_a_change(session, fresh, keys, settings_hash):  # type: ignore[no-untyped-def]
        if not changed:
            assert pk in fresh
            with db.engine.begin() as other:  # commits before the store runs
                other.execute(update(ScheduleItem).where(ScheduleItem.pk == pk).values(
                    notes="Changed while the rebuild ran", sequence=ScheduleItem.sequence + 1,
                    content_hash="c" * 64))
            changed.append(pk)
        return real_store(session, fresh, keys, settings_hash)

    monkeypatch.setattr(bulk, "_store_fragments", store_after_a_change)
    with (_workers() if workers else RenderPool(workers=0)) as pool:
        report = rebuild_all_feeds(settings, db, NOW, pool=pool)
        assert pool.used is workers
    assert sorted(report.rendered) == USERS and changed == [pk]
    stored = _fragments(db)
    assert stored[pk] == (None, None)  # not the fragment of the content before the change
    assert sum(f is not None for f, _ in stored.values()) == report.phases.fragments_rendered - 1

    monkeypatch.setattr(bulk, "_store_fragments", real_store)
    render_users(settings, db, ["u2"], NOW)  # j1 is u2's (1 % 3 == 1)
    fragment, key = _fragments(db)[pk]
    assert fragment is not None and "Changed while the rebuild ran" in fragment
    assert key == ics.fragment_key("c" * 64, key_sequence(db, pk),
                                   ics.settings_digest(settings.feeds.job_url_template))


def key_sequence(db: Database, pk: int) -> int:
    with db.read_session() as s:
        value = s.scalar(select(ScheduleItem.sequence).where(ScheduleItem.pk == pk))
    assert value is not None
    return value


def test_postgresql_store_keeps_texts_that_hold_the_separator(pg_db, pg_linked) -> None:
    db = pg_db
    _load(db, pg_linked, NOW)
    with db.read_session() as s:
        rows = s.execute(select(ScheduleItem.pk, ScheduleItem.content_hash,
                                ScheduleItem.sequence).limit(3)).all()
    digest = "abcdef12"
    texts = {pk: f"BEGIN:VEVENT\r\nX:{i}\x1e{i}\r\nEND:VEVENT\r\n"
             for i, (pk, _, _) in enumerate(rows)}
    keys = {pk: ics.fragment_key(h, seq, digest) for pk, h, seq in rows}
    with db.session() as s:
        bulk._store_fragments(s, texts, keys, digest)
    stored = _fragments(db)
    for pk in texts:
        assert stored[pk] == (texts[pk], keys[pk])


def test_workers_die_with_their_parent(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import os, sys, time
        from calsync.feeds.parallel import RenderPool
        pool = RenderPool(workers=2, min_fragments=1)
        pool.result(pool.submit(abs, -1))
        print(" ".join(str(p) for p in pool._executor._processes), flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert proc.stdout is not None
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert len(workers) == 2
        proc.send_signal(signal.SIGKILL)  # no clean-up of its own
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(p) for p in workers)
    finally:
        if proc.poll() is None:
            proc.kill()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has died (its parent is gone; init reaps it)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_migration_0012_sets_and_resets_lz4_for_feed_bodies(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    db = make_db(kind, tmp_path, request)

    def compression() -> Any:
        with db.engine.connect() as conn:
            return conn.execute(text(
                "SELECT attcompression FROM pg_attribute WHERE attname = 'body' "
                "AND attrelid = 'feed_cache'::regclass")).scalar()

    try:
        if kind == "postgresql":
            assert compression() == "l"
        alembic_to(db, "downgrade", "0011")
        if kind == "postgresql":
            assert compression() == ""
        upgrade(db.engine)
        if kind == "postgresql":
            assert compression() == "l"
        with db.session() as s:  # bodies are written and read back as they were
            s.execute(text("INSERT INTO users (id, name, timezone, working_hours, "
                           "private_mode, feed_version, feed_enabled, created_at, updated_at) "
                           "VALUES ('u1', 'Jane', 'UTC', '{}', true, 1, true, :t, :t)"),
                      {"t": NOW})
            s.add(FeedCache(user_id="u1", dirty=False, body=b"BEGIN:VCALENDAR\r\n" * 5000,
                            schema_version=1))
        with db.read_session() as s:
            row = s.get(FeedCache, "u1")
            assert row is not None and row.body == b"BEGIN:VCALENDAR\r\n" * 5000
    finally:
        upgrade(db.engine)  # the PostgreSQL test database is shared: leave it at head
        db.dispose()


class _RecordedAhead(bulk.Ahead):
    made: list[bulk.Ahead] = []

    def __init__(self) -> None:
        super().__init__()
        _RecordedAhead.made.append(self)


@pytest.fixture
def two_chunks(monkeypatch):  # type: ignore[no-untyped-def]
    """Chunks of two users (u1, u2 | u3, u4), the Ahead of each render recorded."""
    from calsync.feeds import service

    monkeypatch.setattr(service, "CHUNK", 2)
    _RecordedAhead.made = []
    monkeypatch.setattr(bulk, "Ahead", _RecordedAhead)
    return _RecordedAhead.made


def test_the_next_chunk_sent_ahead_gives_the_same_feeds(db, linked, two_chunks) -> None:
    _load(db, linked, NOW)
    with RenderPool(workers=0) as none:
        rebuild_all_feeds(linked, db, NOW, pool=none)
    in_process, fragments = _cached(db), _fragments(db)
    _wipe(db)
    sent: list[int] = []
    real = bulk._stale_pks

    def counting(*args):  # type: ignore[no-untyped-def]
        found = real(*args)
        sent.extend(found)
        return found

    with _workers() as pool, pytest.MonkeyPatch.context() as mp:
        mp.setattr(bulk, "_stale_pks", counting)
        report = rebuild_all_feeds(linked, db, NOW, pool=pool)
    assert sorted(report.rendered) == USERS and report.failed == []
    assert sent  # the second chunk's items went to the workers during the first chunk
    assert _cached(db) == in_process
    assert _fragments(db) == fragments


def test_an_item_changed_after_it_was_sent_ahead_is_rendered_again(
        db, linked, two_chunks) -> None:
    import concurrent.futures

    from calsync.feeds import service

    _load(db, linked, NOW)
    with db.read_session() as s:
        pk = s.scalar(select(ScheduleItem.pk).where(ScheduleItem.ext_id == "j2"))  # u3's
    real_claim = service._claim
    claims: list[list[str]] = []

    def claim_after_a_change(database, user_ids):  # type: ignore[no-untyped-def]
        claims.append(list(user_ids))
        if len(claims) == 2:  # the first chunk is committed, the second not begun
            ahead = two_chunks[-1]
            assert pk in ahead.pks
            concurrent.futures.wait(ahead.futures)  # the workers rendered the old text
            with db.session() as s:
                s.execute(update(ScheduleItem).where(ScheduleItem.pk == pk).values(
                    notes="Changed between the chunks", sequence=ScheduleItem.sequence + 1,
                    content_hash="d" * 64))
        return real_claim(database, user_ids)

    with _workers() as pool, pytest.MonkeyPatch.context() as mp:
        mp.setattr(service, "_claim", claim_after_a_change)
        report = rebuild_all_feeds(linked, db, NOW, pool=pool)
    assert claims == [["u1", "u2"], ["u3", "u4"]]
    assert sorted(report.rendered) == USERS and report.failed == []
    fragment, key = _fragments(db)[pk]
    assert fragment is not None and "Changed between the chunks" in fragment
    assert key == ics.fragment_key("d" * 64, key_sequence(db, pk),
                                   ics.settings_digest(linked.feeds.job_url_template))
    assert "Changed between the chunks" in ics.unfold(_cached(db)["u3"][0].decode())
