"""Initial push of 500 items to a fresh Radicale calendar: calsync against vdirsyncer
(a bench dependency) on the same server, in the same run, direct and through a loopback
proxy that adds 50 ms before every chunk a client sends (a provider round trip).

calsync: the engine and the CalDAV connector (``sync_connection``, SQLite), with
``sync.calendar_write_concurrency`` writes in flight (1: one at a time, the default 4, and
16). vdirsyncer: ``vdirsyncer sync`` of a filesystem storage holding the same number of
.ics files to the CalDAV collection (whole process): small UTC events, and (row
``vdirsyncer_calsync_objects``) the very objects calsync writes, TZID and VTIMEZONE
included, which cost Radicale more to take. Then the no-op: ``sync_connection``
again in-process, and the whole process: the ``calsync sync`` CLI in a subprocess (same
database, one connection) against ``vdirsyncer sync`` again. Each row has wall-clock
seconds and the client's CPU seconds (``time.process_time`` in-process, the children's
rusage for a subprocess; the server's own CPU is not in it). ``--quick``: 100 items.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from calsync_caldav.render import render_event  # noqa: E402

from bench.bench_sync_caldav import (  # noqa: E402
    SECRET,
    CountingTransport,
    _connect,
    _connector,
    _items,
    _settings,
)
from calsync.db.session import Database  # noqa: E402
from calsync.schedule.store import import_document  # noqa: E402
from calsync.sync.connector import OutgoingEvent  # noqa: E402
from calsync.sync.runner import sync_connection  # noqa: E402
from tests.caldav_servers import DavServer, start_server  # noqa: E402

UTC = dt.timezone.utc
CHICAGO = ZoneInfo("America/Chicago")
BIN = Path(sys.executable).parent


class LatencyProxy:
    """TCP proxy on 127.0.0.1 that passes every chunk a client sends on ``delay`` seconds
    after it arrived (answers flow back at once). Chunks are delayed in a pipeline, as a
    network link delays packets: a request written as headers and then a body arrives one
    ``delay`` late, not two (an earlier version slept per chunk in turn, which charged
    clients that write a request in two parts twice)."""

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

        async def forward(queue: asyncio.Queue[tuple[float, bytes] | None],
                          writer: asyncio.StreamWriter, delay: float) -> None:
            loop = asyncio.get_running_loop()
            try:
                while (entry := await queue.get()) is not None:
                    arrived, chunk = entry
                    if (wait := arrived + delay - loop.time()) > 0:
                        await asyncio.sleep(wait)
                    writer.write(chunk)
                    await writer.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       delay: float) -> None:
            queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
            sender = asyncio.create_task(forward(queue, writer, delay))
            loop = asyncio.get_running_loop()
            try:
                while chunk := await reader.read(65536):
                    queue.put_nowait((loop.time(), chunk))
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                queue.put_nowait(None)
                await sender

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


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed_run(argv: list[str], **kwargs: Any) -> tuple[subprocess.CompletedProcess[str],
                                                        float, float]:
    """Run a whole process: its result, wall-clock seconds and CPU seconds."""
    c0, t0 = _children_cpu(), time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    return done, time.perf_counter() - t0, _children_cpu() - c0


def _process_env() -> dict[str, str]:
    """The environment of a whole-process run: byte code cached as an installed package
    has it (this machine sets PYTHONDONTWRITEBYTECODE, which would make every run compile
    the modules edited since the last install), no calsync settings of the caller."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("CALSYNC_") and k != "PYTHONDONTWRITEBYTECODE"}


def _calsync_cli_noop(settings: Any, tmp: str) -> dict[str, Any]:
    """``calsync sync --json`` in a subprocess (in ``tmp``: no ./calsync.toml): the
    whole-process no-op."""
    exe = shutil.which("calsync", path=str(BIN))
    if exe is None:
        return {"skipped": "calsync CLI not installed in this environment"}
    env = _process_env()
    env.update(CALSYNC_DATABASE_URL=settings.database.url, CALSYNC_SECRET_KEY=SECRET)
    done, wall, cpu = _timed_run([exe, "sync", "--json"], env=env, cwd=tmp, timeout=600)
    if done.returncode != 0:
        return {"failed": done.stderr[-1000:]}
    try:
        report = json.loads(done.stdout)
    except ValueError:
        report = None
    return {"seconds": round(wall, 3), "cpu_seconds": round(cpu, 3),
            "changed": _changed(report)}


