"""What a sync that changes nothing costs the database (issue 12: a worker holds thousands of
connections only if the steady state is cheap): one read transaction for the connection and
its calendars, one read for the primary calendar's plan (a pull-only calendar that pulled
nothing is not planned), and ONE write transaction for every calendar's token and health, the
connection's health and the lease. Counted on both engines; the results are unchanged."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter
from typing import Any

from sqlalchemy import event, select

from calsync.config import Settings
from calsync.db.models import Calendar, Connection, ScheduleItem
from calsync.db.session import Database
from calsync.schedule.store import import_document
from calsync.sync.memory import shared_server
from calsync.sync.runner import run_due_syncs, sync_connection
from tests.test_sync_runner import NOW
from tests.test_worker_concurrency import add_connections


def _count(db: Database) -> tuple[Counter[str], list[str]]:
    counts: Counter[str] = Counter()
    statements: list[str] = []

    def before(_c: Any, _cur: Any, statement: str, *_a: Any) -> None:
        words = statement.split()
        counts[words[0].upper()] += 1
        if words[:2] == ["BEGIN", "IMMEDIATE"]:
            counts["write"] += 1
        statements.append(" ".join(words))

    event.listen(db.engine, "before_cursor_execute", before)
    event.listen(db.engine, "commit", lambda _c: counts.update(["commit"]))
    return counts, statements


def test_a_no_op_sync_is_one_write_transaction(db: Database, settings: Settings) -> None:
    server = f"noop-{uuid.uuid4().hex[:8]}"
    [cid] = add_connections(db, settings, 1, server)
    start = NOW + dt.timedelta(days=1)
    doc = {"blocks": [{"id": "b1", "user": "u0", "title": "Training",
                       "start": start.isoformat(),
                       "end": (start + dt.timedelta(hours=1)).isoformat()}]}
    assert import_document(db, doc, now=NOW).ok
    shared_server(server).add_calendar("personal")
    shared_server(server).put_external("personal", "Dentist", start,
                                       start + dt.timedelta(hours=1))
    first = sync_connection(settings, db, cid, NOW, sleep=lambda _s: None)
    assert first.status == "ok" and first.totals()["created"] == 1
    assert first.totals()["imported"] == 1
    # the next pull brings back the copy calsync wrote: recognised as its own, not a change
    assert sync_connection(settings, db, cid, NOW, sleep=lambda _s: None).status == "ok"
    with db.read_session() as s:
        before = {c.role: (c.sync_token, c.known_items)
                  for c in s.scalars(select(Calendar).where(Calendar.connection_id == cid))}

    counts, statements = _count(db)
    later = NOW + dt.timedelta(minutes=5)
    result = sync_connection(settings, db, cid, later, sleep=lambda _s: None,
                             claim=False, release=True)
    assert result.status == "ok", result.error
    assert all(c.status == "ok" for c in result.calendars)
    assert result.totals() == {"created": 0, "updated": 0, "deleted": 0, "imported": 0}
    # one commit: the calendars' tokens and health, the connection's health, no lease left
    assert counts["commit"] == 1, statements
    if db.dialect == "sqlite":
        assert counts["write"] == 1, statements
    assert counts["UPDATE"] == 3, statements  # two calendars and the connection
    # the primary calendar's plan reads its links and events; the conflict calendar's none
    plan_reads = [st for st in statements if st.startswith("SELECT")
                  and "FROM external_events" in st]
    assert len(plan_reads) == 1, statements
    assert counts["SELECT"] <= 8, statements

    with db.read_session() as s:
        conn = s.get(Connection, cid)
        assert conn is not None
        assert conn.last_sync_at is not None and conn.lease_owner is None
        assert conn.next_sync_at is not None and conn.next_sync_at > later
        assert s.scalar(select(ScheduleItem.pk)) is not None
        for cal in s.scalars(select(Calendar).where(Calendar.connection_id == cid)):
            assert cal.last_success_at is not None and cal.status == "ok"
            assert cal.known_items == before[cal.role][1] == 1
            assert cal.sync_token is not None

def test_a_worker_round_of_no_op_syncs_leaves_every_lease_free(db: Database,
                                                               settings: Settings) -> None:
    server = f"noop-{uuid.uuid4().hex[:8]}"
    ids = add_connections(db, settings, 12, server)
    run_due_syncs(settings, db, NOW, worker_id="w", sleep=lambda _s: None, concurrency=4)
    with db.session() as s:
        for conn in s.scalars(select(Connection)):
            conn.next_sync_at = None
    counts, _ = _count(db)
    results = run_due_syncs(settings, db, NOW + dt.timedelta(minutes=5), worker_id="w",
                            sleep=lambda _s: None, concurrency=4)
    assert sorted(r.connection_id for r in results) == sorted(ids)
    assert all(r.status == "ok" for r in results)
    # per sync one write, and at most one claim (shared by the syncs claimed together),
    # plus the round's onboarding check
    assert counts["commit"] <= 2 * len(ids) + 1
    with db.read_session() as s:
        assert s.scalars(select(Connection.lease_owner)
                         .where(Connection.lease_owner.is_not(None))).all() == []
