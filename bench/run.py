"""Run every benchmark module (``bench/bench_*.py``) and write JSON under bench/results/.

Each module has ``run(args) -> dict``; the dict is written to ``bench/results/<name>.json``
together with the machine it ran on. ``python -m bench.run feeds`` runs one module.
Benchmarks need PostgreSQL on 127.0.0.1:5432 (or $CALSYNC_BENCH_DATABASE_URL) for the
PostgreSQL figures; without it those figures are recorded as skipped with the reason.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def machine() -> dict[str, object]:
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = line.split(":", 1)[1].strip()
    except OSError:
        pass
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "cpu": cpu, "cores": os.cpu_count(), "memory": mem}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmark modules to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args(argv)
    names = args.names or sorted(p.stem[len("bench_"):] for p in HERE.glob("bench_*.py"))
    RESULTS.mkdir(exist_ok=True)
    failed = 0
    for name in names:
        module = importlib.import_module(f"bench.bench_{name}")
        print(f"== {name}", flush=True)
        started = dt.datetime.now(dt.timezone.utc)
        try:
            figures = module.run(args)
        except Exception:  # noqa: BLE001 - report and go on with the next benchmark
            traceback.print_exc()
            failed += 1
            continue
        doc = {"benchmark": name, "started_at": started.isoformat(), "quick": args.quick,
               "machine": machine(), "results": figures}
        out = RESULTS / f"{name}.json"
        out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(json.dumps(figures, indent=2, default=str))
        print(f"-> {out.relative_to(HERE.parent)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
