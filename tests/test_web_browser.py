"""The pages in a real browser: Debian's Chromium driven by Playwright, a live calsync
server, a real Radicale account, elements found by role and accessible name (DESIGN 4.6).

A technician signs in by link, connects Radicale through the CalDAV form, picks a primary
and a conflict calendar, sees a personal event there become busy after a sync run,
regenerates the feed link (the old one 404s) and turns private mode off and on. A
dispatcher opens the board, sees that event only as "Busy", finds a free slot and books
it; a second dispatcher's booking of the same slot shows the conflict. Both pages are
checked with axe-core (no serious or critical violations) and photographed into
tests/artifacts/. On SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import replace
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy import select

from calsync.api.auth import create_api_token
from calsync.config import load_settings
from calsync.db.models import ScheduleItem, User, utcnow
from calsync.schedule.store import import_document
from calsync.sync.runner import run_due_syncs
from tests.browser.harness import (
    chromium,
    live_server,
    new_page,
    screenshot,
    serious_violations,
)
from tests.caldav_servers import radicale_server  # noqa: F401 - fixture
from tests.conftest import SECRET

CHICAGO = "America/Chicago"
HOURS = {d: [["08:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}


def _next_monday(today: dt.date) -> dt.date:
    return today + dt.timedelta(days=7 - today.weekday())


def _event(uid: str, start: dt.datetime, end: dt.datetime, summary: str) -> str:
    fmt = "%Y%m%dT%H%M%SZ"
    return ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\nBEGIN:VEVENT\r\n"
            f"UID:{uid}\r\nDTSTAMP:{utcnow().strftime(fmt)}\r\n"
            f"DTSTART:{start.astimezone(dt.timezone.utc).strftime(fmt)}\r\n"
            f"DTEND:{end.astimezone(dt.timezone.utc).strftime(fmt)}\r\n"
            f"SUMMARY:{summary}\r\nLOCATION:12 Elm Street\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n")


def _link(base: str, admin: str, body: dict[str, str]) -> str:
    r = httpx.post(f"{base}/api/login-links", json=body,
                   headers={"Authorization": f"Bearer {admin}"})
    assert r.status_code == 201, r.text
    return str(r.json()["url"])


def test_technician_and_dispatcher_in_chromium(db, radicale_server) -> None:
    # on both engines: the pages' reads and writes are the product's, not SQLite's
    tag = uuid.uuid4().hex[:6]
    jobs_cal, personal_cal = f"Work jobs {tag}", f"Personal {tag}"
    server = radicale_server
    server.make_calendar(jobs_cal)
    personal_url = server.make_calendar(personal_cal)
    monday = _next_monday(dt.datetime.now(dt.timezone.utc).date())
    tz = ZoneInfo(CHICAGO)
    ev_start = dt.datetime.combine(monday, dt.time(10), tz)
    secret_title = f"Dentist {tag}"
    assert import_document(db, {"users": [
        {"id": "tech1", "name": "Jane Doe", "timezone": CHICAGO, "working_hours": HOURS},
        {"id": "tech2", "name": "Sam Roe", "timezone": CHICAGO, "working_hours": HOURS}]}).ok
    with db.session() as s:
        admin = create_api_token(s, "platform", "admin", None)
    base_settings = load_settings(env={"CALSYNC_SECRET_KEY": SECRET})
    settings = replace(base_settings, database=replace(base_settings.database, url=db.url))

    with live_server(settings, db) as (base, live_settings, _app), chromium() as browser:
        # --- the technician -----------------------------------------------------------
        page = new_page(browser)
        page.goto(_link(base, admin, {"user_id": "tech1"}))
        assert page.url == f"{base}/app/settings"
        page.get_by_role("heading", name="Calendar settings").wait_for()
        connected = page.get_by_role("region", name="Connected calendars")
        # By keyboard: the iCloud form opens in place, focus on its first field.
        icloud = connected.get_by_role("button", name="Connect iCloud")
        assert icloud.get_attribute("aria-expanded") == "false"
        icloud.focus()
        page.keyboard.press("Enter")
        assert icloud.get_attribute("aria-expanded") == "true"
        assert page.evaluate("document.activeElement.id") == "icloud-apple-id"
        assert "App-Specific Passwords" in page.get_by_role("form", name="iCloud account") \
            .inner_text()
        connected.get_by_role("button", name="Connect CalDAV").click()
        caldav = page.get_by_role("form", name="CalDAV account")
        caldav.get_by_label("Server URL").fill(server.base_url)
        caldav.get_by_label("Username").fill(server.username)
        caldav.get_by_label("Password", exact=True).fill("secret")
        caldav.get_by_role("button", name="Connect", exact=True).click()
        page.get_by_role("status").filter(has_text="Calendar account connected").wait_for()
        assert connected.get_by_text(f"CalDAV: {server.username}").is_visible()
        assert page.get_by_label("Password", exact=True).input_value() == ""

        config = page.get_by_role("region", name="Calendar configuration")
        primary = config.get_by_role("combobox", name="Primary calendar")
        label = next(o for o in primary.locator("option").all_inner_texts()
                     if o.startswith(jobs_cal))
        primary.select_option(label=label)
        conflicts = config.get_by_role("group", name="Check for conflicts")
        conflicts.get_by_role("checkbox", name=personal_cal, exact=True).check()
        config.get_by_role("button", name="Save calendars").click()
        page.get_by_role("status").filter(has_text="Calendars saved").wait_for()
        assert page.get_by_role("checkbox", name=personal_cal, exact=True).is_checked()

        # A personal event on the conflict calendar becomes busy after a sync run.
        put = server.put(f"{personal_url}{tag}.ics",
                         _event(f"{tag}@test", ev_start, ev_start + dt.timedelta(hours=1),
                                secret_title))
        assert put.status_code in (200, 201, 204), put.text
        results = run_due_syncs(live_settings, db, utcnow())
        assert results and all(r.status == "ok" for r in results), results
        page.reload()
        busy = page.get_by_role("list", name="Busy from your calendars, next 14 days")
        assert secret_title in busy.inner_text()  # the owner sees their own details

        # The feed link: turn it on, regenerate (the old link 404s at once).
        feed = page.get_by_role("region", name="Calendar feed")
        feed.get_by_role("button", name="Turn on feed").click()
        first = page.get_by_role("textbox", name="Feed link").input_value()
        assert httpx.get(first).status_code == 200
        page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
        page.get_by_role("button", name="Copy link").click()
        feed.get_by_role("status").filter(has_text="Link copied.").wait_for()
        assert page.evaluate("navigator.clipboard.readText()") == first
        assert re.search(r"Last fetched", feed.inner_text())
        assert "Google Calendar refreshes every 4 to 24 hours" in feed.inner_text()
        page.get_by_role("button", name="Regenerate link").click()
        page.get_by_role("status").filter(has_text="New feed link made").wait_for()
        second = page.get_by_role("textbox", name="Feed link").input_value()
        assert second != first
        assert httpx.get(first).status_code == 404
        assert httpx.get(second).status_code == 200

        # Private mode off and on again, saved as soon as it changes.
        toggle = page.get_by_role("checkbox", name="Private mode for synced events")
        assert toggle.is_checked()
        toggle.uncheck()
        page.get_by_role("status").filter(has_text="Private mode is off").wait_for()
        with db.session() as s:
            assert s.get(User, "tech1").private_mode is False
        page.get_by_role("checkbox", name="Private mode for synced events").check()
        page.get_by_role("status").filter(has_text="Private mode is on").wait_for()
        with db.session() as s:
            assert s.get(User, "tech1").private_mode is True
        assert page.get_by_role("checkbox", name="Private mode for synced events").is_checked()
        page.get_by_role("region", name="Working hours").get_by_role(
            "button", name="Save working hours").wait_for()

        assert serious_violations(page) == []
        screenshot(page, "settings.png")

        # --- two dispatchers ----------------------------------------------------------
        board = new_page(browser)
        board.goto(_link(base, admin, {"role": "dispatcher", "name": "Dana Dispatch"}))
        assert board.url == f"{base}/app/dispatch"
        board.get_by_role("button", name="Next week").click()
        jane = board.get_by_role("row").filter(
            has=board.get_by_role("rowheader", name="Jane Doe"))
        cells = jane.get_by_role("cell")
        assert "Busy" in cells.nth(0).inner_text()
        assert "10:00–11:00" in cells.nth(0).inner_text()
        assert secret_title not in board.content() and "Elm Street" not in board.content()

        def search(p):  # type: ignore[no-untyped-def]
            form = p.get_by_role("form", name="Find a free slot")
            form.get_by_role("group", name="Technicians").get_by_role(
                "checkbox", name="Jane Doe").check()
            form.get_by_label("Duration (minutes)").fill("60")
            form.get_by_label("From").fill(f"{monday.isoformat()}T08:00")
            form.get_by_label("To", exact=True).fill(f"{monday.isoformat()}T12:00")
            form.get_by_label("Time zone").select_option(CHICAGO)
            form.get_by_label("Job title").fill("Router swap")
            form.get_by_role("button", name="Search").click()
            p.get_by_role("heading", name="Free slots").wait_for()

        search(board)
        slots = board.get_by_role("button", name="Book", exact=True)
        assert slots.count() == 3  # 08-09, 09-10, 11-12: the busy 10-11 is left out
        second_board = new_page(browser)
        second_board.goto(_link(base, admin, {"role": "dispatcher", "name": "Max"}))
        second_board.get_by_role("button", name="Next week").click()
        search(second_board)

        slots.first.click()
        board.get_by_role("status").filter(has_text="Booked “Router swap” for Jane Doe").wait_for()
        assert "Router swap" in board.get_by_role("row").filter(
            has=board.get_by_role("rowheader", name="Jane Doe")).inner_text()
        assert serious_violations(board) == []
        screenshot(board, "dispatch.png")

        # The second dispatcher books the same slot from the results they still see.
        second_board.get_by_role("button", name="Book", exact=True).first.click()
        alert = second_board.get_by_role("alert")
        alert.wait_for()
        assert "Not booked" in alert.inner_text() and "Router swap" in alert.inner_text()
        assert serious_violations(second_board) == []
        screenshot(second_board, "dispatch-refused.png")

    with db.session() as s:
        booked = list(s.scalars(select(ScheduleItem).where(ScheduleItem.kind == "job")))
    assert len(booked) == 1 and booked[0].title == "Router swap"
