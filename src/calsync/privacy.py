"""Private mode: the one masking function every output of event data goes through.

:func:`mask_for_viewer` takes an *event view* (a dict built from a schedule item or an
external event, see ``calsync.availability.views``) and the viewer, and returns what that
viewer may see. Rules (DESIGN 7):

- calsync's own schedule items (``kind`` job, time_off, blocked, outside_hours) are not
  masked; only bookkeeping keys are dropped;
- an external event is shown in full to its owner only (``viewer.can_see_details_of``:
  an API token of role ``user`` for that very user). Any other viewer -- admin,
  dispatcher, another user, the CLI operator -- sees ``"Busy"`` and its times, no title,
  description, location, attendees, organizer or ids, when the owner's ``private_mode``
  is on (the default) or the event is private at its source;
- with private mode off and an event that is not private at the source, non-owners see
  its details.

The masked form is built from a whitelist (never by deleting keys), so a field added to a
view later stays hidden until it is listed here.

Logging: nothing in calsync logs event details. SQLAlchemy logs statement parameters and
result rows when its loggers are at INFO/DEBUG, which would carry event titles into logs
whenever the root logger is verbose (``calsync -v``); :func:`guard_sql_logging` keeps the
``sqlalchemy.engine`` logger at WARNING unless ``[database] echo`` is asked for explicitly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

MASKED_SUMMARY = "Busy"
MASKED_SOURCE = "external calendar"
EXTERNAL = "external"

# Keys a view may carry for masking decisions only; never shown to anyone.
_BOOKKEEPING = frozenset({"owner_id", "private_mode", "private_at_source"})
# What anyone may see of a masked external event.
_MASKED_KEYS = ("kind", "start", "end", "all_day")
# What may be shown of an external event that is not masked for the viewer.
_DETAIL_KEYS = ("kind", "start", "end", "all_day", "summary", "description", "location",
                "organizer", "attendees", "source", "busy_status", "status", "response",
                "remote_id", "calendar_id")


class Viewer(Protocol):
    """Whoever an output is for (``calsync.api.auth.Principal`` is one)."""

    def can_see_details_of(self, owner_id: str) -> bool: ...


@dataclass(frozen=True)
class Operator:
    """The person at the ``calsync`` command line: treated as a non-owner (masked), since
    the CLI has no notion of which user is typing."""

    name: str = "cli"

    def can_see_details_of(self, owner_id: str) -> bool:
        return False


OPERATOR = Operator()


def is_masked_for(view: dict[str, Any], viewer: Viewer) -> bool:
    """True when ``viewer`` must not see the details of this view."""
    if view.get("kind") != EXTERNAL:
        return False
    owner = view.get("owner_id")
    if owner is not None and viewer.can_see_details_of(str(owner)):
        return False
    # Unknown privacy flags count as private: fail closed.
    return bool(view.get("private_mode", True)) or bool(view.get("private_at_source", True))


def mask_for_viewer(view: dict[str, Any], viewer: Viewer) -> dict[str, Any]:
    """What ``viewer`` may see of ``view``. Returns a new dict; ``view`` is not changed.

    Masked external events come back as ``{"kind": "external", "start", "end",
    "all_day", "summary": "Busy", "source": "external calendar", "masked": True}``.
    """
    if view.get("kind") != EXTERNAL:
        return {k: v for k, v in view.items() if k not in _BOOKKEEPING}
    if is_masked_for(view, viewer):
        out = {k: view[k] for k in _MASKED_KEYS if k in view}
        out.update(summary=MASKED_SUMMARY, source=MASKED_SOURCE, masked=True)
        return out
    out = {k: view[k] for k in _DETAIL_KEYS if k in view}
    out["masked"] = False
    return out


def guard_sql_logging(echo: bool = False) -> None:
    """Keep SQL statements and result rows (which hold event details) out of logs."""
    if not echo:
        logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
        logging.getLogger("sqlalchemy.pool").setLevel(logging.WARNING)


guard_sql_logging()
