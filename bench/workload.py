"""Schedule data the benchmarks share: job records in the import format (DESIGN 4.3)."""

from __future__ import annotations

import datetime as dt
from typing import Any


def job_records(user: str, n: int, now: dt.datetime, prefix: str) -> list[dict[str, Any]]:
    """``n`` two-hour jobs for ``user``, five hours apart, starting tomorrow."""
    base = now.replace(minute=0, second=0) + dt.timedelta(days=1)
    return [{"id": f"{prefix}{i}", "title": f"Fiber install {i}", "job_type": "Install",
             "account": f"Acme {i}", "location": f"{i} Main St", "notes": "Gate 1234",
             "start": (base + dt.timedelta(hours=5 * i)).isoformat(),
             "end": (base + dt.timedelta(hours=5 * i + 2)).isoformat(),
             "assignees": [user], "status": "scheduled"} for i in range(n)]
