"""The in-memory provider as a contract backend (the reference every connector matches)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from calsync.config import Settings
from calsync.sync.connector import ConnectContext, register_factory
from calsync.sync.memory import MemoryFactory, MemoryServer
from tests.contract.backend import ExternalSpec


class MemoryBackend:
    provider = "memory"
    counts_requests = True
    supports_read_only = True

    def __init__(self, tmp_path: Path) -> None:
        self.server = MemoryServer()
        register_factory(MemoryFactory())

    def context(self) -> ConnectContext:
        return ConnectContext(provider="memory", url=None, account="contract@example.com",
                              credentials={}, settings=Settings(), http=self.server)

    def make_calendar(self, name: str) -> str:
        return self.server.add_calendar(None, name)

    def make_read_only_calendar(self, name: str) -> str:
        return self.server.add_calendar(None, name, read_only=True)

    def put_external(self, calendar_id: str, spec: ExternalSpec) -> str:
        return self.server.put_external(
            calendar_id, spec.summary, spec.start, spec.end, all_day=spec.all_day,
            rrule=spec.rrule, exdates=tuple(spec.exdates), overrides=tuple(spec.overrides),
            busy="free" if spec.transparent else "busy", private=spec.private,
            description=spec.description, location=spec.location)

    def edit_remote(self, calendar_id: str, remote_id: str, **changes: Any) -> None:
        unknown = set(changes) - {"summary", "start", "end", "description", "location"}
        if unknown:
            raise ValueError(f"edit_remote: unsupported fields {sorted(unknown)}")
        self.server.edit(calendar_id, remote_id, **changes)

    def delete_remote(self, calendar_id: str, remote_id: str) -> None:
        self.server.remove(calendar_id, remote_id)

    def invalidate_sync_token(self, calendar_id: str) -> None:
        self.server.invalidate_tokens(calendar_id)

    def close(self) -> None:
        self.server.calendars.clear()
