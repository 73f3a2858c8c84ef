"""Outbox retention: deleting a month-old backlog in batches, on SQLite and PostgreSQL.

The outbox holds ``events`` numbered events, each delivered to two endpoints with one
attempt per delivery; all but the newest ``recent`` are 40 days old and settled. One
:func:`calsync.outbox.retention.prune` (30 days, batches of 1,000 events) deletes them
while another thread, and another process, each emit an event every 50 ms, as the API
and syncs would. Recorded:
wall and CPU time of the prune (this process, and the PostgreSQL backends' from /proc
when the server is local), per 1,000 events; the longest write transaction of the prune;
the longest a concurrent emit took, in this process and in the other (what the batches
bound); the change feed's cost per
poll (``read_changes`` of 100, which now also reads the horizon row) after the prune; and
the load average. Two rounds, alternately without a pause between batches and with the
default (SQLite: a pause as long as the batch took, at most 0.1 s; PostgreSQL: none, so
both rounds there are alike). PostgreSQL from 127.0.0.1:5432 or
$CALSYNC_BENCH_DATABASE_URL.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import delete, event, func, insert, select

from bench.bench_availability import _server_ms, _server_ticks
from bench.bench_webhooks import _databases

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
CHUNK = 5000


def _load(db: Any, events: int, recent: int) -> None:
    from calsync.db.models import OutboxEvent, WebhookAttempt, WebhookDelivery, WebhookEndpoint

    old = NOW - dt.timedelta(days=40)
    with db.session() as s:
        eps = []
        for n in range(2):
            ep = WebhookEndpoint(url=f"http://127.0.0.1:9/{n}", events=["*"], secret=b"x",
                                 created_at=old, start_seq=1)
            s.add(ep)
            s.flush()
            eps.append(ep.id)
    for start in range(1, events + 1, CHUNK):
        seqs = range(start, min(start + CHUNK, events + 1))
        with db.session() as s:
            rows = [{"public_id": f"msg_{uuid.uuid4().hex}", "type": "schedule_item.changed",
                     "payload": {"type": "schedule_item.changed", "data": {"n": q}},
                     "order_key": f"item:block:{q}", "seq": q, "schema_version": 1,
                     "created_at": NOW if q > events - recent else old} for q in seqs]
            s.execute(insert(OutboxEvent), rows)
            ids = dict(s.execute(select(OutboxEvent.seq, OutboxEvent.id)
                                 .where(OutboxEvent.seq >= seqs[0],
                                        OutboxEvent.seq <= seqs[-1])).all())
            s.execute(insert(WebhookDelivery), [
                {"event_id": ids[q], "endpoint_id": ep, "seq": q, "order_key": "",
                 "status": "delivered", "attempts": 1, "next_attempt_at": old,
                 "created_at": old} for q in seqs for ep in eps])
            deliveries = s.execute(select(WebhookDelivery.id, WebhookDelivery.endpoint_id)
                                   .where(WebhookDelivery.seq >= seqs[0],
                                          WebhookDelivery.seq <= seqs[-1])).all()
            s.execute(insert(WebhookAttempt), [
                {"delivery_id": d, "endpoint_id": ep, "at": old, "status_code": 200,
                 "duration_ms": 5, "worker": "bench"} for d, ep in deliveries])


def _count(db: Any, model: Any) -> int:
    with db.read_session() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


class _Emitter(threading.Thread):
    """Emits one event every 50 ms and keeps the longest emit (transaction) time."""

    def __init__(self, db: Any) -> None:
        super().__init__(daemon=True)
        self.db, self.stop, self.longest, self.count = db, threading.Event(), 0.0, 0

    def run(self) -> None:
        from calsync.outbox.events import SCHEDULE_ITEM_CHANGED, emit

        while not self.stop.wait(0.05):
            started = time.perf_counter()
            with self.db.session() as s:
                emit(s, SCHEDULE_ITEM_CHANGED, {"n": -1}, NOW)
            self.longest = max(self.longest, time.perf_counter() - started)
            self.count += 1


_OTHER_PROCESS = """
import datetime as dt, os, sys, time
from calsync.db.session import Database
from calsync.outbox.events import SCHEDULE_ITEM_CHANGED, emit
db, stop, longest, count = Database(sys.argv[1]), sys.argv[2], 0.0, 0
now = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.timezone.utc)
print("ready", flush=True)
while not os.path.exists(stop):
    time.sleep(0.05)
    started = time.perf_counter()
    with db.session() as s:
        emit(s, SCHEDULE_ITEM_CHANGED, {"n": -2}, now)
    longest, count = max(longest, time.perf_counter() - started), count + 1
