"""One broken conflict calendar no longer stops the whole connection (field test: after a
conflict calendar was deleted on the server, every run failed and new jobs never reached
the primary calendar). Over every contract backend: the calendar is deleted as its owner
would, the next runs mark it ``gone`` with what to do, availability for the user is stale,
and the primary calendar keeps receiving the schedule."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
from click.testing import CliRunner

from calsync.availability.check import check_availability
from calsync.db.models import Calendar
from calsync.privacy import Operator
from tests.conftest import SECRET
from tests.contract.backend import ContractBackend, ExternalSpec
from tests.contract.conftest import (  # noqa: F401 - fixtures used by name
    SyncHarness,
    backend,
    contract_settings,
    harness,
)


def delete_calendar(service: ContractBackend, calendar_id: str) -> None:
    """Delete a whole calendar on the service, as its owner would in their app."""
    from tests.contract.backend_caldav import CaldavServerBackend
    from tests.contract.backend_google import GoogleBackend
    from tests.contract.backend_graph import ACCOUNT, GraphBackend
    from tests.contract.backend_memory import MemoryBackend

    if isinstance(service, MemoryBackend):
        service.server.remove_calendar(calendar_id)
    elif isinstance(service, CaldavServerBackend):
        creds = service.context().credentials
        r = httpx.request("DELETE", calendar_id, timeout=30,
                          auth=(creds["username"], creds["password"]))
        assert r.status_code in (200, 204), r.status_code
    elif isinstance(service, GraphBackend):  # delegated and tenant-wide alike
        service.emulator.remove_calendar(ACCOUNT, calendar_id)
    elif isinstance(service, GoogleBackend):
        service.emulator.remove_calendar(calendar_id)
    else:
        raise AssertionError(f"no way to delete a calendar on {type(service).__name__}")


def job(n: int, start: dt.datetime) -> dict[str, Any]:
    return {"id": f"j{n}", "title": f"Job {n}", "job_type": "Install", "account": "Acme",
            "start": start.isoformat(), "end": (start + dt.timedelta(hours=1)).isoformat(),
            "assignees": ["u1"]}


def test_a_deleted_conflict_calendar_stops_only_itself(harness: SyncHarness) -> None:  # noqa: F811
    h = harness
    primary = h.backend.make_calendar("Work")
    conflict = h.backend.make_calendar("Family")
    h.connect(primary, (conflict,))
    soon = (h.now + dt.timedelta(days=2)).replace(hour=15, minute=0, second=0)
    h.backend.put_external(conflict, ExternalSpec("School run", soon,
                                                  soon + dt.timedelta(hours=1)))
    h.items({"jobs": [job(1, soon + dt.timedelta(days=1))]})
    assert h.sync().status == "ok"
    assert set(h.copies(primary)) == {"job-j1"}

    delete_calendar(h.backend, conflict)
    h.items({"jobs": [job(2, soon + dt.timedelta(days=2))]})
    for minutes in (10, 20):  # every later run, not just the first
        result = h.sync(now=h.now + dt.timedelta(minutes=minutes))
        assert result.status == "error"
        statuses = {c.calendar_id: c.status for c in result.calendars}
        assert statuses[h.calendars[conflict]] == "gone"
        assert statuses[h.calendars[primary]] == "ok"
    assert set(h.copies(primary)) == {"job-j1", "job-j2"}  # the new job arrived
    cal = h.calendar(conflict)
    assert cal.status == "gone"
    assert "no longer exists" in (cal.last_error or "")
    assert f"calsync calendars set {h.user}" in (cal.last_error or "")

    # availability of the user fails closed, naming the calendar
    with h.db.session() as s:
        [res] = check_availability(s, [h.user], soon + dt.timedelta(days=3),
                                   soon + dt.timedelta(days=3, hours=1), Operator(),
                                   h.now + dt.timedelta(minutes=20),
                                   dt.timedelta(seconds=h.settings.sync.stale_after_seconds))
    assert res["stale"] is True

    # the operator sees it, with what to do
    env = {"CALSYNC_DATABASE_URL": h.db.url, "CALSYNC_SECRET_KEY": SECRET}
    from calsync.cli import cli

    out = CliRunner().invoke(cli, ["connections", "list"], env=env)
    assert out.exit_code == 0, out.output
    assert "gone" in out.output and "no longer exists" in out.output
    with h.db.session() as s:
        public = s.get(Calendar, h.calendars[conflict])
        assert public is not None and public.public_id in out.output