def _changed(report: Any) -> int | None:
    """Items created/updated/deleted in a ``calsync sync --json`` report (None: unread)."""
    if report is None:
        return None
    total = 0
    stack = [report]
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            for key, value in obj.items():
                if key in ("created", "updated", "deleted") and isinstance(value, int):
                    total += value
                else:
                    stack.append(value)
        elif isinstance(obj, list):
            stack.extend(obj)
    return total


def _via(url: str, server: DavServer, port: int) -> str:
    upstream = server.base_url.rstrip("/").rsplit(":", 1)[1]
    return url.replace(f":{upstream}/", f":{port}/")


def _calsync_push(server: DavServer, base_url: str, n: int, write_concurrency: int,
                  keep: contextlib.ExitStack | None = None) -> dict[str, Any]:
    """The push and in-process no-op; with ``keep``, the database stays (until ``keep``
    closes) and ``row["noop"]`` runs the whole-process no-op on it."""
    with contextlib.ExitStack() as own:
        tmp = (keep or own).enter_context(tempfile.TemporaryDirectory())
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
        t0, c0 = time.perf_counter(), time.process_time()
        first = sync_connection(settings, db, cid, now, conn, sleep=lambda _s: None)
        push, push_cpu = time.perf_counter() - t0, time.process_time() - c0
        assert first.status == "ok", first.error
        requests = counter.count
        t0, c0 = time.perf_counter(), time.process_time()
        noop = sync_connection(settings, db, cid, now + dt.timedelta(minutes=5), conn,
                               sleep=lambda _s: None)
        noop_s, noop_cpu = time.perf_counter() - t0, time.process_time() - c0
        conn.close()
        db.dispose()
        row = {"write_concurrency": write_concurrency, "seconds": round(push, 2),
               "cpu_seconds": round(push_cpu, 2),
               "created": first.totals().get("created", 0), "requests": requests,
               "noop_seconds": round(noop_s, 3), "noop_cpu_seconds": round(noop_cpu, 3),
               "noop_status": noop.status}
        if keep is not None:
            row["noop"] = functools.partial(_calsync_cli_noop, settings, tmp)
        return row


def _simple_object(i: int, now: dt.datetime) -> str:
    """A small UTC event (no VTIMEZONE)."""
    start = now + dt.timedelta(days=1, hours=5 * i)
    return ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//bench//EN\r\nBEGIN:VEVENT\r\n"
            f"UID:bench-j{i}@example.com\r\nDTSTAMP:{now.strftime('%Y%m%dT%H%M%SZ')}\r\n"
            f"DTSTART:{start.strftime('%Y%m%dT%H%M%SZ')}\r\n"
            f"DTEND:{(start + dt.timedelta(hours=2)).strftime('%Y%m%dT%H%M%SZ')}\r\n"
            f"SUMMARY:Install: Acme {i}\r\nLOCATION:{i} Main St\r\n"
            "DESCRIPTION:Gate 1234\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n")


def _calsync_object(i: int, now: dt.datetime) -> str:
    """The object calsync PUTs for such an item (TZID America/Chicago and its VTIMEZONE,
    calsync's properties): what the server has to parse is the same on both sides."""
    start = (now + dt.timedelta(days=1, hours=5 * i)).astimezone(CHICAGO)
    return render_event(OutgoingEvent(
        key=f"job-j{i}", uid=f"calsync-job-j{i}@example.com", summary=f"Install: Acme {i}",
        start=start, end=start + dt.timedelta(hours=2), all_day=False,
        tzid="America/Chicago", description="Gate 1234", location=f"{i} Main St",
        categories=("job", "Install")), now)


def _vdirsyncer_push(server: DavServer, base_url: str, n: int,
                     keep: contextlib.ExitStack | None = None,
                     objects: str = "simple") -> dict[str, Any]:
    """The push and the no-op right after it; with ``keep``, its folder stays and
    ``row["noop"]`` runs the no-op again. ``objects``: "simple" (small UTC events) or
    "calsync" (the objects calsync writes)."""
    exe = shutil.which("vdirsyncer", path=str(BIN)) or shutil.which("vdirsyncer")
    if exe is None:
        return {"skipped": "vdirsyncer not installed (pip install '.[bench]')"}
    cal = server.make_calendar("vdirsyncer push")
    with contextlib.ExitStack() as own:
        tmp = Path((keep or own).enter_context(tempfile.TemporaryDirectory()))
        local = tmp / "local"
        local.mkdir()
        now = dt.datetime.now(UTC).replace(microsecond=0, second=0, minute=0)
        make = _calsync_object if objects == "calsync" else _simple_object
        for i in range(n):
            (local / f"j{i}.ics").write_bytes(make(i, now).encode("utf-8"))
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
        env = {**_process_env(), "VDIRSYNCER_CONFIG": str(config)}
        found = subprocess.run([exe, "discover", "bench"], env=env, capture_output=True,
                               text=True, timeout=300, input="y\n" * 4)  # not timed
        if found.returncode != 0:
            return {"failed": f"discover: {found.stderr[-1000:]}"}
        done, push, push_cpu = _timed_run([exe, "sync"], env=env, timeout=1800)
        if done.returncode != 0:
            return {"failed": done.stderr[-1000:]}
        again, noop, noop_cpu = _timed_run([exe, "sync"], env=env, timeout=600)
        row: dict[str, Any] = {"seconds": round(push, 2), "cpu_seconds": round(push_cpu, 2),
                               "noop_seconds": round(noop, 3),
                               "noop_cpu_seconds": round(noop_cpu, 3),
                               "noop_ok": again.returncode == 0}
        if keep is not None:
            row["noop"] = functools.partial(_vdirsyncer_noop, exe, env)
        return row


