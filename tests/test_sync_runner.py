"""The runner on SQLite and PostgreSQL: leases, retries with Retry-After, needs_reauth,
isolation of failures, quarantine, health fields, single-calendar sync."""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import uuid
from dataclasses import replace

import pytest
from sqlalchemy import select

from calsync.config import Settings
from calsync.db.models import (
    Calendar,
    Connection,
    ExternalBusy,
    ExternalEvent,
    Link,
    Quarantine,
)
from calsync.db.session import Database
from calsync.errors import NeedsReauth, ProviderUnavailable, Throttled
from calsync.schedule.store import import_document
from calsync.secrets import CredentialBox
from calsync.sync.memory import MemoryServer, shared_server
from calsync.sync.retry import RetryPolicy
from calsync.sync.runner import (
    claim_next_due,
    run_due_syncs,
    sync_calendar_now,
    sync_connection,
)

UTC = dt.timezone.utc
NOW = dt.datetime.now(UTC).replace(microsecond=0)


def add_user(db: Database, uid: str = "u1") -> None:
    report = import_document(db, {"users": [{"id": uid, "name": uid, "timezone": "UTC"}]},
                             now=NOW)
    assert report.ok


def add_connection(db: Database, settings: Settings, user: str = "u1",
                   provider: str = "memory") -> tuple[int, MemoryServer, dict[str, int]]:
    """A memory connection (its own server) with a primary and a conflict calendar."""
    name = f"runner-{uuid.uuid4().hex[:10]}"
    server = shared_server(name)  # has "personal" and "work"
    with db.session() as s:
        conn = Connection(user_id=user, provider=provider, account=f"{user}@memory", url=name,
                          credentials=CredentialBox.from_settings(settings).seal({"k": "v"}))
        s.add(conn)
        s.flush()
        ids = {}
        for rid, role in (("work", "primary"), ("personal", "conflict")):
            cal = Calendar(connection_id=conn.id, remote_id=rid, name=rid, role=role)
            s.add(cal)
            s.flush()
            ids[rid] = cal.id
        return conn.id, server, ids


def connection(db: Database, cid: int) -> Connection:
    with db.session() as s:
        row = s.get(Connection, cid)
        assert row is not None
        return row


def assert_next_due(due: dt.datetime | None, settings: Settings, now: dt.datetime = NOW) -> None:
    """Due again one interval after ``now``, less at most the jitter share of it."""
    interval = dt.timedelta(seconds=settings.sync.interval_seconds)
    assert due is not None
    assert now + interval * (1 - settings.sync.jitter_fraction) <= due <= now + interval


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


# --- leases -------------------------------------------------------------------------------

def test_two_workers_do_not_sync_the_same_connection(db: Database, settings: Settings) -> None:
    add_user(db)
    ids = [add_connection(db, settings)[0] for _ in range(3)]
    held = claim_next_due(db, "worker-a", NOW, 600)
    assert held in ids
    results = run_due_syncs(settings, db, NOW, worker_id="worker-b", sleep=Sleeps())
    assert sorted(r.connection_id for r in results) == sorted(set(ids) - {held})
    assert all(r.status == "ok" for r in results)
    assert connection(db, held).lease_owner == "worker-a"
    assert connection(db, held).last_sync_at is None
    for cid in set(ids) - {held}:
        row = connection(db, cid)
        assert row.lease_owner is None and row.lease_until is None
        assert_next_due(row.next_sync_at, settings)
    # nothing is due any more for worker b, and a's lease still blocks
    assert run_due_syncs(settings, db, NOW, worker_id="worker-b") == []
    # a direct sync of the held connection says busy
    assert sync_connection(settings, db, held, NOW, worker_id="worker-b").status == "busy"


def test_an_expired_lease_is_taken_over(db: Database, settings: Settings) -> None:
    add_user(db)
    cid, _, _ = add_connection(db, settings)
    with db.session() as s:
        row = s.get(Connection, cid)
        assert row is not None
        row.lease_owner, row.lease_until = "crashed-worker", NOW - dt.timedelta(seconds=1)
    [result] = run_due_syncs(settings, db, NOW, worker_id="worker-b")
    assert result.connection_id == cid and result.status == "ok"
    assert connection(db, cid).lease_owner is None


