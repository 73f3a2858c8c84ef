"""SQLAlchemy 2.0 typed models. All instants are UTC (naive-free: stored as aware UTC).

Tables by subsystem:
- schedule: ``users``, ``schedule_items`` (jobs, time off, blocks), ``item_assignees``
- feeds: ``feed_cache`` (rendered body + ETag per user)
- platform: ``api_tokens``, ``audit_log``
- sync: ``connections``, ``calendars``, ``links``, ``external_events``, ``external_busy``,
  ``quarantine``
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    FetchedValue,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_public_id(prefix: str) -> str:
    """A stable public id (``con_…``, ``cal_…``): what the CLI prints and the API takes."""
    return f"{prefix}_{secrets.token_hex(6)}"


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Stores aware datetimes as UTC; always returns aware UTC (SQLite drops tzinfo)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given to a UTC column")
        value = value.astimezone(dt.timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: UTCDateTime, dict[str, Any]: JSON}


# --- schedule ---------------------------------------------------------------------------

class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    email: Mapped[str | None] = mapped_column(String(320))
    timezone: Mapped[str] = mapped_column(String(64))
    working_hours: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    private_mode: Mapped[bool] = mapped_column(Boolean, default=True)
    # Feed link: the token is HMAC(secret, user id + feed_version); nothing usable is stored.
    feed_version: Mapped[int] = mapped_column(Integer, default=0)
    feed_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    feed_last_fetched_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class ScheduleItem(Base):
    """A job, time off or blocked event. ``(kind, ext_id)`` is the platform's identity."""

    __tablename__ = "schedule_items"
    __table_args__ = (
        UniqueConstraint("kind", "ext_id", name="uq_schedule_items_kind_ext_id"),
        Index("ix_schedule_items_window", "start_at", "end_at"),
    )

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))  # job | time_off | block
    ext_id: Mapped[str] = mapped_column(String(128))
    title: Mapped[str] = mapped_column(Text, default="")
    job_type: Mapped[str | None] = mapped_column(String(128))
    account: Mapped[str | None] = mapped_column(Text)
    location: Mapped[str | None] = mapped_column(Text)
    notes: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="scheduled")
    all_day: Mapped[bool] = mapped_column(Boolean, default=False)
    start_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    end_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    start_date: Mapped[dt.date | None] = mapped_column(Date)  # all-day only
    end_date: Mapped[dt.date | None] = mapped_column(Date)  # all-day only, exclusive
    tzid: Mapped[str] = mapped_column(String(64))
    sequence: Mapped[int] = mapped_column(Integer, default=0)
    content_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Cached VEVENT text; valid while fragment_key == content_hash + renderer version.
    ics_fragment: Mapped[str | None] = mapped_column(Text)
    fragment_key: Mapped[str | None] = mapped_column(String(80))

    assignees: Mapped[list[ItemAssignee]] = relationship(
        back_populates="item", cascade="all, delete-orphan", lazy="selectin"
    )

    @property
    def user_ids(self) -> list[str]:
        return sorted(a.user_id for a in self.assignees)


class ItemAssignee(Base):
    """One assignee of an item. ``start_at``/``end_at``/``long_span`` are copies of the
    item's span kept by database triggers (migration 0009), for availability reads."""

    __tablename__ = "item_assignees"
    __table_args__ = (Index("ix_item_assignees_user", "user_id", "item_pk"),
                      Index("ix_item_assignees_span", "user_id", "long_span", "start_at",
                            "end_at"))

    item_pk: Mapped[int] = mapped_column(
        ForeignKey("schedule_items.pk", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    start_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime,
                                                         server_default=FetchedValue())
    end_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime,
                                                       server_default=FetchedValue())
    long_span: Mapped[bool] = mapped_column(Boolean, server_default=false())
    item: Mapped[ScheduleItem] = relationship(back_populates="assignees")


# --- feeds ------------------------------------------------------------------------------

