"""Fixtures of the contract suite: one ``backend`` per registered name, and a ``harness``
that ties it to a migrated SQLite database, a user, a connection and the sync engine."""

from __future__ import annotations

import datetime as dt
import inspect
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from calsync.config import Settings, load_settings
from calsync.db.models import Calendar, Connection, ExternalBusy, ExternalEvent, Link, ScheduleItem
from calsync.db.session import Database
from calsync.schedule.store import import_document
from calsync.secrets import CredentialBox
from calsync.sync.connector import Connector, RemoteEvent, load_connector_factory
from calsync.sync.engine import sync_window
from calsync.sync.runner import ConnectionResult, sync_connection
from tests.conftest import SECRET, need
from tests.contract.backend import ContractBackend
from tests.contract.backends import BACKENDS, MissingBackend

UTC = dt.timezone.utc


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ContractBackend]:
    factory = BACKENDS[request.param]
    try:
        if len(inspect.signature(factory).parameters) >= 2:
            made = factory(tmp_path, request)
        else:
            made = factory(tmp_path)
    except MissingBackend as exc:
        need(False, f"contract backend {request.param!r} not available: {exc}")
        raise
    yield made
    made.close()


def real_now() -> dt.datetime:
    """Now, to the second: servers stamp edits with the wall clock, so tests use it too."""
    return dt.datetime.now(UTC).replace(microsecond=0)


class SyncHarness:
    """One user (u1, America/Chicago) with one connection to the backend's account."""

    user = "u1"

    def __init__(self, backend: ContractBackend, db: Database, settings: Settings) -> None:
        self.backend, self.db, self.settings = backend, db, settings
        self.now = real_now()
        self.connection_id: int | None = None
        self.calendars: dict[str, int] = {}  # remote id -> Calendar.id
        import_document(db, {"users": [{"id": self.user, "name": "Jane Doe",
                                        "email": "jane@example.com",
                                        "timezone": "America/Chicago"}]}, now=self.now)

    # -- set-up -------------------------------------------------------------------------
    def connect(self, primary: str | None, conflict: tuple[str, ...] = ()) -> int:
        ctx = self.backend.context()
        box = CredentialBox.from_settings(self.settings)
        with self.db.session() as s:
            conn = Connection(user_id=self.user, provider=self.backend.provider,
                              account=ctx.account, url=ctx.url,
                              credentials=box.seal(ctx.credentials))
            s.add(conn)
            s.flush()
            for rid, role in [(primary, "primary")] + [(c, "conflict") for c in conflict]:
                if rid is None:
                    continue
                cal = Calendar(connection_id=conn.id, remote_id=rid, name=f"cal {rid}",
                               role=role)
                s.add(cal)
                s.flush()
                self.calendars[rid] = cal.id
            self.connection_id = conn.id
        return conn.id

    def connector(self) -> Connector:
        return load_connector_factory(self.backend.provider).connect(self.backend.context())

    def items(self, doc: dict[str, Any], now: dt.datetime | None = None) -> None:
        report = import_document(self.db, doc, now=now or self.now)
        assert report.ok, report.errors

    def restart(self) -> None:
        """What a new process starts from (``calsync sync`` runs once per command): the
        backend forgets whatever its connectors keep in memory between syncs."""
        new_process = getattr(self.backend, "new_process", None)
        if new_process is not None:
            new_process()

    # -- running ------------------------------------------------------------------------
    def sync(self, now: dt.datetime | None = None,
             connector: Connector | None = None) -> ConnectionResult:
        assert self.connection_id is not None
        conn = connector or self.connector()
        try:
            result = sync_connection(self.settings, self.db, self.connection_id,
                                     now or self.now, conn, sleep=lambda _s: None)
        finally:
            if connector is None:
                conn.close()
        return result

    # -- looking ------------------------------------------------------------------------
    def remote(self, calendar_id: str) -> list[RemoteEvent]:
        """A full listing of the calendar, through a fresh connector."""
        conn = self.connector()
        try:
            return conn.changes(calendar_id, None, sync_window(self.settings, self.now)).changed
        finally:
            conn.close()

    def copies(self, calendar_id: str) -> dict[str, RemoteEvent]:
        out: dict[str, RemoteEvent] = {}
        for ev in self.remote(calendar_id):
            if ev.calsync_key:
                assert ev.calsync_key not in out, f"duplicate copy of {ev.calsync_key}"
                out[ev.calsync_key] = ev
        return out

    def item(self, kind: str, ext_id: str) -> ScheduleItem:
        with self.db.session() as s:
            item = s.scalar(select(ScheduleItem).where(ScheduleItem.kind == kind,
                                                       ScheduleItem.ext_id == ext_id))
            assert item is not None
            return item

    def links(self) -> list[Link]:
        with self.db.session() as s:
            return list(s.scalars(select(Link)))

    def externals(self, calendar_id: str) -> dict[str, ExternalEvent]:
        with self.db.session() as s:
            rows = s.scalars(select(ExternalEvent).where(
                ExternalEvent.calendar_id == self.calendars[calendar_id]))
            return {r.summary or "": r for r in rows}

    def busy(self, calendar_id: str, summary: str) -> list[tuple[dt.datetime, dt.datetime]]:
        with self.db.session() as s:
            rows = s.execute(select(ExternalBusy.start_at, ExternalBusy.end_at, ExternalBusy.user_id)
                             .join(ExternalEvent)
                             .where(ExternalEvent.calendar_id == self.calendars[calendar_id],
                                    ExternalEvent.summary == summary)
                             .order_by(ExternalBusy.start_at)).all()
        assert all(r[2] == self.user for r in rows)
        return [(r[0], r[1]) for r in rows]

    def calendar(self, calendar_id: str) -> Calendar:
        with self.db.session() as s:
            cal = s.get(Calendar, self.calendars[calendar_id])
            assert cal is not None
            return cal


@pytest.fixture
def contract_settings(tmp_path: Path) -> Settings:
    base = load_settings(env={"CALSYNC_SECRET_KEY": SECRET})
    return replace(base, database=replace(base.database, url=f"sqlite:///{tmp_path}/c.db"))


@pytest.fixture
def harness(backend: ContractBackend, sqlite_db: Database,
            contract_settings: Settings) -> SyncHarness:
    return SyncHarness(backend, sqlite_db, contract_settings)