def test_concurrent_claims_never_overlap(db: Database, settings: Settings) -> None:
    add_user(db)
    ids = {add_connection(db, settings)[0] for _ in range(8)}
    claimed: dict[str, list[int]] = {"a": [], "b": []}
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            while (cid := claim_next_due(db, name, NOW, 600)) is not None:
                claimed[name].append(cid)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert not set(claimed["a"]) & set(claimed["b"])
    assert set(claimed["a"]) | set(claimed["b"]) == ids
    assert len(claimed["a"]) + len(claimed["b"]) == len(ids)


# --- retries and provider errors ---------------------------------------------------------

def test_throttling_honours_retry_after_then_backs_off(db: Database, settings: Settings) -> None:
    add_user(db)
    cid, server, _ = add_connection(db, settings)
    server.fail_next("changes", Throttled("slow down", retry_after=7),
                     Throttled("slow down"), ProviderUnavailable("503"))
    sleeps = Sleeps()
    result = sync_connection(settings, db, cid, NOW, sleep=sleeps, rng=random.Random(1))
    assert result.status == "ok", result.error
    assert sleeps.waits[0] == 7
    assert 1.0 <= sleeps.waits[1] <= 2.0  # second attempt: backoff 2 s, jitter 50-100 %
    assert 2.0 <= sleeps.waits[2] <= 4.0  # third: 4 s
    assert result.waits == sleeps.waits


def test_retries_give_up_and_a_long_retry_after_reschedules(db: Database,
                                                            settings: Settings) -> None:
    add_user(db)
    cid, server, cals = add_connection(db, settings)
    server.fail_next("changes", Throttled("come back in an hour", retry_after=3600))
    sleeps = Sleeps()
    result = sync_connection(settings, db, cid, NOW, sleep=sleeps)
    assert sleeps.waits == []  # not slept through
    assert result.status == "error" and "come back in an hour" in (result.error or "")
    row = connection(db, cid)
    # only the throttled calendar waits for the provider's time; the other one synced
    assert row.status == "error"
    assert_next_due(row.next_sync_at, settings)
    with db.session() as s:
        throttled = s.get(Calendar, cals["personal"])  # conflict calendars sync first
        other = s.get(Calendar, cals["work"])
        assert throttled is not None and other is not None
        assert throttled.status == "error" and "come back in an hour" in (throttled.last_error
                                                                          or "")
        assert throttled.retry_at == NOW + dt.timedelta(seconds=3600)
        assert other.status == "ok" and other.retry_at is None
    # before its retry time the throttled calendar is not asked again
    requests = server.requests
    later = NOW + dt.timedelta(minutes=10)
    result = sync_connection(settings, db, cid, later, sleep=sleeps)
    assert [c.status for c in result.calendars] == ["throttled", "ok"]
    assert server.requests == requests + 1  # the other calendar's one no-op request
    # after it, it syncs again and its health clears
    result = sync_connection(settings, db, cid, NOW + dt.timedelta(hours=1, seconds=1),
                             sleep=sleeps)
    assert result.status == "ok", result.error
    with db.session() as s:
        cal = s.get(Calendar, cals["personal"])
        assert cal is not None and cal.status == "ok" and cal.retry_at is None
    # max_retries unavailable answers in a row: error, after max_retries waits (one layer)
    server.fail_next("changes", *[ProviderUnavailable("503")] * (settings.sync.max_retries + 1))
    sleeps = Sleeps()
    result = sync_connection(settings, db, cid, NOW + dt.timedelta(hours=2), sleep=sleeps)
    assert result.status == "error" and len(sleeps.waits) == settings.sync.max_retries


def test_every_connection_gets_throttled_only_once_per_layer(db: Database,
                                                              settings: Settings) -> None:
    """Retries multiply no more: a calendar whose provider keeps answering 503 costs
    max_retries + 1 requests in all, not (max_retries + 1) squared."""
    add_user(db)
    cid, server, _ = add_connection(db, settings)
    server.fail_next("changes", *[ProviderUnavailable("503")] * 100)
    before = server.requests
    result = sync_connection(settings, db, cid, NOW, sleep=Sleeps(), calendar_ids=None)
    assert result.status == "error"
    # two calendars, each tried max_retries + 1 times
    assert server.requests - before == 2 * (settings.sync.max_retries + 1)


