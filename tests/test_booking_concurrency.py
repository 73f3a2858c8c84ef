"""Atomic bookings across processes: 50 concurrent requests for one technician and one slot
(or overlapping ones), through two ``calsync serve --no-worker`` processes sharing one database -> exactly one 201.

Runs on SQLite (one database file) and PostgreSQL (one database)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from calsync.db.models import ScheduleItem
from calsync.db.session import Database
from tests.conftest import SECRET
from tests.test_availability_api import seed_users, user

REQUESTS = 50
PROCESSES = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def servers(db: Database, tmp_path: Path) -> Iterator[list[str]]:
    """Two API processes on free ports against the test database."""
    env = {**os.environ, "CALSYNC_DATABASE_URL": db.url, "CALSYNC_SECRET_KEY": SECRET}
    env.pop("CALSYNC_CONFIG", None)
    procs: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    try:
        for i in range(PROCESSES):
            port = free_port()
            log = open(tmp_path / f"server{i}.log", "wb")  # noqa: SIM115 - closed below
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "calsync.cli", "serve", "--no-worker",
                 "--host", "127.0.0.1", "--port", str(port)],
                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT))
            log.close()
            urls.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        for proc, url in zip(procs, urls):
            while True:
                if proc.poll() is not None:
                    logs = "\n".join(p.read_text() for p in tmp_path.glob("server*.log"))
                    pytest.fail(f"server exited with {proc.returncode}:\n{logs}")
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"server at {url} did not start")
                time.sleep(0.2)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_fifty_concurrent_bookings_of_one_slot_yield_one_success(db, servers, make_token,
                                                                 tmp_path) -> None:
    seed_users(db, user("tech", hours={}))
    token = make_token("dispatcher")

    def book(i: int) -> tuple[int, dict]:
        # The same slot, or one overlapping it by at least 75 minutes.
        minute = 15 * (i % 4)
        url = servers[i % len(servers)]
        body = {"id": f"race-{i}", "title": "Fiber install", "job_type": "Install",
                "account": "Acme", "start": f"2026-12-07T09:{minute:02d}:00-06:00",
                "end": f"2026-12-07T11:{minute:02d}:00-06:00", "assignees": ["tech"]}
        with httpx.Client(timeout=60) as client:
            r = client.post(f"{url}/api/bookings", json=body,
                            headers={"Authorization": f"Bearer {token}"})
        return r.status_code, r.json()

    with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
        outcomes = list(pool.map(book, range(REQUESTS)))

    statuses = Counter(code for code, _ in outcomes)
    logs = "\n".join(p.read_text() for p in tmp_path.glob("server*.log"))
    assert statuses == {201: 1, 409: REQUESTS - 1}, (statuses, outcomes[:3], logs[-3000:])
    refused = [body for code, body in outcomes if code == 409]
    assert all(b["error"] == "conflict" and b["reason"] == "busy" for b in refused)
    assert all(b["conflicts"][0]["conflicts"][0]["kind"] == "job" for b in refused)
    with db.session() as s:
        jobs = s.scalar(select(func.count()).select_from(ScheduleItem).where(
            ScheduleItem.kind == "job", ScheduleItem.deleted_at.is_(None)))
    assert jobs == 1
