"""The demo data set: technicians in four timezones, a week of jobs from "now", time off,
blocked time, an overnight on-call block across the next DST change, and awkward text
(commas, semicolons, accents, CJK, emoji). ``load_demo`` upserts it (idempotent by id),
issues the demo users' feed links and returns the lines ``calsync demo`` prints.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select

from calsync.config import Settings
from calsync.db.models import User
from calsync.db.session import Database
from calsync.feeds.links import feed_url, issue_feed
from calsync.feeds.service import render_users
from calsync.schedule.store import import_document
from calsync.timezones import UTC, zone

WEEKDAY_HOURS = [["08:00", "12:00"], ["13:00", "17:00"]]
TECHNICIANS = [
    ("demo-maria", "Maria López", "maria@example.com", "America/Chicago"),
    ("demo-dev", "Dev Patel", "dev@example.com", "America/New_York"),
    ("demo-jonas", "Jonas Weber", "jonas@example.com", "Europe/Berlin"),
    ("demo-aiko", "Aiko Tanaka", "aiko@example.com", "Australia/Sydney"),
]
DEMO_IDS = [t[0] for t in TECHNICIANS]
JOB_KINDS = [
    ("Install", "Acme Corp", "1 Main St, Springfield, IL",
     "Gate code 1234; call ahead, ring twice. Bring ONT + 50 m drop cable."),
    ("Repair", "Müller & Söhne GmbH", "Hauptstraße 5, 10115 Berlin",
     "Customer reports packet loss after 18:00 — check splitter, re-terminate if needed."),
    ("Site survey", "北京 Trading Ltd.", "88 Harbour Rd, Suite 12\nLevel 3",
     "Survey rooftop for PtP link; access via loading dock 🚚. 联系人: 王先生"),
    ("Maintenance", "Prairie Fiber Co-op", "County Rd 9 & Hwy 14",
     "Quarterly cabinet check\\battery swap; see checklist, items 1-7."),
]


def _iso(local: dt.datetime) -> str:
    return local.isoformat()


def _at(day: dt.date, hhmm: str, tzid: str) -> dt.datetime:
    h, m = (int(x) for x in hhmm.split(":"))
    return dt.datetime.combine(day, dt.time(h, m), zone(tzid))


def _next_weekday(day: dt.date) -> dt.date:
    while day.weekday() >= 5:
        day += dt.timedelta(days=1)
    return day


def next_dst_change(tzid: str, now: dt.datetime, days: int = 366) -> dt.datetime | None:
    """The first instant after ``now`` at which ``tzid``'s UTC offset changes (to the hour)."""
    tz = zone(tzid)
    t = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    offset = t.astimezone(tz).utcoffset()
    for _ in range(days * 24):
        t += dt.timedelta(hours=1)
        current = t.astimezone(tz).utcoffset()
        if current != offset:
            return t
    return None