def test_retry_policy_caps_total_waiting_and_maps_timeouts() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TimeoutError("read timed out")
        return "ok"

    policy = RetryPolicy(max_retries=4, sleep=lambda _s: None, rng=random.Random(0))
    assert policy.call(flaky) == "ok" and len(policy.waits) == 2
    with pytest.raises(ProviderUnavailable):
        RetryPolicy(max_retries=1, sleep=lambda _s: None).call(
            lambda: (_ for _ in ()).throw(TimeoutError("t")))
    # Retry-After values that add up past the total cap: slept while within it, then raised
    waits: list[float] = []
    capped = RetryPolicy(max_retries=10, max_total_seconds=25, sleep=waits.append)
    with pytest.raises(Throttled) as err:
        capped.call(lambda: (_ for _ in ()).throw(Throttled("slow", retry_after=10)))
    assert waits == [10, 10] and err.value.retry_after == 10


def test_needs_reauth_stops_and_is_not_retried(db: Database, settings: Settings) -> None:
    add_user(db)
    cid, server, _ = add_connection(db, settings)
    server.fail_next("changes", NeedsReauth("token revoked"))
    sleeps = Sleeps()
    [result] = run_due_syncs(settings, db, NOW, sleep=sleeps)
    assert result.status == "needs_reauth" and sleeps.waits == []
    row = connection(db, cid)
    assert row.status == "needs_reauth" and "reconnected" in (row.last_error or "")
    # it is not picked up again, even when due
    assert run_due_syncs(settings, db, NOW + dt.timedelta(days=1)) == []


def test_one_failing_connection_does_not_stop_the_others(db: Database,
                                                         settings: Settings) -> None:
    add_user(db)
    broken, _, _ = add_connection(db, settings, provider="no-such-provider")
    failing, server, _ = add_connection(db, settings)
    server.fail_next("changes", RuntimeError("bug in a connector"))
    good, good_server, _ = add_connection(db, settings)
    good_server.put_external("personal", "Dentist", NOW + dt.timedelta(days=1),
                             NOW + dt.timedelta(days=1, hours=1))
    results = {r.connection_id: r for r in run_due_syncs(settings, db, NOW, sleep=Sleeps())}
    assert set(results) == {broken, failing, good}
    assert results[broken].status == "error" and "no-such-provider" in (results[broken].error
                                                                        or "")
    # an unexpected exception is named by its type and place, not its text (which may
    # carry event details)
    assert results[failing].status == "error" and "RuntimeError in request" in (
        results[failing].error or "")
    assert results[good].status == "ok" and results[good].totals()["imported"] == 1
    assert connection(db, good).last_success_at == NOW
    assert connection(db, failing).last_success_at is None


# --- quarantine, health, busy rows --------------------------------------------------------

