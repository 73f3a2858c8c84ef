"""What a provider backend implements to run the shared connector contract suite.

A backend stands for one real calendar service (the in-memory server, Radicale, Xandikos,
the Graph and Google emulators). The suite builds connectors through the provider's
registered factory from :meth:`ContractBackend.context` and drives them through the sync
engine; the backend's other methods act as *the user* (or the service) would, without
going through the connector under test.

Register a backend with one line in ``tests/contract/backends.py``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from calsync.sync.connector import ConnectContext

DateOrTime = dt.datetime | dt.date


@dataclass(frozen=True)
class ExternalSpec:
    """An event the user creates in their calendar app.

    ``start``/``end``: aware datetimes, or dates when ``all_day`` (end exclusive).
    ``rrule``: an RRULE value without the ``RRULE:`` prefix, e.g. ``"FREQ=DAILY;COUNT=5"``.
    ``exdates``: instants (same kind as ``start``) removed from the series.
    ``overrides``: ``(recurrence_id, new_start, new_end, summary)`` per moved instance;
    ``summary`` may be None to keep the master's.
    ``transparent``: shows as free (TRANSP:TRANSPARENT / showAs free / transparency).
    ``private``: CLASS:PRIVATE / sensitivity private / visibility private.
    """

    summary: str
    start: DateOrTime
    end: DateOrTime
    all_day: bool = False
    rrule: str | None = None
    exdates: tuple[DateOrTime, ...] = ()
    overrides: tuple[tuple[DateOrTime, DateOrTime, DateOrTime, str | None], ...] = ()
    transparent: bool = False
    private: bool = False
    description: str | None = None
    location: str | None = None


@runtime_checkable
class ContractBackend(Protocol):
    """One calendar service the contract suite runs against.

    Optional attributes the suite reads with ``getattr``:

    - ``counts_requests: bool`` (default False): ``ChangeSet.requests`` is exact, so a no-op
      sync must cost exactly one request per calendar.
    - ``supports_read_only: bool`` (default False) with ``make_read_only_calendar(name)``.
    - ``new_process()``: forget what the provider's connectors keep in memory between
      syncs, as a new process would (CalDAV: the ledger of its own writes).
    """

    provider: str  # the provider name its factory serves ("memory", "caldav", ...)

    def context(self) -> ConnectContext:
        """A context the provider's factory turns into a connector for this account."""
        ...

    def make_calendar(self, name: str) -> str:
        """Create a fresh, empty calendar; return its remote id (as list_calendars gives)."""
        ...

    def put_external(self, calendar_id: str, spec: ExternalSpec) -> str:
        """Add an event as the user would (no calsync tag); return its remote id (the one
        the connector reports in RemoteEvent.remote_id)."""
        ...

    def edit_remote(self, calendar_id: str, remote_id: str, **changes: object) -> None:
        """Edit an event as the user would. Keys: ``summary``, ``start``, ``end``
        (datetimes, or dates for all-day events). Keeps calsync's tag if present."""
        ...

    def delete_remote(self, calendar_id: str, remote_id: str) -> None:
        """Delete an event as the user would."""
        ...

    def invalidate_sync_token(self, calendar_id: str) -> None:
        """Make the token the engine stored for this calendar unusable, so the next
        incremental pull raises SyncTokenInvalid inside the connector."""
        ...

    def close(self) -> None:
        """Release what the backend holds (servers are stopped by their fixtures)."""
        ...
