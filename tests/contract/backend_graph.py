"""The Microsoft Graph emulator as a contract backend (connector: calsync_outlook, through
the real msal and httpx)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from calsync.config import Settings
from calsync.sync.connector import ConnectContext
from calsync_outlook import OutlookFactory, OutlookHttp
from tests.contract.backend import DateOrTime, ExternalSpec
from tests.emulators.graph import GraphEmulator

ACCOUNT = "contract@contoso.com"
UTC = dt.timezone.utc
_DAYS = {"MO": "monday", "TU": "tuesday", "WE": "wednesday", "TH": "thursday",
         "FR": "friday", "SA": "saturday", "SU": "sunday"}


def _side(value: DateOrTime) -> dict[str, str]:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} in a contract spec")
        return {"dateTime": value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "timeZone": "UTC"}
    return {"dateTime": f"{value.isoformat()}T00:00:00", "timeZone": "UTC"}


def _day(value: DateOrTime) -> dt.date:
    return value.astimezone(UTC).date() if isinstance(value, dt.datetime) else value


def _recurrence(rrule: str, first: DateOrTime) -> dict[str, Any]:
    parts = dict(p.split("=", 1) for p in rrule.split(";") if "=" in p)
    freq = parts.get("FREQ", "").upper()
    if freq not in ("DAILY", "WEEKLY"):
        raise ValueError(f"graph backend: RRULE FREQ {freq!r} not supported")
    pattern: dict[str, Any] = {"type": freq.lower(), "interval": int(parts.get("INTERVAL", 1))}
    if freq == "WEEKLY":
        days = parts.get("BYDAY")
        pattern["daysOfWeek"] = ([_DAYS[d[-2:]] for d in days.split(",")] if days else
                                 [list(_DAYS.values())[_day(first).weekday()]])
    start = _day(first).isoformat()
    if "COUNT" in parts:
        rng = {"type": "numbered", "startDate": start,
               "numberOfOccurrences": int(parts["COUNT"])}
    elif "UNTIL" in parts:
        until = parts["UNTIL"][:8]
        rng = {"type": "endDate", "startDate": start,
               "endDate": f"{until[:4]}-{until[4:6]}-{until[6:8]}"}
    else:
        rng = {"type": "noEnd", "startDate": start}
    return {"pattern": pattern, "range": rng}


class GraphBackend:
    provider = "outlook"
    counts_requests = True
    supports_read_only = True

    def __init__(self, tmp_path: Path, request: Any = None) -> None:
        self.emulator = GraphEmulator().start()
        if request is not None:
            request.addfinalizer(self.emulator.stop)
        self.emulator.add_mailbox(ACCOUNT, calendars=())
        self.http = OutlookHttp(self.emulator.identity_session(), self.emulator.graph_client())
        settings = self.emulator.configure(Settings())
        factory = OutlookFactory(http=self.http, sleep=lambda _s: None)
        ctx = factory.device_flow(ConnectContext("outlook", None, "", {}, settings,
                                                 http=self.http), lambda _m: None)
        self._ctx = ctx

    def context(self) -> ConnectContext:
        return self._ctx

    def make_calendar(self, name: str) -> str:
        return self.emulator.add_calendar(ACCOUNT, name)

    def make_read_only_calendar(self, name: str) -> str:
        return self.emulator.add_calendar(ACCOUNT, name, can_edit=False)

    def put_external(self, calendar_id: str, spec: ExternalSpec) -> str:
        event: dict[str, Any] = {"subject": spec.summary, "start": _side(spec.start),
                                 "end": _side(spec.end), "isAllDay": spec.all_day,
                                 "showAs": "free" if spec.transparent else "busy",
                                 "sensitivity": "private" if spec.private else "normal"}
        if spec.description is not None:
            event["body"] = {"contentType": "text", "content": spec.description}
        if spec.location is not None:
            event["location"] = {"displayName": spec.location}
        if spec.rrule:
            event["recurrence"] = _recurrence(spec.rrule, spec.start)
        created = self.emulator.put_event(ACCOUNT, calendar_id, event)
        for exdate in spec.exdates:
            self.emulator.set_exception(ACCOUNT, created["id"], _day(exdate), None)
        for recurrence_id, new_start, new_end, summary in spec.overrides:
            changes: dict[str, Any] = {"start": _side(new_start), "end": _side(new_end)}
            if summary is not None:
                changes["subject"] = summary
            self.emulator.set_exception(ACCOUNT, created["id"], _day(recurrence_id), changes)
        return str(created["id"])

    def _graph_changes(self, changes: dict[str, object]) -> dict[str, Any]:
        unknown = set(changes) - {"summary", "start", "end", "description", "location"}
        if unknown:
            raise ValueError(f"edit_remote: unsupported fields {sorted(unknown)}")
        out: dict[str, Any] = {}
        for key, value in changes.items():
            if key == "summary":
                out["subject"] = value
            elif key in ("start", "end"):
                out[key] = _side(value)  # type: ignore[arg-type]
            elif key == "description":
                out["body"] = {"contentType": "text", "content": value}
            else:
                out["location"] = {"displayName": value}
        return out

    def edit_remote(self, calendar_id: str, remote_id: str, **changes: object) -> None:
        patch = self._graph_changes(changes)
        box = self.emulator.mailboxes[ACCOUNT]
        if remote_id in box.events:
            self.emulator.edit_event(ACCOUNT, remote_id, patch)
            return
        master, _, day = remote_id.rpartition("_")
        self.emulator.set_exception(ACCOUNT, master, dt.datetime.strptime(day, "%Y%m%d").date(),
                                    patch)

    def delete_remote(self, calendar_id: str, remote_id: str) -> None:
        box = self.emulator.mailboxes[ACCOUNT]
        if remote_id in box.events:
            self.emulator.remove_event(ACCOUNT, remote_id)
            return
        master, _, day = remote_id.rpartition("_")
        self.emulator.set_exception(ACCOUNT, master, dt.datetime.strptime(day, "%Y%m%d").date(),
                                    None)

    def invalidate_sync_token(self, calendar_id: str) -> None:
        self.emulator.expire_delta_tokens()

    def close(self) -> None:
        self.http.graph.close()
        self.http.identity.close()
        self.emulator.stop()


class GraphTenantBackend(GraphBackend):
    """The same mailbox reached app-only, as a Microsoft 365 tenant connection does:
    client-credentials tokens from msal's ConfidentialClientApplication and
    ``/users/{email}/…`` routes (connector: calsync_outlook's app-only mode)."""

    def __init__(self, tmp_path: Path, request: Any = None) -> None:
        self.emulator = GraphEmulator().start()
        if request is not None:
            request.addfinalizer(self.emulator.stop)
        self.emulator.add_mailbox(ACCOUNT, calendars=())
        self.emulator.enable_app_only(secret="tenant-app-secret")
        self.http = OutlookHttp(self.emulator.identity_session(), self.emulator.graph_client())
        settings = self.emulator.configure(Settings())
        self._ctx = ConnectContext("outlook", None, ACCOUNT, {
            "mode": "app_only", "tenant": self.emulator.tenant,
            "client_id": self.emulator.client_id, "client_secret": "tenant-app-secret"},
            settings, http=self.http)
