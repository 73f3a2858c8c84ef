"""``make run PORT=…``: the demo's printed links and the server's own links follow the port
when no base_url is configured; a configured base_url (CALSYNC_BASE_URL) wins."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from click.testing import CliRunner

from calsync.cli import cli
from calsync.db.session import Database
from tests.caldav_servers import free_port
from tests.conftest import SECRET

ROOT = Path(__file__).resolve().parents[1]
CALSYNC = Path(sys.executable).with_name("calsync")


def _feed_ports(output: str) -> set[str]:
    return {urlsplit(line.split(": ", 1)[1].strip()).netloc
            for line in output.splitlines() if "/feeds/" in line}


def test_make_run_passes_the_port_to_demo_and_serve() -> None:
    proc = subprocess.run(["make", "-n", "run", "PORT=9123"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any("calsync demo --if-empty --port 9123" in line for line in lines), lines
    assert any("calsync serve --host 127.0.0.1 --port 9123" in line for line in lines), lines


def test_demo_links_follow_the_port_unless_a_base_url_is_set(sqlite_db: Database,
                                                             tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CALSYNC_CONFIG", raising=False)
    monkeypatch.delenv("CALSYNC_BASE_URL", raising=False)
    env = {"CALSYNC_DATABASE_URL": sqlite_db.url, "CALSYNC_SECRET_KEY": SECRET}
    runner = CliRunner()
    r = runner.invoke(cli, ["demo", "--port", "9123"], env=env)
    assert r.exit_code == 0, r.output
    assert _feed_ports(r.output) == {"127.0.0.1:9123"}
    r = runner.invoke(cli, ["demo", "--if-empty"], env=env)
    assert _feed_ports(r.output) == {"127.0.0.1:8080"}
    r = runner.invoke(cli, ["demo", "--if-empty", "--port", "9123"],
                      env={**env, "CALSYNC_BASE_URL": "https://cal.example.com"})
    assert r.exit_code == 0, r.output
    assert _feed_ports(r.output) == {"cal.example.com"}


def demo_site(tmp_path: Path) -> tuple[dict[str, str], str]:
    """A migrated SQLite database in ``tmp_path`` with the demo loaded, through the CLI as
    an operator runs it: the environment to run ``calsync`` in and an admin API token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALSYNC_")}
    env.update({"CALSYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'calsync.db'}",
                "CALSYNC_SECRET_KEY": SECRET})

    def run(*args: str) -> str:
        proc = subprocess.run([str(CALSYNC), *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    run("db", "upgrade")
    run("demo")
    return env, run("token", "create", "--name", "ops", "--role", "admin").strip()


@contextlib.contextmanager
def serving(env: dict[str, str], cwd: Path, *args: str
            ) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``calsync serve ARGS`` on a free port, answering: the process and its base URL;
    stopped (SIGTERM, then SIGKILL) at the end."""
    port = free_port()
    server = subprocess.Popen([str(CALSYNC), "serve", *args, "--port", str(port)],
                              env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        assert _when_up(server, f"{base}/healthz").status_code == 200
        yield server, base
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=20)


def test_serve_on_another_port_hands_out_links_to_that_port(tmp_path: Path) -> None:
    env, token = demo_site(tmp_path)
    with serving(env, tmp_path, "--no-worker") as (_server, base):
        r = httpx.post(f"{base}/api/users/demo-maria/feed",
                       headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 200, r.text
        url = r.json()["url"]
        assert url.startswith(f"{base}/feeds/demo-maria/")
        assert httpx.get(url, timeout=30).status_code == 200


def _when_up(server: subprocess.Popen[bytes], url: str) -> Any:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            err = server.stderr.read().decode() if server.stderr else ""
            raise AssertionError(f"calsync serve exited: {err[-2000:]}")
        try:
            return httpx.get(url, timeout=5)
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"calsync serve did not answer on {url}")
