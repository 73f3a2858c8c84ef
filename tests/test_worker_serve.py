"""``calsync serve --workers N``: N HTTP worker processes share the port (each with its own
app, database engine and feed memo from the same configuration), the scheduler runs once in
the parent, and every worker serves the same feed."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.test_cli_port import demo_site, serving


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
    env, token = demo_site(tmp_path)
    with serving(env, tmp_path, "--workers", "2") as (server, base):
        workers = [p for p in _children(server.pid) if "spawn_main" in _cmdline(p)]
        assert len(workers) >= 2, [_cmdline(p) for p in _children(server.pid)]
        r = httpx.post(f"{base}/api/users/demo-maria/feed",
                       headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 200, r.text
        url = r.json()["url"]
        # new connections each time: the kernel spreads them over both workers
        answers = {httpx.get(url, timeout=30).headers["etag"] for _ in range(12)}
        assert len(answers) == 1
