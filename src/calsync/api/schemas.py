"""JSON schemas (pydantic models) of the self-service API's bodies, answers and errors, so
the OpenAPI document describes each of them and a platform can generate a client."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool

_SECRET: dict[str, Any] = {"format": "password", "writeOnly": True}


class ErrorBody(BaseModel):
    """Every error: a machine-readable ``error`` code and a ``detail`` for people (a
    sentence, or for validation errors the record/field/error or a list of them)."""

    error: str = Field(examples=["auth_failed"])
    detail: Any = Field(examples=["The server did not accept this username and password."])


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses."""
    text = {401: "Missing, invalid or revoked API token", 403: "The token's role may not "
            "do this (a user token acting on another user; a dispatcher changing anything)",
            404: "No such user, connection or calendar", 409: "Not possible right now "
            "(a sync holds the connection, re-authentication needed, copies left)",
            422: "Invalid body, or credentials the server refused (auth_failed, not_caldav, "
            "unreachable)", 502: "The provider failed", 503: "The provider is unavailable"}
    return {code: {"model": ErrorBody, "description": text[code]} for code in codes}


class CalendarOut(BaseModel):
    id: str = Field(description="Public calendar id", examples=["cal_3f9a1c0d2e4b"])
    name: str
    role: Literal["primary", "conflict", "ignored"]
    read_only: bool
    status: Literal["ok", "error", "guarded", "gone"] = Field(
        description="guarded: it suddenly listed nothing, sync stopped until confirmed; "
                    "gone: it no longer exists on the server")
    last_synced_at: AwareDatetime | None = Field(description="Last successful sync")
    last_error: str | None


class ConnectionOut(BaseModel):
    id: str = Field(description="Public connection id", examples=["con_8e21d4a7b0c3"])
    provider: str = Field(examples=["caldav", "icloud", "outlook", "google"])
    account: str
    status: Literal["ok", "needs_reauth", "error"]
    last_sync_at: AwareDatetime | None
    last_success_at: AwareDatetime | None
    last_error: str | None
    next_sync_at: AwareDatetime | None
    calendars: list[CalendarOut]


class ConnectionsOut(BaseModel):
    connections: list[ConnectionOut]


class ConnectedOut(ConnectionOut):
    created: bool = Field(description="False when an existing connection was re-authorised")


class CaldavConnect(BaseModel):
    """Any CalDAV server (Nextcloud, Fastmail, Radicale, ...)."""

    model_config = ConfigDict(extra="forbid")
    provider: Literal["caldav"]
    url: str = Field(description="Server or calendar-home URL",
                     examples=["https://cloud.example.com/remote.php/dav/"])
    username: str
    password: str = Field(json_schema_extra=_SECRET, description="Never echoed back")


class IcloudConnect(BaseModel):
    """iCloud with an Apple ID and an app-specific password (account.apple.com)."""

    model_config = ConfigDict(extra="forbid")
    provider: Literal["icloud"]
    apple_id: str = Field(examples=["jane@icloud.com"])
    app_password: str = Field(json_schema_extra=_SECRET, examples=["abcd-efgh-ijkl-mnop"],
                              description="App-specific password; never echoed back")


class IcsConnect(BaseModel):
    """A subscribed calendar (an .ics feed: a school timetable, a shift roster): read-only,
    checked for conflicts."""

    model_config = ConfigDict(extra="forbid")
    provider: Literal["ics"]
    url: str = Field(description="The feed's address (https:// or webcal://); stored "
                                 "encrypted, since private links carry their key",
                     json_schema_extra={"writeOnly": True},
                     examples=["https://school.example.org/timetable.ics"])


ConnectBody = Annotated[CaldavConnect | IcloudConnect | IcsConnect,
                        Field(discriminator="provider")]


class OAuthStartIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: Literal["outlook", "google"]
    return_to: str = Field(description="Page the browser is sent to after the sign-in: a "
                                       "path on calsync, or a URL on an origin listed in "
                                       "[server] allowed_return_origins. It gets "
                                       "connection=con_… (or error=CODE) in its query.",
                           examples=["https://platform.example.com/settings/calendar"])


class OAuthStartOut(BaseModel):
    authorize_url: str = Field(description="Send the user's browser here")
    expires_at: AwareDatetime = Field(description="The sign-in must finish before this")


class CalendarRolesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    primary: str | None = Field(description="Calendar (cal_…) that receives the schedule, "
                                            "or null for none")
    conflict: list[str] = Field(default_factory=list,
                                description="Calendars checked for conflicts (cal_…)")


class CalendarRoleOut(CalendarOut):
    connection: str = Field(description="Public id of the calendar's connection")


class CalendarRolesOut(BaseModel):
    primary: str | None
    conflict: list[str]
    calendars: list[CalendarRoleOut]


class CalendarRef(BaseModel):
    id: str
    name: str
    read_only: bool | None = None
    role: str | None = None


class RefreshedOut(ConnectionOut):
    added: list[CalendarRef]
    removed: list[CalendarRef]
    gone: list[CalendarRef] = Field(description="Calendars with a role that vanished; "
                                                "choose others")


class SyncQueuedOut(BaseModel):
    id: str
    queued: bool
    next_sync_at: AwareDatetime


class DisconnectedOut(BaseModel):
    id: str
    removed: bool
    copies_removed: int = Field(description="calsync's copies deleted from the calendars")
    revoked: bool = Field(description="Whether the provider revoked the stored sign-in")


WorkingHours = dict[str, list[Annotated[list[str], Field(min_length=2, max_length=2)]]]


class UserPatch(BaseModel):
    """Fields to change; those left out stay. A ``user`` token may send its own
    ``timezone``, ``working_hours`` and ``private_mode``; admins any of them."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    email: str | None = Field(default=None, description="null clears it")
    timezone: str | None = Field(default=None, examples=["America/Chicago"])
    working_hours: WorkingHours | None = Field(
        default=None, examples=[{"mon": [["08:00", "12:00"], ["13:00", "17:00"]], "sun": []}])
    private_mode: StrictBool | None = None


class UserOut(BaseModel):
    id: str
    name: str
    email: str | None
    timezone: str
    private_mode: bool
    working_hours: dict[str, Any]
    feed_enabled: bool
    feed_last_fetched_at: AwareDatetime | None


class TokenOut(BaseModel):
    """An API token as listings show it: never the token or its hash."""

    id: int
    name: str
    role: Literal["admin", "dispatcher", "user"]
    user_id: str | None
    prefix: str = Field(description="The token's first characters, to recognise it")
    created_at: AwareDatetime | None
    last_used_at: AwareDatetime | None
    revoked_at: AwareDatetime | None


class TokensOut(BaseModel):
    tokens: list[TokenOut]