def test_quarantined_objects_are_recorded_and_the_rest_syncs(
        db: Database, settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    add_user(db)
    cid, server, cals = add_connection(db, settings)
    bad = server.put_external("personal", "Broken", NOW + dt.timedelta(days=1),
                              NOW + dt.timedelta(days=1, hours=1))
    server.make_unreadable("personal", bad, "DTSTART: 'not-a-date' is not a date")
    server.put_external("personal", "Fine", NOW + dt.timedelta(days=2),
                        NOW + dt.timedelta(days=2, hours=1))
    with caplog.at_level(logging.WARNING, logger="calsync.sync"):
        result = sync_connection(settings, db, cid, NOW, sleep=Sleeps())
    assert result.status == "ok"
    with db.session() as s:
        [q] = s.scalars(select(Quarantine)).all()
        assert (q.calendar_id, q.remote_id) == (cals["personal"], bad)
        assert "not a date" in q.reason
        assert [e.summary for e in s.scalars(select(ExternalEvent))] == ["Fine"]
    assert any(bad in r.getMessage() and "not a date" in r.getMessage()
               for r in caplog.records)
    # once the object can be read again it is imported and its quarantine record goes
    server.make_readable("personal", bad)
    server.edit("personal", bad, summary="Fixed")
    assert sync_connection(settings, db, cid, NOW, sleep=Sleeps()).status == "ok"
    with db.session() as s:
        assert s.scalars(select(Quarantine)).all() == []
        assert sorted(e.summary or "" for e in s.scalars(select(ExternalEvent))) == ["Fine",
                                                                                    "Fixed"]


def test_health_fields_tokens_and_busy_rows(db: Database, settings: Settings) -> None:
    add_user(db)
    cid, server, cals = add_connection(db, settings)
    server.put_external("personal", "Dentist", NOW + dt.timedelta(days=1),
                        NOW + dt.timedelta(days=1, hours=1))
    start = NOW + dt.timedelta(days=3)
    import_document(db, {"blocks": [{"id": "b1", "user": "u1", "title": "Training",
                                     "start": start.isoformat(),
                                     "end": (start + dt.timedelta(hours=1)).isoformat()}]},
                    now=NOW)
    result = sync_connection(settings, db, cid, NOW)
    assert result.status == "ok" and result.totals()["created"] == 1
    with db.session() as s:
        for cal_id in cals.values():
            cal = s.get(Calendar, cal_id)
            assert cal is not None
            assert (cal.status, cal.last_error, cal.last_success_at) == ("ok", None, NOW)
            assert cal.sync_token and cal.sync_token.startswith("v1:")
        [busy] = s.scalars(select(ExternalBusy)).all()
        assert busy.user_id == "u1"
        assert (busy.start_at, busy.end_at) == (NOW + dt.timedelta(days=1),
                                                NOW + dt.timedelta(days=1, hours=1))
        assert len(s.scalars(select(Link)).all()) == 1
        # a token of an unknown version is not trusted: full listing, no crash
        cal = s.get(Calendar, cals["personal"])
        assert cal is not None
        cal.sync_token = "v9:whatever"
    result = sync_connection(settings, db, cid, NOW + dt.timedelta(minutes=1))
    assert result.status == "ok"
    personal = next(c for c in result.calendars if c.calendar_id == cals["personal"])
    assert personal.full
    assert connection(db, cid).last_success_at == NOW + dt.timedelta(minutes=1)


def test_sync_calendar_now_syncs_only_that_calendar(db: Database, settings: Settings) -> None:
    add_user(db)
    _, server, cals = add_connection(db, settings)
    server.put_external("personal", "School run", NOW + dt.timedelta(days=1),
                        NOW + dt.timedelta(days=1, hours=1))
    server.put_external("work", "Lunch", NOW + dt.timedelta(days=1),
                        NOW + dt.timedelta(days=1, hours=1))
    result = sync_calendar_now(settings, db, cals["personal"], NOW)
    assert result.status == "ok"
    assert [c.calendar_id for c in result.calendars] == [cals["personal"]]
    with db.session() as s:
        assert [e.summary for e in s.scalars(select(ExternalEvent))] == ["School run"]
        work = s.get(Calendar, cals["work"])
        assert work is not None and work.last_sync_at is None



def test_the_lease_is_renewed_between_calendars(db: Database, settings: Settings,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import calsync.sync.runner as runner

    add_user(db)
    cid, server, _ = add_connection(db, settings)
    seen: list[tuple[int, str, dt.datetime, str | None]] = []
    real = runner.renew_lease

    def recording(db_: Database, connection_id: int, owner: str, until: dt.datetime) -> None:
        real(db_, connection_id, owner, until)
        seen.append((connection_id, owner, until, connection(db, connection_id).lease_owner))

    monkeypatch.setattr(runner, "renew_lease", recording)
    result = sync_connection(settings, db, cid, NOW, worker_id="worker-x")
    assert result.status == "ok" and seen == []  # quick: far from a quarter of the lease
    # a slow provider: the first calendar takes longer than a quarter of a 1 s lease
    short = replace(settings, sync=replace(settings.sync, lease_seconds=1))
    server.latency = 0.3
    result = sync_connection(short, db, cid, NOW, worker_id="worker-x")
    assert result.status == "ok" and len(result.calendars) == 2
    [(conn_id, owner, until, holder)] = seen
    assert (conn_id, owner, holder) == (cid, "worker-x", "worker-x")
    assert until >= NOW + dt.timedelta(seconds=short.sync.lease_seconds)
    assert connection(db, cid).lease_owner is None  # released at the end
