"""Serving a big feed, against nginx serving the same bytes, in the same run.

One user with a ~620 KB feed (1,200 jobs with long notes, three zones). ``calsync serve
--no-worker --workers 2`` (SQLite) on loopback, and nginx (Debian's package; ``make bench``
installs it when missing) serving the feed's exact bytes from a file with its own ETag,
also with 2 worker processes (sendfile on). A third server is the same calsync through
uvicorn's plain h11 protocol (``uvicorn --http h11``, 2 workers): memo hits then go through
ASGI (``FeedFastPath``), which is how calsync served them before its own protocol
(``calsync.api.feedproto``). Load: wrk (Debian's package), 2 threads, 16 keep-alive
connections, 10 s each (``--quick``: 4 s), for 200 (plain GET) and 304 (If-None-Match with
the server's own ETag), the servers taking turns, two rounds (``--quick``: one). Besides
requests per second, each figure has the server's own CPU time per request (user + system
of the server process and its workers, from ``/proc``) and the load average when it ran.
calsync's share of nginx's requests per second in the same round is the figure that
counts: the machine is shared, so absolute numbers move with its load.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BIN = Path(sys.executable).parent
SECRET = "bench-secret-key-0123456789abcdef"
NGINX_CONF = """
worker_processes 2;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    types {{ text/calendar ics; }}
    sendfile on; tcp_nopush on; keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        root {tmp}/www;
        etag on;
    }}
}}
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing answered on {url}")


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                kids = (task / "children").read_text().split()
                todo.extend(int(k) for k in kids)
        except OSError:
            continue
    return found


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its descendants (workers), in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def _wrk(url: str, seconds: int, headers: dict[str, str],
         server_pid: int | None = None) -> dict[str, Any]:
    argv = ["wrk", "-t2", "-c16", f"-d{seconds}s", "--latency"]
    for k, v in headers.items():
        argv += ["-H", f"{k}: {v}"]
    cpu_before = _cpu_seconds(server_pid) if server_pid else 0.0
    out = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 60)
    cpu = (_cpu_seconds(server_pid) - cpu_before) if server_pid else 0.0
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    count = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out.stdout)
    p50 = re.search(r"50%\s+([\d.]+\w+)", out.stdout)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    requests = int(count.group(1)) if count else 0
    figure: dict[str, Any] = {
        "requests_per_second": float(rate.group(1)) if rate else None,
        "p50": p50.group(1) if p50 else None,
        "non_2xx_3xx": int(non2xx.group(1)) if non2xx else 0,
        "load_average_1m": round(os.getloadavg()[0], 2)}
    if server_pid and requests:
        figure["server_cpu_us_per_request"] = round(cpu / requests * 1e6, 1)
        figure["server_cores_busy"] = round(cpu / seconds, 2)
    return figure


def _documents(n: int) -> dict[str, Any]:
    zones = ("-06:00", "-05:00", "+01:00")
    jobs = []
    for i in range(n):
        day = 1 + i % 28
        hour = 8 + i % 9
        jobs.append({"id": f"j{i}", "title": f"Fiber install #{i}", "job_type": "Install",
                     "account": f"Acme Corp, branch {i}; Müller & Söhne",
                     "location": f"{100 + i} Main St, Springfield, IL 62701",
                     "notes": (f"Gate code {1000 + i}; call ahead, ring twice. Bring ONT and "
                               f"50 m drop cable. 光ファイバー line {i}\nSecond line"),
                     "start": f"2026-12-{day:02d}T{hour:02d}:00:00{zones[i % 3]}",
                     "end": f"2026-12-{day:02d}T{hour:02d}:45:00{zones[i % 3]}",
                     "assignees": ["tech"]})
    return {"users": [{"id": "tech", "name": "Tech One", "timezone": "America/Chicago"}],
            "jobs": jobs}


