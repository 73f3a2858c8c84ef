"""``calsync demo`` and ``calsync feed url|regenerate|revoke`` through the real CLI."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from urllib.parse import urlsplit

import icalendar
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from calsync.cli import cli
from calsync.db.models import ScheduleItem
from calsync.demo import DEMO_IDS, demo_document, next_dst_change
from calsync.errors import NotFound
from tests.conftest import SECRET

UTC = dt.timezone.utc


@pytest.fixture
def run(db, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)  # no stray ./calsync.toml
    env = {"CALSYNC_DATABASE_URL": db.url, "CALSYNC_SECRET_KEY": SECRET}
    runner = CliRunner()

    def _run(*args: str):  # type: ignore[no-untyped-def]
        return runner.invoke(cli, list(args), env=env, catch_exceptions=True)

    return _run


def _links(output: str) -> dict[str, str]:
    out = {}
    for line in output.splitlines():
        if "/feeds/" in line:
            url = line.split(": ", 1)[1].strip()
            out[urlsplit(url).path.split("/")[2]] = urlsplit(url).path
    return out


def _count(db) -> int:  # type: ignore[no-untyped-def]
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(ScheduleItem)) or 0)


def test_demo_loads_and_prints_working_links(run, app_client, db) -> None:
    r = run("demo", "--if-empty")
    assert r.exit_code == 0, r.output
    assert "loaded 4 users" in r.output
    links = _links(r.output)
    assert sorted(links) == sorted(DEMO_IDS)
    items = _count(db)
    uids: dict[str, set[str]] = {}
    crossing = []
    for user_id, path in links.items():
        resp = app_client.get(path)
        assert resp.status_code == 200, user_id
        cal = icalendar.Calendar.from_ical(resp.content)
        events = list(cal.walk("VEVENT"))
        assert len(events) >= 10
        uids[user_id] = {str(e["UID"]) for e in events}
        for e in events:
            start, end = e.decoded("DTSTART"), e.decoded("DTEND")
            if isinstance(start, dt.datetime) and start.utcoffset() != end.utcoffset():
                crossing.append(str(e["SUMMARY"]))
        tzids = {str(tz["TZID"]) for tz in cal.walk("VTIMEZONE")}
        assert tzids, user_id
    assert crossing == ["On-call overnight (DST change)"]
    # the same instants through vobject (validating) and ical.js
    import vobject

    from tests.test_feed_parsers import _ical_js, _js_when

    for user_id, path in links.items():
        body = app_client.get(path).content
        cal = icalendar.Calendar.from_ical(body)
        want = {str(e["UID"]): (e.decoded("DTSTART"), e.decoded("DTEND"))
                for e in cal.walk("VEVENT")}
        vcal = vobject.readOne(body.decode(), validate=True)
        assert {e.uid.value: (e.dtstart.value, e.dtend.value) for e in vcal.vevent_list} == want
        js = {e["uid"]: (_js_when(e["start"], e["allDay"]), _js_when(e["end"], e["allDay"]))
              for e in _ical_js(body)["events"]}
        assert js == want, user_id
    crew = "job-demo-crew-splice@calsync"
    assert [u for u in sorted(uids) if crew in uids[u]] == ["demo-dev", "demo-jonas",
                                                           "demo-maria"]
    assert all("job-demo-cancelled@calsync" not in v for v in uids.values())

    again = run("demo", "--if-empty")
    assert again.exit_code == 0 and "not loaded" in again.output
    assert _links(again.output) == links  # same links, nothing re-issued
    assert _count(db) == items
    reload = run("demo")  # upserts by id: loading twice adds nothing
    assert reload.exit_code == 0 and _count(db) == items


def test_demo_data_covers_zones_time_off_blocks_and_a_dst_change() -> None:
    now = dt.datetime(2026, 11, 23, 19, 0, tzinfo=UTC)
    doc = demo_document(now)
    assert {u["timezone"] for u in doc["users"]} >= {"America/Chicago", "America/New_York",
                                                     "Europe/Berlin"}
    assert any(t["all_day"] for t in doc["time_off"])
    assert any(not t["all_day"] for t in doc["time_off"])
    starts = [dt.datetime.fromisoformat(j["start"]) for j in doc["jobs"]]
    assert min(starts).date() >= (now - dt.timedelta(days=1)).date()
    assert max(starts) < now + dt.timedelta(days=8)
    dst = next(b for b in doc["blocks"] if b["id"].endswith("oncall-dst"))
    start, end = dt.datetime.fromisoformat(dst["start"]), dt.datetime.fromisoformat(dst["end"])
    assert start.utcoffset() != end.utcoffset()
    change = next_dst_change("America/New_York", now)
    assert change == dt.datetime(2027, 3, 14, 7, 0, tzinfo=UTC)
    assert start < change < end
    # In June the next change is the southern hemisphere's or the northern autumn one.
    june = demo_document(dt.datetime(2027, 6, 1, tzinfo=UTC))
    assert any(b["id"].endswith("oncall-dst") for b in june["blocks"])


def test_feed_url_regenerate_revoke(run, app_client) -> None:
    assert run("demo").exit_code == 0
    r = run("feed", "url", "demo-maria")
    assert r.exit_code == 0
    url = r.output.strip()
    assert run("feed", "url", "demo-maria").output.strip() == url  # stable
    path = urlsplit(url).path
    assert app_client.get(path).status_code == 200
    r = run("feed", "regenerate", "demo-maria")
    new = urlsplit(r.output.strip()).path
    assert r.exit_code == 0 and new != path
    assert app_client.get(path).status_code == 404
    assert app_client.get(new).status_code == 200
    r = run("feed", "url", "demo-maria", "--json")
    assert r.exit_code == 0 and json.loads(r.output) == {"user_id": "demo-maria",
                                                         "url": "http://127.0.0.1:8080" + new}
    r = run("feed", "revoke", "demo-maria")
    assert r.exit_code == 0 and "revoked" in r.output
    assert app_client.get(new).status_code == 404
    r = run("feed", "url", "nobody")
    assert isinstance(r.exception, NotFound)


def test_feed_command_user_error_is_one_line_and_nonzero(db, tmp_path) -> None:
    env = {**os.environ, "CALSYNC_DATABASE_URL": db.url, "CALSYNC_SECRET_KEY": SECRET}
    proc = subprocess.run([sys.executable, "-m", "calsync.cli", "feed", "url", "nobody"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "calsync: user 'nobody' not found"
    assert "Traceback" not in proc.stderr


# Starts of the demo on awkward days: the field test's Monday (the crew job fell on Dec 4),
# every other weekday, weekends, and the weeks of the US, EU and Australian DST changes.
DEMO_STARTS = [dt.datetime(2026, 11, 23, 19, 0, tzinfo=UTC)] + [
    dt.datetime(2026, 11, 24, 12, 0, tzinfo=UTC) + dt.timedelta(days=n) for n in range(6)] + [
    dt.datetime(2027, 3, 10, 15, 0, tzinfo=UTC), dt.datetime(2027, 3, 25, 6, 0, tzinfo=UTC),
    dt.datetime(2027, 4, 1, 23, 0, tzinfo=UTC), dt.datetime(2027, 10, 1, 3, 0, tzinfo=UTC),
    dt.datetime(2027, 10, 28, 14, 0, tzinfo=UTC), dt.datetime(2027, 7, 1, 0, 0, tzinfo=UTC)]


@pytest.mark.parametrize("now", DEMO_STARTS, ids=lambda n: n.strftime("%Y-%m-%dT%H"))
def test_demo_never_double_books_its_technicians(sqlite_db, now: dt.datetime) -> None:
    """Every demo job, checked with the availability code against the rest of the demo
    data, has no conflict for any assignee and lies inside their working hours."""
    from calsync.availability.busy import UserBusyInput, busy_blocks
    from calsync.availability.store import load_busy_inputs
    from calsync.schedule.store import import_document

    doc = demo_document(now)
    report = import_document(sqlite_db, doc, actor="demo", now=now)
    assert report.ok, report.errors
    crew = [j for j in doc["jobs"] if len(j["assignees"]) > 1]
    assert crew and all(j["status"] == "scheduled" for j in crew)  # the crew job is kept
    problems = []
    with sqlite_db.read_session() as s:
        for job in doc["jobs"]:
            start = dt.datetime.fromisoformat(job["start"])
            end = dt.datetime.fromisoformat(job["end"])
            inputs = load_busy_inputs(s, job["assignees"], start, end)
            for uid, data in inputs.items():
                others = UserBusyInput(data.profile,
                                       [i for i in data.items if i.id != job["id"]],
                                       data.externals, data.calendars)
                for block in busy_blocks(others, start, end):
                    what = block.schedule.id if block.schedule else block.kind
                    problems.append(f"{job['id']} ({job['start']}): {uid} busy with {what} "
                                    f"{block.start:%a %H:%M}-{block.end:%H:%M} UTC")
    assert problems == []
