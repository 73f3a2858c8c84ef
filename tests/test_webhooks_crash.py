"""Crashes and isolation with real processes: a ``calsync worker`` SIGKILLed in the middle
of deliveries loses no event (the next worker takes the dead worker's leases over at once;
duplicates only of what was in flight), keeps each subject's order, and a receiver that
hangs never delays the syncs that the same worker runs."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import select

import calsync.worker as worker
from calsync.config import Settings
from calsync.db.models import Connection, WebhookDelivery
from calsync.db.session import Database
from calsync.outbox.endpoints import create_endpoint
from calsync.outbox.events import SCHEDULE_ITEM_CHANGED, emit
from tests.conftest import SECRET
from tests.test_sync_runner import add_connection, add_user
from tests.webhook_receiver import Received, Receiver, always

UTC = dt.timezone.utc


def _now() -> dt.datetime:
    return dt.datetime.now(UTC)


def _start_worker(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CALSYNC_CONFIG": str(config), "PYTHONWARNINGS": "ignore"}
    env.pop("CALSYNC_DATABASE_URL", None)
    return subprocess.Popen([sys.executable, "-m", "calsync.cli", "worker"], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def test_sigkill_mid_delivery_loses_nothing_and_keeps_order(sqlite_db: Database,
                                                            tmp_path: Path) -> None:
    db = sqlite_db
    hung: dict[str, threading.Event] = {"A": threading.Event(), "B": threading.Event()}
    first_seen: set[int] = set()
    lock = threading.Lock()

    def hang_on_first_try_of(hang_at: dict[str, int]) -> Any:
        def behaviour(_r: Receiver, req: Received) -> tuple[int, float]:
            subject, n = req.data["subject"], req.data["n"]
            with lock:
                first = n not in first_seen
                first_seen.add(n)
            if first and hang_at.get(subject) == n:
                hung[subject].set()
                return 200, 30.0  # the worker dies while waiting for this answer
            return 200, 0.01
        return behaviour

    receiver = Receiver(behaviour=hang_on_first_try_of({"A": 3, "B": 12})).start()
    from calsync.config import load_settings
    settings = replace(load_settings(env={"CALSYNC_SECRET_KEY": SECRET}),
                       database=replace(load_settings(env={}).database, url=db.url))
    with db.session() as s:
        _ep, receiver.secret = create_endpoint(s, settings, receiver.url, ["*"], "", _now())
        for n in range(20):
            subject = "A" if n < 10 else "B"
            emit(s, SCHEDULE_ITEM_CHANGED, {"n": n, "subject": subject}, _now(),
                 order_key=f"item:block:{subject}")
    config = tmp_path / "calsync.toml"
    config.write_text(f'[database]\nurl = "{db.url}"\n[security]\nsecret_key = "{SECRET}"\n'
                      "[webhooks]\npoll_seconds = 0.1\ntimeout_seconds = 20.0\n"
                      "lease_seconds = 600\n")
    log = tmp_path / "worker.log"
    first = _start_worker(config, log)
    try:
        assert hung["A"].wait(30) and hung["B"].wait(30), log.read_text()[-2000:]
        with db.read_session() as s:
            in_flight = s.scalars(select(WebhookDelivery.lease_owner).where(
                WebhookDelivery.lease_owner.is_not(None))).all()
        assert len(in_flight) == 2 and all(f":{first.pid}:" in o for o in in_flight)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    # the lease is 10 minutes long: only the dead holder's pid lets the next worker in now
    second = _start_worker(config, log)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with db.read_session() as s:
                left = s.scalar(select(WebhookDelivery.id).where(
                    WebhookDelivery.status != "delivered").limit(1))
            if left is None:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("not every event was delivered: " + log.read_text()[-2000:])
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            second.wait(15)
        except subprocess.TimeoutExpired:
            second.kill()
            second.wait(10)
        receiver.stop()
    assert all(r.verified for r in receiver.received)
    arrivals = [r.data["n"] for r in receiver.received]
    assert sorted(set(arrivals)) == list(range(20))  # none lost
    dupes = sorted(n for n in set(arrivals) if arrivals.count(n) > 1)
    assert dupes == [3, 12]  # only the two in flight at the crash came twice
    for numbers in (range(0, 10), range(10, 20)):
        got = [n for n in arrivals if n in numbers]
        # each event of a subject first arrives after every earlier one of that subject
        firsts = [n for i, n in enumerate(got) if n not in got[:i]]
        assert firsts == list(numbers)


def test_a_hanging_receiver_never_delays_syncs(db: Database, settings: Settings) -> None:
    """The worker's scheduler with every delivery thread stuck on a receiver that hangs: a
    connection that becomes due is still synced at the next tick, not after the answers."""
    receiver = Receiver(behaviour=always(200, 4.0)).start()
    fast = replace(settings, webhooks=replace(settings.webhooks, poll_seconds=0.1,
                                              timeout_seconds=5.0, delivery_threads=4))
    add_user(db)
    cid, _server, _ids = add_connection(db, fast)
    with db.session() as s:
        _ep, receiver.secret = create_endpoint(s, fast, receiver.url, ["*"], "", _now())
        for n in range(40):
            emit(s, SCHEDULE_ITEM_CHANGED, {"n": n}, _now(), order_key=f"item:block:{n}")
    loop = worker.SyncLoop(fast, db, tick_seconds=0.2)
    scheduler = worker.build_scheduler(fast, db, blocking=False, sync_loop=loop)
    scheduler.start()
    try:
        deadline = time.monotonic() + 10
        while receiver.max_in_flight < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert receiver.max_in_flight == 4  # every delivery thread is stuck
        with db.session() as s:
            conn = s.get(Connection, cid)
            assert conn is not None
            before = conn.last_sync_at
            conn.next_sync_at = _now()  # due now, while the deliveries hang
        started = time.monotonic()
        synced = before
        while time.monotonic() - started < 4 and synced == before:
            time.sleep(0.05)
            with db.read_session() as s:
                synced = s.scalar(select(Connection.last_sync_at).where(Connection.id == cid))
        assert synced is not None and synced != before
        # synced while the first deliveries were still waiting for their answers
        assert [r.answered for r in receiver.received[:4]] == [0, 0, 0, 0]
    finally:
        scheduler.shutdown(wait=False)
        receiver.stop()