def _vdirsyncer_noop(exe: str, env: dict[str, str]) -> dict[str, Any]:
    done, wall, cpu = _timed_run([exe, "sync"], env=env, timeout=600)
    return {"seconds": round(wall, 3), "cpu_seconds": round(cpu, 3),
            "ok": done.returncode == 0}


def _whole_process_noops(calsync: Any, vdirsyncer: Any, rounds: int) -> dict[str, Any]:
    """Both whole-process no-ops, alternating (an untimed first calsync run writes its
    byte code); each side's runs and medians."""
    if not callable(calsync) or not callable(vdirsyncer):
        return {"skipped": "a side did not run"}
    calsync()
    runs: dict[str, list[dict[str, Any]]] = {"calsync_sync_cli": [], "vdirsyncer_sync": []}
    for _ in range(rounds):
        runs["calsync_sync_cli"].append(calsync())
        runs["vdirsyncer_sync"].append(vdirsyncer())
    out: dict[str, Any] = {}
    for name, rows in runs.items():
        ok = [r for r in rows if "seconds" in r]
        out[name] = {"runs": rows,
                     "median_seconds": statistics.median(r["seconds"] for r in ok)
                     if ok else None,
                     "median_cpu_seconds": statistics.median(r["cpu_seconds"] for r in ok)
                     if ok else None}
    return out


def run(args: Any) -> dict[str, Any]:
    n = 100 if getattr(args, "quick", False) else 500
    server = start_server("radicale")
    out: dict[str, Any] = {"items": n, "load_average_start": [round(x, 2) for x in os.getloadavg()]}
    try:
        upstream = int(server.base_url.rstrip("/").rsplit(":", 1)[1])
        for label, delay in (("direct", 0.0), ("latency_50ms", 0.05)):
            base = server.base_url
            if delay:
                proxy = LatencyProxy(upstream, delay)
                base = server.base_url.replace(f":{upstream}/", f":{proxy.port}/")
            rows: dict[str, dict[str, Any]] = {}
            with contextlib.ExitStack() as keep:
                # alternating: calsync one at a time, vdirsyncer, calsync 4 and 16 in flight
                rows["calsync_w1"] = _calsync_push(server, base, n, 1)
                rows["vdirsyncer"] = _vdirsyncer_push(server, base, n, keep)
                rows["vdirsyncer_calsync_objects"] = _vdirsyncer_push(server, base, n,
                                                                      objects="calsync")
                for concurrency in (4, 16):
                    rows[f"calsync_w{concurrency}"] = _calsync_push(
                        server, base, n, concurrency, keep if concurrency == 4 else None)
                noops = _whole_process_noops(rows["calsync_w4"].pop("noop", None),
                                             rows["vdirsyncer"].pop("noop", None), rounds=3)
            theirs = rows["vdirsyncer"].get("seconds")
            same = rows["vdirsyncer_calsync_objects"].get("seconds")
            for key, row in rows.items():
                if key.startswith("calsync") and theirs:
                    row["speedup_over_vdirsyncer"] = round(theirs / row["seconds"], 2)
                if key.startswith("calsync") and same:
                    row["speedup_over_vdirsyncer_same_objects"] = round(same / row["seconds"],
                                                                        2)
            out[label] = rows
            out[f"{label}_noop_whole_process"] = noops
            print(f"  {label}: {rows}", flush=True)
    finally:
        server.stop()
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    out["goal"] = ("initial push no slower than vdirsyncer direct, >= 3x faster with 50 ms "
                   "latency; whole-process no-op calsync sync <= vdirsyncer's")
    return out