class FeedCache(Base):
    """The rendered feed of one user. ``dirty`` asks the scheduler to re-render it."""

    __tablename__ = "feed_cache"

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    dirty: Mapped[bool] = mapped_column(Boolean, default=True)
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    etag: Mapped[str | None] = mapped_column(String(80))
    last_modified: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    generated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    window_start: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    window_end: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    schema_version: Mapped[int] = mapped_column(Integer, default=1)
    # Digest of what ``body`` was assembled from (header, zones, each item's fragment key):
    # the rebuild leaves a feed whose sources did not change without reading its fragments.
    source_digest: Mapped[str | None] = mapped_column(String(64))


# --- platform ---------------------------------------------------------------------------

class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))  # admin | dispatcher | user
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(160))
    action: Mapped[str] = mapped_column(String(64))
    target_kind: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str] = mapped_column(String(160))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


# --- sync -------------------------------------------------------------------------------

class Connection(Base):
    """A linked external account. ``credentials`` is encrypted (see calsync.secrets)."""

    __tablename__ = "connections"
    # The worker's claim query: due connections, most overdue first.
    __table_args__ = (Index("ix_connections_due", "next_sync_at", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True,
                                           default=lambda: new_public_id("con"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(String(32))  # outlook | icloud | google | caldav
    account: Mapped[str] = mapped_column(String(320), default="")
    url: Mapped[str | None] = mapped_column(Text)
    credentials: Mapped[bytes | None] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16), default="ok")  # ok | needs_reauth | error
    last_error: Mapped[str | None] = mapped_column(Text)
    last_sync_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_success_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    next_sync_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set for a user's connection made through an organisation-wide one (calsync.sync.tenants)
    tenant_id: Mapped[int | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True)

    calendars: Mapped[list[Calendar]] = relationship(
        back_populates="connection", cascade="all, delete-orphan"
    )


class Calendar(Base):
    __tablename__ = "calendars"
    __table_args__ = (UniqueConstraint("connection_id", "remote_id", name="uq_calendars_remote"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True,
                                           default=lambda: new_public_id("cal"))
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    remote_id: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text, default="")
    role: Mapped[str] = mapped_column(String(16), default="ignored")  # primary|conflict|ignored
    read_only: Mapped[bool] = mapped_column(Boolean, default=False)
    sync_token: Mapped[str | None] = mapped_column(Text)  # versioned: "v1:<token>"
    ctag: Mapped[str | None] = mapped_column(Text)
    # ok | error | guarded | gone (the collection answered 404/410)
    status: Mapped[str] = mapped_column(String(16), default="ok")
    last_error: Mapped[str | None] = mapped_column(Text)
    last_sync_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_success_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    known_items: Mapped[int] = mapped_column(Integer, default=0)
    empty_confirmed: Mapped[bool] = mapped_column(Boolean, default=False)
    # Start of the sync window the stored busy blocks were expanded for; the engine
    # re-expands stored series (or re-baselines with a full listing) as the window moves.
    window_start: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # A calendar throttled past the retry cap is not synced again before this.
    retry_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    connection: Mapped[Connection] = relationship(back_populates="calendars")


class Link(Base):
    """Ties one schedule item to its copy on one remote calendar."""

    __tablename__ = "links"
    __table_args__ = (
        UniqueConstraint("item_pk", "calendar_id", name="uq_links_item_calendar"),
        Index("ix_links_calendar_remote", "calendar_id", "remote_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_pk: Mapped[int] = mapped_column(ForeignKey("schedule_items.pk", ondelete="CASCADE"))
    calendar_id: Mapped[int] = mapped_column(ForeignKey("calendars.id", ondelete="CASCADE"))
    remote_id: Mapped[str] = mapped_column(Text)
    etag: Mapped[str | None] = mapped_column(Text)
    local_hash: Mapped[str] = mapped_column(String(64))
    remote_hash: Mapped[str] = mapped_column(String(64))
    schema_version: Mapped[int] = mapped_column(Integer, default=1)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class ExternalEvent(Base):
    """An event on a remote calendar that calsync did not write."""

    __tablename__ = "external_events"
    __table_args__ = (
        UniqueConstraint("calendar_id", "remote_id", name="uq_external_events_remote"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    calendar_id: Mapped[int] = mapped_column(ForeignKey("calendars.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    remote_id: Mapped[str] = mapped_column(Text)
    etag: Mapped[str | None] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))
    uid: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    location: Mapped[str | None] = mapped_column(Text)
    organizer: Mapped[str | None] = mapped_column(Text)
    attendees: Mapped[list[Any]] = mapped_column(JSON, default=list)
    busy_status: Mapped[str] = mapped_column(String(24), default="busy")
    status: Mapped[str] = mapped_column(String(16), default="confirmed")
    response: Mapped[str | None] = mapped_column(String(24))  # accepted|declined|...
    private_at_source: Mapped[bool] = mapped_column(Boolean, default=False)
    all_day: Mapped[bool] = mapped_column(Boolean, default=False)
    # What the connector needs to re-expand the event for a later window without a
    # request (CalDAV: the object's iCalendar text); None where the provider expands.
    source: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    occurrences: Mapped[list[ExternalBusy]] = relationship(
        back_populates="event", cascade="all, delete-orphan", passive_deletes=True
    )


class ExternalBusy(Base):
    """One occurrence of an external event (recurrences expanded inside the window)."""

    __tablename__ = "external_busy"
    __table_args__ = (Index("ix_external_busy_user_window", "user_id", "start_at", "end_at"),
                      Index("ix_external_busy_event", "event_id"),
                      Index("ix_external_busy_span", "user_id", "long_span", "start_at",
                            "end_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("external_events.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(String(128))
    start_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    end_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    # Longer than a day; set by a database trigger (migration 0009).
    long_span: Mapped[bool] = mapped_column(Boolean, server_default=false())

    event: Mapped[ExternalEvent] = relationship(back_populates="occurrences")


class Quarantine(Base):
    """A remote object calsync could not read; kept with the reason, never silently dropped."""

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    calendar_id: Mapped[int] = mapped_column(ForeignKey("calendars.id", ondelete="CASCADE"))
    remote_id: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    raw: Mapped[str | None] = mapped_column(Text)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class OAuthState(Base):
    """A pending web sign-in (authorization code + PKCE). ``state_hash`` is SHA-256 of the
    state value; ``verifier`` is the PKCE code verifier, encrypted."""

    __tablename__ = "oauth_states"

    state_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    verifier: Mapped[bytes] = mapped_column(LargeBinary)
    redirect_uri: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    # Where the browser goes after the callback (a checked URL), or None for a JSON answer.
    return_to: Mapped[str | None] = mapped_column(Text)


class PushSubscription(Base):
    """A provider push channel (Graph subscription, Google watch channel) for one calendar.
    ``secret_hash`` is SHA-256 of the clientState / channel token we gave the provider."""

    __tablename__ = "push_subscriptions"
    __table_args__ = (Index("ix_push_subscriptions_remote", "provider", "remote_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    calendar_id: Mapped[int] = mapped_column(ForeignKey("calendars.id", ondelete="CASCADE"))
    provider: Mapped[str] = mapped_column(String(32))
    remote_id: Mapped[str] = mapped_column(Text)  # subscription id / channel id
    resource_id: Mapped[str | None] = mapped_column(Text)  # Google resourceId
    secret_hash: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


# --- outbox: events, webhook endpoints, deliveries (calsync.outbox) ----------------------

class OutboxEvent(Base):
    """One event for the platform, written in the transaction of the change it reports.

    ``seq`` is given after commit, in commit order, by ``calsync.outbox.events.sequence``
    (one sequencer at a time): the change feed's cursor and the per-endpoint delivery order.
    ``endpoint_id`` is set only for test events, which go to that endpoint alone and not to
    the change feed."""

    __tablename__ = "outbox_events"
    __table_args__ = (Index("ix_outbox_events_unsequenced", "seq", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    public_id: Mapped[str] = mapped_column(String(40), unique=True,
                                           default=lambda: new_public_id("msg"))
    type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Events about the same subject (an item, a connection) are delivered in order.
    order_key: Mapped[str] = mapped_column(String(200), default="")
    seq: Mapped[int | None] = mapped_column(Integer, unique=True)
    endpoint_id: Mapped[int | None] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    schema_version: Mapped[int] = mapped_column(Integer, default=1)


class OutboxHorizon(Base):
    """What retention has deleted from the outbox (one row, ``id`` 1, once anything was):
    every event numbered up to ``pruned_through_seq`` is gone, the last change-feed event
    among them was ``feed_pruned_through_seq``; a change-feed cursor below that has missed
    events and is answered "cursor expired"."""

    __tablename__ = "outbox_horizon"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pruned_through_seq: Mapped[int] = mapped_column(Integer, default=0)
    feed_pruned_through_seq: Mapped[int] = mapped_column(Integer, default=0)
    pruned_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class WebhookEndpoint(Base):
    """A receiver of the platform. ``secret`` is the ``whsec_…`` signing secret, sealed with
    ``CredentialBox`` (a database dump does not reveal it)."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True,
                                           default=lambda: new_public_id("ep"))
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")
    events: Mapped[list[Any]] = mapped_column(JSON, default=list)  # ["*"] or event types
    secret: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_success_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_failure_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    failures_in_a_row: Mapped[int] = mapped_column(Integer, default=0)
    # The first failed attempt since the last success (None: the last attempt succeeded);
    # an endpoint failing for webhooks.disable_after_days is disabled.
    failing_since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    disabled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    # The outbox_events.seq from which this endpoint receives events.
    start_seq: Mapped[int] = mapped_column(Integer, default=0)


class WebhookDelivery(Base):
    """One event to one endpoint: pending until a 2xx (``delivered``), given up after the
    retry schedule (``failed``), or dropped when the endpoint was disabled (``cancelled``).
    Claimed with a lease like syncs."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "endpoint_id", name="uq_webhook_deliveries_event"),
        # Claims walk an endpoint's pending deliveries in seq order and stop at the limit.
        Index("ix_webhook_deliveries_due", "endpoint_id", "status", "seq"),
        Index("ix_webhook_deliveries_order", "endpoint_id", "order_key", "seq"),
        Index("ix_webhook_deliveries_leased", "endpoint_id", "lease_until"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("outbox_events.id", ondelete="CASCADE"))
    endpoint_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)  # the event's seq: the endpoint's order
    order_key: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class WebhookAttempt(Base):
    """One HTTP attempt of a delivery: when, the status code (None: no answer), how long."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_endpoint", "endpoint_id", "id"),
                      Index("ix_webhook_attempts_delivery", "delivery_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"))
    endpoint_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str] = mapped_column(String(128), default="")


# --- web sign-in (calsync.web.sessions) ------------------------------------------------

class LoginLink(Base):
    """A one-use sign-in link for the pages under /app/, valid 15 minutes. ``token_hash``
    is SHA-256 of the link's token: the token itself is shown once and never stored."""

    __tablename__ = "login_links"
    __table_args__ = (Index("ix_login_links_expires_at", "expires_at"),)

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))  # user | dispatcher
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(256))
    created_by: Mapped[str] = mapped_column(String(160))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class WebSession(Base):
    """A signed-in browser. ``session_hash`` is SHA-256 of the cookie's value."""

    __tablename__ = "web_sessions"
    __table_args__ = (Index("ix_web_sessions_expires_at", "expires_at"),)

    session_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))  # user | dispatcher
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


# --- organisation-wide connections (calsync.sync.tenants) --------------------------------

class Tenant(Base):
    """One admin consent for a whole Microsoft 365 tenant (``provider`` outlook, app-only) or
    Google Workspace domain (``provider`` google, domain-wide delegation). Its users'
    connections point here (``connections.tenant_id``); ``credentials`` (client secret,
    certificate or service-account key) is sealed with CredentialBox and kept only here."""

    __tablename__ = "tenants"
    __table_args__ = (UniqueConstraint("provider", "name", name="uq_tenants_provider_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True,
                                           default=lambda: new_public_id("org"))
    provider: Mapped[str] = mapped_column(String(32))  # outlook | google
    name: Mapped[str] = mapped_column(String(320))  # tenant id, or the Workspace domain
    domains: Mapped[list[Any]] = mapped_column(JSON, default=list)  # users' e-mail domains
    # users whose connection through it was disconnected: onboarding leaves them out
    left_out: Mapped[list[Any]] = mapped_column(JSON, default=list)
    credentials: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16), default="ok")  # ok | error
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
