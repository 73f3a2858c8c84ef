"""Processes for the SQLite load test (tests/test_sqlite_load.py): each opens its own
Database on the shared file and loops over one kind of writer, returning what failed."""

from __future__ import annotations

import datetime as dt
import traceback
from dataclasses import replace

from calsync.config import load_settings
from calsync.db.session import Database

SECRET = "test-secret-key-0123456789abcdef"
UTC = dt.timezone.utc


def _settings(url: str):  # type: ignore[no-untyped-def]
    base = load_settings(env={"CALSYNC_SECRET_KEY": SECRET})
    return replace(base, database=replace(base.database, url=url))


def importer(url: str, rounds: int, offset: int) -> list[str]:
    """Re-imports the jobs with new titles, as the platform does every few seconds."""
    from calsync.schedule.store import import_document

    db = Database(url)
    failures: list[str] = []
    try:
        for n in range(rounds):
            doc = {"jobs": [{"id": f"j{i}", "title": f"Install {offset}-{n}",
                             "job_type": "Install", "account": "Acme",
                             "start": f"2026-12-{10 + i % 10:02d}T09:00:00+00:00",
                             "end": f"2026-12-{10 + i % 10:02d}T10:00:00+00:00",
                             "assignees": [f"u{i % 4}"]} for i in range(40)]}
            try:
                report = import_document(db, doc, now=dt.datetime.now(UTC))
                if not report.ok:
                    failures.append(f"import rejected records: {report}")
            except Exception:  # noqa: BLE001 - reported to the test
                failures.append(traceback.format_exc(limit=3))
    finally:
        db.dispose()
    return failures


def syncer(url: str, rounds: int, connection_id: int) -> list[str]:
    """Syncs one memory connection again and again (its server lives in this process)."""
    from calsync.sync.runner import sync_connection

    settings = _settings(url)
    db = Database(url)
    failures: list[str] = []
    try:
        for _ in range(rounds):
            try:
                result = sync_connection(settings, db, connection_id, dt.datetime.now(UTC),
                                         sleep=lambda _s: None)
                if result.status != "ok":
                    failures.append(f"sync {result.status}: {result.error}")
            except Exception:  # noqa: BLE001 - reported to the test
                failures.append(traceback.format_exc(limit=3))
    finally:
        db.dispose()
    return failures


def feeds(url: str, rounds: int) -> list[str]:
    """Serves feeds as `calsync serve` does: renders dirty feeds, records fetches."""
    from calsync.feeds.service import current_feed, refresh_dirty_feeds

    settings = _settings(url)
    db = Database(url)
    failures: list[str] = []
    try:
        for _ in range(rounds):
            try:
                now = dt.datetime.now(UTC)
                refresh_dirty_feeds(settings, db, now)
                for uid in ("u0", "u1", "u2", "u3"):
                    current_feed(settings, db, uid, now)
            except Exception:  # noqa: BLE001 - reported to the test
                failures.append(traceback.format_exc(limit=3))
    finally:
        db.dispose()
    return failures
