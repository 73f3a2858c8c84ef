"""Start-up of the command, whole process, against vdirsyncer's in the same run.

``calsync --help`` and ``vdirsyncer --help`` (vdirsyncer is a bench dependency), each run
as a fresh process, alternating, 21 times (``--quick``: 7); the median and the best of each.
Also ``python -c pass`` as the floor any Python command pays on this machine.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent


def _time(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def run(args: Any) -> dict[str, Any]:
    repeat = 7 if getattr(args, "quick", False) else 21
    commands: dict[str, list[str]] = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "calsync --help": [str(BIN / "calsync"), "--help"],
    }
    vdirsyncer = shutil.which("vdirsyncer", path=str(BIN)) or shutil.which("vdirsyncer")
    if vdirsyncer:
        commands["vdirsyncer --help"] = [vdirsyncer, "--help"]
    times: dict[str, list[float]] = {name: [] for name in commands}
    for name, argv in commands.items():  # warm the page cache first
        _time(argv)
    for _ in range(repeat):
        for name, argv in commands.items():
            times[name].append(_time(argv))
    out: dict[str, Any] = {name: {"median_s": round(statistics.median(t), 3),
                                  "best_s": round(min(t), 3)} for name, t in times.items()}
    if "vdirsyncer --help" in out:
        out["calsync_over_vdirsyncer_median"] = round(
            out["calsync --help"]["median_s"] / out["vdirsyncer --help"]["median_s"], 2)
    else:
        out["vdirsyncer"] = "not installed (pip install '.[bench]')"
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    out["goal"] = "calsync --help <= 0.25 s and no slower than vdirsyncer --help"
    return out
