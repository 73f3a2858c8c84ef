"""The Google Calendar emulator as a contract backend (connector: calsync_google)."""

from __future__ import annotations

import datetime as dt
import itertools
import re
from pathlib import Path
from typing import Any

from calsync.sync.connector import ConnectContext
from tests.contract.backend import DateOrTime, ExternalSpec
from tests.emulators.google import GoogleEmulator, signed_in_context

ACCOUNT = "contract@example.com"
_counter = itertools.count(1)


def _when(value: DateOrTime) -> dict[str, str]:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} in a contract spec")
        out = {"dateTime": value.isoformat()}
        key = getattr(value.tzinfo, "key", None) or getattr(value.tzinfo, "zone", None)
        if key:
            out["timeZone"] = str(key)
        return out
    return {"date": value.isoformat()}


def _original(value: DateOrTime) -> str:
    return value.isoformat() if isinstance(value, dt.datetime) else value.isoformat()


class GoogleBackend:
    provider = "google"
    counts_requests = True
    supports_read_only = True

    def __init__(self, tmp_path: Path, request: Any = None) -> None:
        self.emulator = GoogleEmulator().start()
        if request is not None:
            request.addfinalizer(self.emulator.stop)
        self.emulator.add_account(ACCOUNT, timezone="UTC")
        self._ctx = signed_in_context(self.emulator, ACCOUNT, sleep=lambda _s: None)

    def context(self) -> ConnectContext:
        return self._ctx

    def _new_calendar(self, name: str, role: str) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "cal"
        cid = f"{slug}-{next(_counter)}@group.calendar.google.com"
        return self.emulator.add_calendar(ACCOUNT, cid, name, role=role, timezone="UTC")

    def make_calendar(self, name: str) -> str:
        return self._new_calendar(name, "owner")

    def make_read_only_calendar(self, name: str) -> str:
        return self._new_calendar(name, "reader")

    def put_external(self, calendar_id: str, spec: ExternalSpec) -> str:
        resource: dict[str, Any] = {"summary": spec.summary, "start": _when(spec.start),
                                    "end": _when(spec.end)}
        if spec.rrule:
            resource["recurrence"] = [f"RRULE:{spec.rrule}"]
        if spec.transparent:
            resource["transparency"] = "transparent"
        if spec.private:
            resource["visibility"] = "private"
        if spec.description is not None:
            resource["description"] = spec.description
        if spec.location is not None:
            resource["location"] = spec.location
        event_id = str(self.emulator.put_event(calendar_id, resource)["id"])
        for exdate in spec.exdates:
            self.emulator.cancel_instance(calendar_id, event_id, _original(exdate))
        for recurrence_id, new_start, new_end, summary in spec.overrides:
            changes: dict[str, Any] = {"start": _when(new_start), "end": _when(new_end)}
            if summary is not None:
                changes["summary"] = summary
            self.emulator.modify_instance(calendar_id, event_id, _original(recurrence_id),
                                          changes)
        return event_id

    def edit_remote(self, calendar_id: str, remote_id: str, **changes: object) -> None:
        unknown = set(changes) - {"summary", "start", "end", "description", "location"}
        if unknown:
            raise ValueError(f"edit_remote: unsupported fields {sorted(unknown)}")
        patch: dict[str, Any] = {}
        for key, value in changes.items():
            is_time = key in ("start", "end")
            patch[key] = _when(value) if is_time else value  # type: ignore[arg-type]
        events = self.emulator.events(calendar_id)
        if remote_id in events:
            self.emulator.put_event(calendar_id, {**events[remote_id], **patch})
            return
        master, _, _suffix = remote_id.partition("_")
        with self.emulator.lock:
            ev = self.emulator.calendars[calendar_id].events[master]
            ev.setdefault("_exceptions", {}).setdefault(remote_id, {}).update(patch)
            self.emulator.put_event(calendar_id, ev)

    def delete_remote(self, calendar_id: str, remote_id: str) -> None:
        if remote_id in self.emulator.events(calendar_id):
            self.emulator.remove_event(calendar_id, remote_id)
            return
        master, _, _suffix = remote_id.partition("_")
        with self.emulator.lock:
            ev = self.emulator.calendars[calendar_id].events[master]
            ev.setdefault("_exceptions", {})[remote_id] = {"status": "cancelled"}
            self.emulator.put_event(calendar_id, ev)

    def invalidate_sync_token(self, calendar_id: str) -> None:
        self.emulator.invalidate_sync_tokens()

    def close(self) -> None:
        self.emulator.stop()


class GoogleDomainBackend(GoogleBackend):
    """The same account reached through Google Workspace domain-wide delegation: a service
    account's signed JWT grant with ``sub`` = the user, through google-auth (connector:
    calsync_google's domain-wide mode). No user sign-in."""

    def __init__(self, tmp_path: Path, request: Any = None) -> None:
        from tests.emulators.google import google_settings

        self.emulator = GoogleEmulator().start()
        if request is not None:
            request.addfinalizer(self.emulator.stop)
        self.emulator.add_account(ACCOUNT, timezone="UTC")
        key = self.emulator.add_service_account()
        self.emulator.delegate(key["client_id"], ACCOUNT.split("@")[1])
        self._ctx = ConnectContext(provider="google", url=None, account=ACCOUNT, credentials={
            "mode": "domain_wide", "domain": ACCOUNT.split("@")[1],
            "service_account_key": key}, settings=google_settings(self.emulator),
            options={"sleep": lambda _s: None})
