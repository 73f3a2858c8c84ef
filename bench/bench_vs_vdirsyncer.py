"""Initial push of 500 items to a fresh Radicale calendar: calsync against vdirsyncer
(a bench dependency) on the same server, in the same run, direct and through a loopback
proxy that adds 50 ms before every chunk a client sends (a provider round trip).

calsync: the engine and the CalDAV connector (``sync_connection``, SQLite), with
``sync.calendar_write_concurrency`` writes in flight (the default 4, and 16). vdirsyncer:
``vdirsyncer sync`` of a filesystem storage holding the same number of .ics files to
the CalDAV collection (whole process). Then the no-op: ``sync_connection`` again against
``vdirsyncer sync`` again. ``--quick``: 100 items.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.bench_sync_caldav import (  # noqa: E402
    CountingTransport,
    _connect,
    _connector,
    _items,
    _settings,
)
from calsync.db.session import Database  # noqa: E402
from calsync.schedule.store import import_document  # noqa: E402
from calsync.sync.runner import sync_connection  # noqa: E402
from tests.caldav_servers import DavServer, start_server  # noqa: E402

UTC = dt.timezone.utc
BIN = Path(sys.executable).parent


class LatencyProxy:
    """TCP proxy on 127.0.0.1 that holds every chunk a client sends for ``delay`` seconds
    before passing it on (answers flow back at once)."""

    def __init__(self, upstream_port: int, delay: float) -> None:
        self.upstream_port, self.delay = upstream_port, delay
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       delay: float) -> None:
            try:
                while chunk := await reader.read(65536):
                    if delay:
                        await asyncio.sleep(delay)
                    writer.write(chunk)
                    await writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1",
                                                                 self.upstream_port)
            await asyncio.gather(pipe(reader, up_writer, self.delay),
                                 pipe(up_reader, writer, 0.0))

        async def main() -> None:
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            async with server:
                await server.serve_forever()

        self.loop.run_until_complete(main())


def _via(url: str, server: DavServer, port: int) -> str:
    upstream = server.base_url.rstrip("/").rsplit(":", 1)[1]
    return url.replace(f":{upstream}/", f":{port}/")


def _calsync_push(server: DavServer, base_url: str, n: int,
                  write_concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = _settings(tmp)
        settings = replace(settings, sync=replace(
            settings.sync, calendar_write_concurrency=write_concurrency))
        db = Database(settings.database.url)
        db.upgrade()
        now = dt.datetime.now(UTC).replace(microsecond=0)
        assert import_document(db, _items("u1", n, now), now=now).ok
        cal = server.make_calendar(f"calsync push {write_concurrency}")
        target = replace(server, base_url=base_url) if base_url != server.base_url else server
        cid = _connect(db, settings, target, "u1", cal.replace(server.base_url, base_url))
        counter = CountingTransport()
        conn = _connector(target, settings, counter)
        t0 = time.perf_counter()
        first = sync_connection(settings, db, cid, now, conn, sleep=lambda _s: None)
        push = time.perf_counter() - t0
        assert first.status == "ok", first.error
        t0 = time.perf_counter()
        noop = sync_connection(settings, db, cid, now + dt.timedelta(minutes=5), conn,
                               sleep=lambda _s: None)
        noop_s = time.perf_counter() - t0
        conn.close()
        db.dispose()
        return {"write_concurrency": write_concurrency, "seconds": round(push, 2),
                "created": first.totals().get("created", 0), "requests": counter.count,
                "noop_seconds": round(noop_s, 3), "noop_status": noop.status}


def _vdirsyncer_push(server: DavServer, base_url: str, n: int) -> dict[str, Any]:
    exe = shutil.which("vdirsyncer", path=str(BIN)) or shutil.which("vdirsyncer")
    if exe is None:
        return {"skipped": "vdirsyncer not installed (pip install '.[bench]')"}
    cal = server.make_calendar("vdirsyncer push")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        local = tmp / "local"
        local.mkdir()
        now = dt.datetime.now(UTC).replace(microsecond=0, second=0, minute=0)
        for i in range(n):
            start = now + dt.timedelta(days=1, hours=5 * i)
            stamp = now.strftime("%Y%m%dT%H%M%SZ")
            (local / f"j{i}.ics").write_text(
                "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//bench//EN\r\nBEGIN:VEVENT\r\n"
                f"UID:bench-j{i}@example.com\r\nDTSTAMP:{stamp}\r\n"
                f"DTSTART:{start.strftime('%Y%m%dT%H%M%SZ')}\r\n"
                f"DTEND:{(start + dt.timedelta(hours=2)).strftime('%Y%m%dT%H%M%SZ')}\r\n"
                f"SUMMARY:Install: Acme {i}\r\nLOCATION:{i} Main St\r\n"
                "DESCRIPTION:Gate 1234\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n")
        config = tmp / "config"
        config.write_text(f"""[general]
status_path = "{tmp}/status/"

[pair bench]
a = "bench_local"
b = "bench_remote"
collections = null
conflict_resolution = "a wins"

[storage bench_local]
type = "filesystem"
path = "{local}/"
fileext = ".ics"

[storage bench_remote]
type = "caldav"
url = "{_via(cal, server, int(base_url.rstrip('/').rsplit(':', 1)[1]))
         if base_url != server.base_url else cal}"
username = "{server.username}"
password = "secret"
""")
        env = {**os.environ, "VDIRSYNCER_CONFIG": str(config)}
        found = subprocess.run([exe, "discover", "bench"], env=env, capture_output=True,
                               text=True, timeout=300, input="y\n" * 4)  # not timed
        if found.returncode != 0:
            return {"failed": f"discover: {found.stderr[-1000:]}"}
        t0 = time.perf_counter()
        done = subprocess.run([exe, "sync"], env=env, capture_output=True, text=True,
                              timeout=1800)
        push = time.perf_counter() - t0
        if done.returncode != 0:
            return {"failed": done.stderr[-1000:]}
        t0 = time.perf_counter()
        again = subprocess.run([exe, "sync"], env=env, capture_output=True, text=True,
                               timeout=600)
        noop = time.perf_counter() - t0
        return {"seconds": round(push, 2), "noop_seconds": round(noop, 3),
                "noop_ok": again.returncode == 0}


def run(args: Any) -> dict[str, Any]:
    n = 100 if getattr(args, "quick", False) else 500
    server = start_server("radicale")
    out: dict[str, Any] = {"items": n}
    try:
        upstream = int(server.base_url.rstrip("/").rsplit(":", 1)[1])
        for label, delay in (("direct", 0.0), ("latency_50ms", 0.05)):
            base = server.base_url
            if delay:
                proxy = LatencyProxy(upstream, delay)
                base = server.base_url.replace(f":{upstream}/", f":{proxy.port}/")
            rows = {"vdirsyncer": _vdirsyncer_push(server, base, n)}
            for concurrency in (4, 16):
                rows[f"calsync_w{concurrency}"] = _calsync_push(server, base, n, concurrency)
            theirs = rows["vdirsyncer"].get("seconds")
            for key, row in rows.items():
                if key.startswith("calsync") and theirs:
                    row["speedup_over_vdirsyncer"] = round(theirs / row["seconds"], 2)
            out[label] = rows
            print(f"  {label}: {rows}", flush=True)
    finally:
        server.stop()
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    out["goal"] = "no slower than vdirsyncer direct; >= 3x faster with 50 ms latency"
    return out