def demo_document(now: dt.datetime) -> dict[str, Any]:
    """The demo data relative to ``now`` (import format, DESIGN 4.3)."""
    users = [{"id": uid, "name": name, "email": email, "timezone": tzid, "private_mode": True,
              "working_hours": {d: WEEKDAY_HOURS for d in ("mon", "tue", "wed", "thu", "fri")}}
             for uid, name, email, tzid in TECHNICIANS]
    jobs: list[dict[str, Any]] = []
    time_off: list[dict[str, Any]] = []
    blocks: list[dict[str, Any]] = []

    # A crew job with three assignees in three zones, at the one time all of them work:
    # 08:00-10:00 in Chicago is 09:00-11:00 in New York and 15:00-17:00 in Berlin (14:00-
    # 16:00 in the weeks when only one side has changed its clocks). Their own jobs that
    # day leave that time free, so the demo of a no-double-booking product books nobody
    # twice.
    chicago = "America/Chicago"
    crew_day = _next_weekday(now.astimezone(zone(chicago)).date() + dt.timedelta(days=3))
    crew_start, crew_end = _at(crew_day, "08:00", chicago), _at(crew_day, "10:00", chicago)
    crew = ["demo-maria", "demo-dev", "demo-jonas"]
    jobs.append({"id": "demo-crew-splice", "title": "Fiber splice",
                 "job_type": "Fiber splice", "account": "City of Springfield",
                 "location": "Splice case SC-17, Elm St & 3rd Ave",
                 "notes": "Three-person crew, bucket truck; traffic control booked 07:30.",
                 "start": _iso(crew_start), "end": _iso(crew_end), "timezone": chicago,
                 "assignees": crew, "status": "scheduled"})
    for n, (uid, _name, _email, tzid) in enumerate(TECHNICIANS):
        today = now.astimezone(zone(tzid)).date()
        for d in range(7):
            day = today + dt.timedelta(days=d)
            if day.weekday() >= 5:
                continue
            for slot, (start, end) in enumerate((("09:00", "11:00"), ("13:30", "15:30"))):
                job_start, job_end = _at(day, start, tzid), _at(day, end, tzid)
                if uid in crew and job_start < crew_end and crew_start < job_end:
                    continue  # that technician is on the crew job then
                job_type, account, location, notes = JOB_KINDS[(n + d + slot) % len(JOB_KINDS)]
                jobs.append({"id": f"{uid}-{day.isoformat()}-{slot}", "title": f"{job_type} visit",
                             "job_type": job_type, "account": account, "location": location,
                             "notes": notes, "start": _iso(job_start),
                             "end": _iso(job_end), "assignees": [uid],
                             "timezone": tzid, "status": "scheduled"})
        # A training block on the third day, time off two weeks out.
        day = today + dt.timedelta(days=2)
        blocks.append({"id": f"{uid}-training", "user": uid, "title": "Safety training (online)",
                       "start": _iso(_at(day, "16:00", tzid)), "end": _iso(_at(day, "17:00", tzid)),
                       "timezone": tzid})
        off = today + dt.timedelta(days=14 + n)
        time_off.append({"id": f"{uid}-vacation", "user": uid, "start": off.isoformat(),
                         "end": (off + dt.timedelta(days=3)).isoformat(), "all_day": True,
                         "reason": "Vacation"})

    # A cancelled job (it drops out of feeds and blocks nobody).
    jobs.append({"id": "demo-cancelled", "title": "Repair", "job_type": "Repair",
                 "account": "Acme Corp", "start": _iso(_at(crew_day, "16:00", chicago)),
                 "end": _iso(_at(crew_day, "17:00", chicago)), "timezone": chicago,
                 "assignees": ["demo-maria"], "status": "cancelled"})
    dev_day = now.astimezone(zone("America/New_York")).date() + dt.timedelta(days=4)
    time_off.append({"id": "demo-dev-dentist", "user": "demo-dev", "all_day": False,
                     "start": _iso(_at(dev_day, "07:30", "America/New_York")),
                     "end": _iso(_at(dev_day, "08:45", "America/New_York")),
                     "timezone": "America/New_York", "reason": "Dentist"})

    # An overnight on-call block across the next DST change of any demo timezone.
    changes = [(t, uid, tzid) for uid, _n, _e, tzid in TECHNICIANS
               if (t := next_dst_change(tzid, now)) is not None]
    if changes:
        change, uid, tzid = min(changes)
        on_call_start = (change - dt.timedelta(hours=5)).astimezone(zone(tzid))
        on_call_end = (change + dt.timedelta(hours=7)).astimezone(zone(tzid))
        blocks.append({"id": f"{uid}-oncall-dst", "user": uid,
                       "title": "On-call overnight (DST change)", "start": _iso(on_call_start),
                       "end": _iso(on_call_end), "timezone": tzid})
    return {"users": users, "jobs": jobs, "time_off": time_off, "blocks": blocks}


def _links(settings: Settings, db: Database) -> list[str]:
    lines = []
    with db.session() as s:
        users = {u.id: u for u in s.scalars(select(User).where(User.id.in_(DEMO_IDS),
                                                                User.deleted_at.is_(None)))}
        for uid in DEMO_IDS:
            user = users.get(uid)
            if user is None:
                continue
            if not user.feed_enabled:
                issue_feed(user)
            lines.append(f"  {user.name} ({user.timezone}): {feed_url(settings, user)}")
    return lines


def load_demo(settings: Settings, db: Database, if_empty: bool = False,
              now: dt.datetime | None = None) -> list[str]:
    """Load the demo data (unless ``if_empty`` and there are users already), issue the
    demo users' feed links, render their feeds, and return the lines to print."""
    now = now or dt.datetime.now(UTC)
    with db.session() as s:
        has_users = s.scalar(select(User.id).limit(1)) is not None
    if if_empty and has_users:
        links = _links(settings, db)
        head = ["calsync demo: the database already has users; demo data not loaded."]
        return head + (["Demo feed links:", *links] if links else [])
    doc = demo_document(now)
    report = import_document(db, doc, actor="demo", now=now)
    if not report.ok:  # the demo data is ours: a rejection is a bug, say so loudly
        raise RuntimeError(f"demo data rejected: {report.errors}")
    links = _links(settings, db)
    render_users(settings, db, DEMO_IDS, now)
    counts = {k: sum(v.values()) for k, v in report.counts.items()}
    return [f"calsync demo: loaded {counts.get('users', 0)} users, {counts.get('jobs', 0)} jobs, "
            f"{counts.get('time_off', 0)} time off, {counts.get('blocks', 0)} blocks.",
            "Demo feed links (subscribe in any calendar app):", *links]
