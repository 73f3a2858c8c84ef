"""Random edits on both sides converge: a Hypothesis state machine over the real engine and
the in-memory connector.

Local side: jobs, time off and blocks are created, edited, cancelled and deleted through the
schedule store. Remote side: the user edits and deletes calsync's copies and adds, moves and
deletes their own events. After every sync the calendar and the database must agree: one
copy per live item (no duplicates), no copy of a dead item, external events mirrored as busy
blocks, jobs exactly as dispatch has them, and nothing lost that nobody deleted.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from sqlalchemy import select

from calsync.config import Settings
from calsync.db.models import Base, Calendar, Connection, ExternalEvent, ScheduleItem
from calsync.db.session import Database
from calsync.schedule.store import import_document
from calsync.sync.item_events import item_key, summary_of
from calsync.sync.memory import MemoryConnector, MemoryServer
from calsync.sync.runner import sync_connection

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 23, 12, tzinfo=UTC)
IDS = st.integers(min_value=0, max_value=3)
WORDS = st.sampled_from(["Alpha", "Beta", "Gamma", "Delta", "Epsilon"])
POLICY = st.sampled_from(["newest_wins", "calsync_wins", "remote_wins"])
OPS = ["local_upsert", "local_upsert", "local_delete", "local_cancel_job", "set_policy",
       "remote_edit_copy", "remote_edit_copy", "remote_delete_copy", "remote_add_external",
       "remote_edit_external", "remote_delete_external", "expire_token",
       "crash_after_create"]
OP = st.tuples(st.sampled_from(OPS), st.sampled_from(["job", "time_off", "block"]), IDS, WORDS,
               st.integers(1, 20), st.integers(-2, 2), POLICY)


class SyncConvergence(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = TemporaryDirectory()
        self.db = Database(f"sqlite:///{Path(self.tmp.name) / 's.db'}")
        Base.metadata.create_all(self.db.engine)
        self.settings = Settings()
        self.server = MemoryServer()
        self.cal = self.server.add_calendar("work", "Work")
        self.now = T0
        self.items: dict[tuple[str, str], dict[str, Any]] = {}  # what we last imported
        self.externals: dict[str, str] = {}  # remote id -> summary, as the user left them
        self.touched: set[str] = set()  # keys deleted or conflicting since the last sync
        self.synced_once = False
        import_document(self.db, {"users": [{"id": "u1", "name": "U", "timezone": "UTC"}]},
                        now=self.now)
        with self.db.session() as s:
            conn = Connection(user_id="u1", provider="memory", account="u1")
            s.add(conn)
            s.flush()
            s.add(Calendar(connection_id=conn.id, remote_id=self.cal, name="Work",
                           role="primary"))
            self.conn_id = conn.id

    def teardown(self) -> None:
        self.db.dispose()
        self.tmp.cleanup()

    def tick(self) -> dt.datetime:
        self.now += dt.timedelta(minutes=1)
        return self.now

    # -- local side -----------------------------------------------------------------------
    def _put(self, kind: str, ext_id: str, body: dict[str, Any]) -> None:
        section = {"job": "jobs", "time_off": "time_off", "block": "blocks"}[kind]
        report = import_document(self.db, {section: [body]}, now=self.tick())
        assert report.ok, report.errors
        self.items[(kind, ext_id)] = body

    def local_upsert(self, kind: str, n: int, word: str, day: int) -> None:
        ext_id = f"{kind[0]}{n}"
        start = T0 + dt.timedelta(days=day, hours=2)
        body: dict[str, Any] = {"id": ext_id, "start": start.isoformat(),
                                "end": (start + dt.timedelta(hours=1)).isoformat()}
        if kind == "job":
            body |= {"title": word, "job_type": "Install", "account": word,
                     "assignees": ["u1"], "status": "scheduled"}
        elif kind == "time_off":
            body |= {"user": "u1", "reason": word}
        else:
            body |= {"user": "u1", "title": word}
        self._put(kind, ext_id, body)

    def local_delete(self, kind: str, n: int) -> None:
        ext_id = f"{kind[0]}{n}"
        if (kind, ext_id) not in self.items:
            return
        self._put(kind, ext_id, dict(self.items[(kind, ext_id)], deleted=True))
        self.touched.add(item_key(kind, ext_id))

    def local_cancel_job(self, n: int) -> None:
        body = self.items.get(("job", f"j{n}"))
        if body is None or body.get("deleted"):
            return
        self._put("job", f"j{n}", dict(body, status="cancelled"))

    def set_policy(self, policy: str) -> None:
        with self.db.session() as s:
            conn = s.get(Connection, self.conn_id)
            assert conn is not None
            conn.settings = {"conflict_policy": policy}

    # -- remote side ----------------------------------------------------------------------
    def _copy(self, key: str) -> str | None:
        for obj in self.server.objects(self.cal):
            if obj.key == key:
                return obj.remote_id
        return None

    def remote_edit_copy(self, kind: str, n: int, word: str, shift: int) -> None:
        key = item_key(kind, f"{kind[0]}{n}")
        rid = self._copy(key)
        if rid is None:
            return
        obj = self.server.cal(self.cal).objects[rid]
        summary = f"Time off: {word}" if kind == "time_off" else word
        self.server.edit(self.cal, rid, now=self.tick(), summary=summary,
                         start=obj.start + dt.timedelta(hours=shift),
                         end=obj.end + dt.timedelta(hours=shift))
        self.touched.add(key)

    def remote_delete_copy(self, kind: str, n: int) -> None:
        key = item_key(kind, f"{kind[0]}{n}")
        rid = self._copy(key)
        if rid is not None:
            self.server.remove(self.cal, rid)
            self.touched.add(key)

    def remote_add_external(self, word: str, day: int) -> None:
        start = T0 + dt.timedelta(days=day, hours=5)
        rid = self.server.put_external(self.cal, word, start, start + dt.timedelta(hours=1),
                                       now=self.tick())
        self.externals[rid] = word

    def remote_edit_external(self, n: int, word: str) -> None:
        if not self.externals:
            return
        rid = sorted(self.externals)[n % len(self.externals)]
        self.server.edit(self.cal, rid, now=self.tick(), summary=word)
        self.externals[rid] = word

    def remote_delete_external(self, n: int) -> None:
        if not self.externals:
            return
        rid = sorted(self.externals)[n % len(self.externals)]
        self.server.remove(self.cal, rid)
        del self.externals[rid]

    def expire_token(self) -> None:
        self.server.invalidate_tokens(self.cal)

    def crash_after_create(self) -> None:
        """A sync whose process dies right after its first remote create."""
        class Crash(BaseException):
            pass

        inner = MemoryConnector(self.server)

        class Crashing:
            def create(self, calendar_id: str, event: Any) -> Any:
                inner.create(calendar_id, event)
                raise Crash()

            def __getattr__(self, name: str) -> Any:
                return getattr(inner, name)

        try:
            sync_connection(self.settings, self.db, self.conn_id, self.tick(),
                            Crashing(),  # type: ignore[arg-type]
                            sleep=lambda _s: None)
        except Crash:
            pass
        with self.db.session() as s:  # the lease of the dead worker runs out
            conn = s.get(Connection, self.conn_id)
            assert conn is not None
            conn.lease_owner = conn.lease_until = None

    # -- rounds: random edits on both sides, then a sync ------------------------------------
    @rule(ops=st.lists(OP, min_size=1, max_size=8))
    def round(self, ops: list[tuple[str, str, int, str, int, int, str]]) -> None:
        for name, kind, n, word, day, shift, policy in ops:
            match name:
                case "local_upsert":
                    self.local_upsert(kind, n, word, day)
                case "local_delete":
                    self.local_delete(kind, n)
                case "local_cancel_job":
                    self.local_cancel_job(n)
                case "set_policy":
                    self.set_policy(policy)
                case "remote_edit_copy":
                    self.remote_edit_copy(kind, n, word, shift)
                case "remote_delete_copy":
                    self.remote_delete_copy(kind, n)
                case "remote_add_external":
                    self.remote_add_external(word, day)
                case "remote_edit_external":
                    self.remote_edit_external(n, word)
                case "remote_delete_external":
                    self.remote_delete_external(n)
                case "expire_token":
                    self.expire_token()
                case "crash_after_create":
                    self.crash_after_create()
        self.sync()

    def sync(self) -> None:
        result = sync_connection(self.settings, self.db, self.conn_id, self.tick(),
                                 MemoryConnector(self.server), sleep=lambda _s: None)
        assert result.status in ("ok", "error"), result.error
        if result.status == "error":  # only the empty-calendar guard may stop a sync
            assert "lists none" in (result.error or ""), result.error
            with self.db.session() as s:
                for cal in s.scalars(select(Calendar)):
                    cal.empty_confirmed = True
            return self.sync()
        self.synced_once = True
        live = self.check_converged()
        for (kind, ext_id), body in self.items.items():  # deleted by the user's remote delete
            if item_key(kind, ext_id) in self.touched and item_key(kind, ext_id) not in live:
                self.items[(kind, ext_id)] = dict(body, deleted=True)
        again = sync_connection(self.settings, self.db, self.conn_id, self.tick(),
                                MemoryConnector(self.server), sleep=lambda _s: None)
        changes = {k: n for k, n in again.totals().items() if n}
        assert changes == {}, f"a second sync still changed things: {changes}"
        self.touched.clear()

    def check_converged(self) -> set[str]:
        copies: dict[str, Any] = {}
        for obj in self.server.objects(self.cal):
            if obj.key:
                assert obj.key not in copies, f"duplicate copy of {obj.key}"
                copies[obj.key] = obj
        with self.db.session() as s:
            items = list(s.scalars(select(ScheduleItem)))
            live = {item_key(i.kind, i.ext_id): i for i in items
                    if i.deleted_at is None and i.status != "cancelled"}
            dead = {item_key(i.kind, i.ext_id) for i in items} - set(live)
            assert set(copies) == set(live), (sorted(copies), sorted(live))
            for key, item in live.items():
                obj = copies[key]
                assert obj.start == item.start_at and obj.end == item.end_at, key
                assert obj.summary == summary_of(item), key
                if item.kind == "job":
                    body = self.items[("job", item.ext_id)]
                    assert item.account == body["account"]  # dispatch's version, always
                    assert item.start_at.isoformat() == body["start"]
            for key in dead:
                assert key not in copies
            externals = {e.remote_id: e.summary for e in s.scalars(select(ExternalEvent))}
        assert externals == self.externals
        # nothing lost: an item nobody deleted since the last sync is still alive
        for (kind, ext_id), body in self.items.items():
            key = item_key(kind, ext_id)
            if body.get("deleted") or body.get("status") == "cancelled" or key in self.touched:
                continue
            assert key in live, f"{key} was lost"
        return set(live)

    @invariant()
    def no_duplicate_copies(self) -> None:
        keys = [o.key for o in self.server.objects(self.cal) if o.key]
        assert len(keys) == len(set(keys))


SyncConvergence.TestCase.settings = settings(
    max_examples=25, stateful_step_count=10, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestSyncConvergence = SyncConvergence.TestCase