def _started(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def run(args: Any) -> dict[str, Any]:
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return {"skipped": f"{tool} is not installed (make bench installs it)"}
    quick = getattr(args, "quick", False)
    seconds, rounds = (4, 1) if quick else (10, 2)
    from calsync.api.auth import create_api_token
    from calsync.db.session import Database
    from calsync.schedule.store import import_document

    result: dict[str, Any] = {"wrk": "2 threads, 16 connections, keep-alive",
                              "seconds_per_figure": seconds, "workers": 2}
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tmp.chmod(0o755)  # nginx's workers run as an unprivileged user
        url = f"sqlite:///{tmp / 'calsync.db'}"
        db = Database(url)
        db.upgrade()
        assert import_document(db, _documents(1200)).ok
        with db.session() as s:
            token = create_api_token(s, "bench", "admin", None)
        db.dispose()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALSYNC_")}
        env.update({"CALSYNC_DATABASE_URL": url, "CALSYNC_SECRET_KEY": SECRET})
        port, asgi_port, nginx_port = _free_port(), _free_port(), _free_port()
        base = f"http://127.0.0.1:{port}"
        server = _started([str(BIN / "calsync"), "serve", "--no-worker", "--workers", "2",
                           "--port", str(port)], env, tmp)
        procs.append(server)
        # The same application through uvicorn's h11 protocol: memo hits go through ASGI.
        asgi_env = {**env, "CALSYNC_SERVE_HOST": "127.0.0.1",
                    "CALSYNC_SERVE_PORT": str(asgi_port)}
        asgi = _started([str(BIN / "uvicorn"), "calsync.api.serving:app_from_environment",
                         "--factory", "--workers", "2", "--http", "h11", "--host",
                         "127.0.0.1", "--port", str(asgi_port), "--no-access-log",
                         "--log-level", "warning"], asgi_env, tmp)
        procs.append(asgi)
        (tmp / "www").mkdir()
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, port=nginx_port))
        nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
        nginx = _started([nginx_bin, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)], env, tmp)
        procs.append(nginx)
        try:
            _wait(f"{base}/healthz", server)
            _wait(f"http://127.0.0.1:{asgi_port}/healthz", asgi)
            feed = httpx.post(f"{base}/api/users/tech/feed",
                              headers={"Authorization": f"Bearer {token}"}, timeout=30)
            feed_url = feed.json()["url"].replace("http://127.0.0.1:8080", base)
            asgi_url = feed_url.replace(base, f"http://127.0.0.1:{asgi_port}")
            plain = {"Accept-Encoding": "identity"}  # what wrk asks for
            for _ in range(4):  # render, then fill each worker's memory
                body = httpx.get(feed_url, headers=plain, timeout=60)
                again = httpx.get(asgi_url, headers=plain, timeout=60)
            if again.content != body.content or again.headers["etag"] != body.headers["etag"]:
                raise RuntimeError("the two calsync servers answered differently")
            etag = body.headers["etag"]
            (tmp / "www" / "feed.ics").write_bytes(body.content)
            nginx_url = f"http://127.0.0.1:{nginx_port}/feed.ics"
            _wait(nginx_url, nginx)
            answer = httpx.get(nginx_url)
            if answer.status_code != 200 or answer.content != body.content:
                raise RuntimeError(f"nginx answered {answer.status_code}, not the feed")
            nginx_etag = answer.headers["etag"]
            result["feed_bytes"] = len(body.content)
            targets = (("calsync", feed_url, etag, server.pid),
                       ("nginx", nginx_url, nginx_etag, nginx.pid),
                       ("calsync_asgi", asgi_url, etag, asgi.pid))
            for _, target, _, _ in targets:
                _wrk(target, 2, {})  # warm-up
            result["rounds"] = []
            for number in range(rounds):
                row: dict[str, Any] = {}
                for kind in ("200", "304"):
                    for label, target, tag, pid in targets:
                        asked = {"If-None-Match": tag} if kind == "304" else {}
                        row[f"{label}_{kind}"] = _wrk(target, seconds, asked, pid)
                        print(f"  round {number + 1} {label} {kind}: {row[f'{label}_{kind}']}",
                              flush=True)
                for kind in ("200", "304"):
                    theirs = row[f"nginx_{kind}"]["requests_per_second"] or 1.0
                    for label in ("calsync", "calsync_asgi"):
                        ours = row[f"{label}_{kind}"]["requests_per_second"] or 0.0
                        row[f"share_of_nginx_{label}_{kind}"] = round(ours / theirs, 3)
                result["rounds"].append(row)
        finally:
            for proc in procs:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    for kind in ("200", "304"):
        shares = [r[f"share_of_nginx_calsync_{kind}"] for r in result["rounds"]]
        result[f"share_of_nginx_{kind}"] = min(shares)
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    result["goal"] = ">= 30% of nginx for 200, >= 20% for 304 (share: the worst round)"
    return result
