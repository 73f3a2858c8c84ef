"""The connector interface: the only thing the sync engine knows of a provider.

A connector is a plugin found by name in the entry-point group ``calsync.connectors``
(see :func:`load_connector_factory`). The entry point names a :class:`ConnectorFactory`.
The core never imports a connector module directly.

Shapes exchanged with connectors are plain dataclasses defined here:

- :class:`RemoteCalendar` - one calendar of an account.
- :class:`RemoteEvent` - one remote object normalised (a CalDAV resource with its master
  and overrides, a Graph event/occurrence, a Google event/instance), with its occurrences
  already expanded inside the requested window.
- :class:`ChangeSet` - what changed since a sync token.
- :class:`OutgoingEvent` - what calsync writes for one schedule item.

Errors (from :mod:`calsync.errors`): connectors map vendor errors at their edge to
``SyncTokenInvalid`` (token expired: the engine does a full resync), ``PreconditionFailed``
(etag mismatch), ``AlreadyExists`` (create met an existing object: the engine adopts it),
``NotFound``, ``Throttled(retry_after=...)``, ``NeedsReauth``, ``ProviderUnavailable``,
and ``UserError`` for a wrong URL or password at connect time.

Optional method (not part of the :class:`Connector` protocol; the engine looks for it with
``hasattr``): ``create_many(calendar_id, events: list[OutgoingEvent]) ->
list[RemoteEvent | Exception]`` creates many events in few requests (e.g. Graph ``$batch``).
It returns one result per event, in order: the created :class:`RemoteEvent`, or the exception
``create`` would have raised for that event (``AlreadyExists`` is adopted by key,
``Throttled``/``ProviderUnavailable`` items are retried singly). When present, the engine
sends a calendar's creates through it in chunks and records each item's link on its own.

Optional method ``expand(source: str, window: Window) -> list[Occurrence]``: the occurrences
of a stored external event inside ``window``, computed from ``RemoteEvent.source`` without a
request. A connector that sets ``source`` on the events it returns must have it; the engine
calls it as the sync window slides, so a series whose object never changes again still
blocks the days that enter the window. A connector without it (the provider expands, and
its delta link or sync token is bound to the window of the listing that started it) is
re-baselined with a full listing once the window has slid ``sync.window_resync_days``.

Optional method ``token_after_writes(calendar_id, token) -> str | None``: the token to store
after the engine's writes of this run, for servers whose token names a state rather than a
position in a change log (a copy created after ``token`` and deleted before the next pull
would otherwise never be reported). Makes no request when nothing was written; never raises
(falls back to ``token``).

A calendar whose collection is gone (404/410) raises ``CalendarGone`` from ``changes``;
only that calendar stops. Every request goes through one :class:`calsync.sync.retry.
RetryPolicy` at the connector's HTTP edge; nothing above retries again.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Literal, Protocol, cast, runtime_checkable

from calsync.errors import UserError

CONNECTOR_GROUP = "calsync.connectors"

BusyStatus = Literal["busy", "free", "tentative", "oof", "workingElsewhere"]
EventStatus = Literal["confirmed", "tentative", "cancelled"]


@dataclass(frozen=True)
class Window:
    """The sync window: [start, end) in UTC."""

    start: dt.datetime
    end: dt.datetime


@dataclass(frozen=True)
class RemoteCalendar:
    id: str  # stable remote id (CalDAV URL, Graph id, Google id)
    name: str
    read_only: bool = False
    supports_events: bool = True  # False for VTODO-only CalDAV collections etc.
    color: str | None = None


@dataclass(frozen=True)
class Occurrence:
    start: dt.datetime  # aware UTC
    end: dt.datetime  # aware UTC


@dataclass
class RemoteEvent:
    """One remote object, normalised. ``calsync_key`` is set when calsync wrote it
    (the tag it put there: X-CALSYNC-KEY / extended property), else None.

    ``start``/``end`` describe the master (or single) event: aware datetimes, or dates when
    ``all_day``. ``occurrences`` are the busy spans inside the window (UTC), expanded from
    RRULE/RDATE/EXDATE/overrides for recurring events, bounded by the configured maximum.
    """

    remote_id: str
    etag: str | None
    uid: str | None = None
    calsync_key: str | None = None
    summary: str | None = None
    description: str | None = None
    location: str | None = None
    start: dt.datetime | dt.date | None = None
    end: dt.datetime | dt.date | None = None
    all_day: bool = False
    tzid: str | None = None
    busy: BusyStatus = "busy"
    status: EventStatus = "confirmed"
    response: str | None = None  # the owner's own answer: accepted|declined|tentative|None
    private: bool = False  # CLASS:PRIVATE/CONFIDENTIAL, sensitivity, visibility
    organizer: str | None = None
    attendees: list[str] = field(default_factory=list)
    recurring: bool = False
    occurrences: list[Occurrence] = field(default_factory=list)
    last_modified: dt.datetime | None = None
    raw: str | None = None  # provider payload (ICS or JSON) for diagnostics
    # What the connector's ``expand`` needs to re-expand this event for another window
    # (CalDAV: the object's iCalendar text). None when the provider expands.
    source: str | None = None


@dataclass(frozen=True)
class Quarantined:
    """A remote object that could not be read; never silently dropped."""

    remote_id: str
    reason: str
    raw: str | None = None


@dataclass
class ChangeSet:
    """Changes since a token. ``full=True``: ``changed`` lists every object in the
    calendar (window), so anything known and not listed was deleted remotely."""

    changed: list[RemoteEvent] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)  # remote ids
    quarantined: list[Quarantined] = field(default_factory=list)
    token: str | None = None
    full: bool = False
    requests: int = 0  # HTTP requests this pull cost (for the no-op sync budget)


@dataclass(frozen=True)
class OutgoingEvent:
    """What calsync writes for one schedule item. ``key`` is deterministic per item
    (e.g. ``job-j1``) and is what makes creates idempotent and copies adoptable."""

    key: str
    uid: str
    summary: str
    start: dt.datetime | dt.date
    end: dt.datetime | dt.date
    all_day: bool
    tzid: str
    description: str = ""
    location: str = ""
    categories: tuple[str, ...] = ()
    status: EventStatus = "confirmed"
    sequence: int = 0
    busy: BusyStatus = "busy"


@runtime_checkable
class Connector(Protocol):
    """One connected account. Implementations take their HTTP client/transport and
    credentials in the factory; every method may raise the errors listed above."""

    def list_calendars(self) -> list[RemoteCalendar]:
        """All calendars of the account that can hold events."""
        ...

    def changes(self, calendar_id: str, token: str | None, window: Window) -> ChangeSet:
        """Changes since ``token`` (None: a full listing). Raises SyncTokenInvalid when
        the remote no longer knows the token. A no-change call costs one request."""
        ...

    def get(self, calendar_id: str, remote_id: str, window: Window) -> RemoteEvent | None:
        """One object by id, or None when it is gone."""
        ...

    def find_by_key(self, calendar_id: str, key: str, window: Window) -> RemoteEvent | None:
        """The copy calsync wrote with ``key``, if one exists (adoption after a crash)."""
        ...

    def create(self, calendar_id: str, event: OutgoingEvent) -> RemoteEvent:
        """Create idempotently (deterministic href + If-None-Match, transactionId, or
        client-chosen id). Raises AlreadyExists when the copy is already there."""
        ...

    def update(self, calendar_id: str, remote_id: str, event: OutgoingEvent,
               etag: str | None) -> RemoteEvent:
        """Replace with ``If-Match: etag`` where supported. Raises PreconditionFailed."""
        ...

    def delete(self, calendar_id: str, remote_id: str, etag: str | None) -> None:
        """Delete with ``If-Match`` where supported. A missing object is not an error."""
        ...

    def credentials(self) -> dict[str, Any] | None:
        """Credentials to store back when they changed (refreshed tokens), else None."""
        ...

    def close(self) -> None:
        ...


@dataclass
class ConnectContext:
    """What a factory gets to build a connector."""

    provider: str
    url: str | None
    account: str
    credentials: dict[str, Any]
    settings: Any  # calsync.config.Settings
    http: Any = None  # injected transport/session for tests
    options: dict[str, Any] = field(default_factory=dict)


class ConnectorFactory(Protocol):
    """Entry-point target. ``providers`` lists the provider names it serves."""

    providers: tuple[str, ...]

    def connect(self, ctx: ConnectContext) -> Connector:
        """Build a connector; verifies nothing over the network."""
        ...

    def verify(self, ctx: ConnectContext) -> tuple[ConnectContext, list[RemoteCalendar]]:
        """Check credentials at connect time (wrong password/URL -> UserError) and do any
        discovery; returns the context to store (e.g. the discovered URL) and calendars."""
        ...


_registry: dict[str, ConnectorFactory] = {}


def register_factory(factory: ConnectorFactory) -> None:
    """Register a factory directly (tests and the in-memory connector)."""
    for provider in factory.providers:
        _registry[provider] = factory


def load_connector_factory(provider: str) -> ConnectorFactory:
    """The factory serving ``provider``, found through the entry-point group."""
    if provider in _registry:
        return _registry[provider]
    for ep in entry_points(group=CONNECTOR_GROUP):
        if ep.name == provider:
            obj = ep.load()
            factory = obj() if isinstance(obj, type) else obj
            if provider not in getattr(factory, "providers", ()):
                raise UserError(f"connector plugin {ep.value} does not serve {provider!r}")
            _registry[provider] = factory
            return cast(ConnectorFactory, factory)
    known = sorted({ep.name for ep in entry_points(group=CONNECTOR_GROUP)} | set(_registry))
    raise UserError(f"no connector for provider {provider!r}; installed: {', '.join(known)}")