print(count, longest, flush=True)
"""


class _OtherProcess:
    """The same emitter in a process of its own (another calsync process writing)."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.stop_file = tmp / f"stop-{uuid.uuid4().hex[:6]}"
        self.proc = subprocess.Popen([sys.executable, "-c", _OTHER_PROCESS, url,
                                      str(self.stop_file)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.proc.stdout.readline()

    def finish(self) -> tuple[int, float]:
        self.stop_file.write_text("")
        out, _ = self.proc.communicate(timeout=60)
        count, longest = out.split()
        return int(count), float(longest)


def _measure(url: str, events: int, recent: int, pause: float | None, tmp: Path
             ) -> dict[str, Any]:
    from calsync.db.models import OutboxEvent, WebhookAttempt, WebhookDelivery
    from calsync.db.session import Database
    from calsync.outbox.changes import read_changes
    from calsync.outbox.retention import prune

    db = Database(url)
    db.upgrade()
    try:
        t = time.perf_counter()
        _load(db, events, recent)
        load_s = time.perf_counter() - t
        before = {"events": _count(db, OutboxEvent), "deliveries": _count(db, WebhookDelivery),
                  "attempts": _count(db, WebhookAttempt)}
        opened: dict[int, float] = {}
        durations: list[float] = []

        def began(conn: Any) -> None:
            opened[id(conn)] = time.perf_counter()

        def ended(conn: Any) -> None:
            start = opened.pop(id(conn), None)
            if start is not None and threading.current_thread() is main:
                durations.append(time.perf_counter() - start)

        main = threading.current_thread()
        event.listen(db.engine, "begin", began)
        event.listen(db.engine, "commit", ended)
        emitter = _Emitter(db)
        emitter.start()
        other = _OtherProcess(url, tmp)
        ticks = _server_ticks(db)
        cpu, wall = time.process_time(), time.perf_counter()
        result = prune(db, 30, NOW, pause=pause)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        server = _server_ms(ticks, db)
        emitter.stop.set()
        emitter.join()
        other_count, other_longest = other.finish()
        event.remove(db.engine, "begin", began)
        event.remove(db.engine, "commit", ended)
        per_k = 1000 / max(result.events, 1)
        polls = 200
        cursor = None
        feed_cpu = time.process_time()
        for _ in range(polls):
            cursor = read_changes(db, None, 100, NOW).next
        feed_cpu = time.process_time() - feed_cpu
        del cursor
        return {
            "load_s": round(load_s, 1), "rows_before": before,
            "removed": result.as_dict(),
            "rows_after": {"events": _count(db, OutboxEvent),
                           "deliveries": _count(db, WebhookDelivery),
                           "attempts": _count(db, WebhookAttempt)},
            "prune_wall_s": round(wall, 2), "prune_cpu_s": round(cpu, 2),
            "prune_server_cpu_s": round(server / 1000, 2) if server is not None else None,
            "per_1000_events_wall_ms": round(wall * 1000 * per_k, 1),
            "per_1000_events_cpu_ms": round(cpu * 1000 * per_k, 1),
            "prune_transactions": len(durations),
            "longest_prune_transaction_ms": round(max(durations, default=0) * 1000, 1),
            "median_prune_transaction_ms": round(sorted(durations)[len(durations) // 2]
                                                 * 1000, 1) if durations else None,
            "concurrent_emits": emitter.count,
            "longest_concurrent_emit_ms": round(emitter.longest * 1000, 1),
            "other_process_emits": other_count,
            "other_process_longest_emit_ms": round(other_longest * 1000, 1),
            "feed_poll_cpu_ms": round(feed_cpu * 1000 / polls, 3),
            "load_average": os.getloadavg(),
        }
    finally:
        db.dispose()


def _reset(url: str) -> None:
    from calsync.db.models import (
        OutboxEvent,
        OutboxHorizon,
        WebhookAttempt,
        WebhookDelivery,
        WebhookEndpoint,
    )
    from calsync.db.session import Database

    db = Database(url)
    try:
        with db.session() as s:
            for model in (WebhookAttempt, WebhookDelivery, OutboxEvent, OutboxHorizon,
                          WebhookEndpoint):
                s.execute(delete(model))
    finally:
        db.dispose()


def run(args: Any) -> dict[str, Any]:
    quick = bool(getattr(args, "quick", False))
    events, recent = (6000, 1000) if quick else (60000, 10000)
    results: dict[str, Any] = {"events": events, "recent": recent,
                               "endpoints": 2, "attempts_per_delivery": 1}
    with tempfile.TemporaryDirectory(prefix="calsync-bench-retention-") as tmp:
        for engine, url, cleanup in _databases(Path(tmp)):
            if not url:
                results[engine] = cleanup
                continue
            try:
                # alternately: no pause between batches, then the default pause
                results[engine] = {}
                for round_ in (1, 2):
                    for name, pause in (("no_pause", 0.0), ("default", None)):
                        key = f"{name}_round{round_}"
                        results[engine][key] = _measure(url, events, recent, pause, Path(tmp))
                        _reset(url)
            finally:
                if callable(cleanup):
                    cleanup()
    return results
