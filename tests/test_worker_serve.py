"""``calsync serve --workers N``: N HTTP worker processes share the port (each with its own
app, database engine and feed memo from the same configuration), the scheduler runs once in
the parent, and every worker serves the same feed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx

from tests.caldav_servers import free_port
from tests.conftest import SECRET
from tests.test_cli_port import CALSYNC, _when_up


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        for child in map(int, text):
            out += [child, *_children(child)]
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def test_serve_with_two_workers_answers_from_both(tmp_path: Path) -> None:
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
    token = run("token", "create", "--name", "ops", "--role", "admin").strip()
    port = free_port()
    server = subprocess.Popen([str(CALSYNC), "serve", "--workers", "2", "--port", str(port)],
                              env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        assert _when_up(server, f"{base}/healthz").status_code == 200
        workers = [p for p in _children(server.pid) if "spawn_main" in _cmdline(p)]
        assert len(workers) >= 2, [_cmdline(p) for p in _children(server.pid)]
        r = httpx.post(f"{base}/api/users/demo-maria/feed",
                       headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 200, r.text
        url = r.json()["url"]
        # new connections each time: the kernel spreads them over both workers
        answers = {httpx.get(url, timeout=30).headers["etag"] for _ in range(12)}
        assert len(answers) == 1
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=20)
