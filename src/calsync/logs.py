"""Log set-up: readable text or one JSON object a line (``[logging] format``).

Lines logged while a connection syncs carry its public id (and provider), read from
:mod:`calsync.runcontext`, so one sync's lines can be picked out of a worker running
many at once: ``[con_…]`` before the message in text, ``"connection"`` in JSON. Messages
are the same in both formats (they name calendars and remote ids, never event details).
"""

from __future__ import annotations

import datetime as dt
import json
import logging

from calsync.runcontext import CONNECTION, PROVIDER

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(connection_tag)s%(message)s"


class RunContextFilter(logging.Filter):
    """Adds ``connection``, ``provider`` and ``connection_tag`` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        connection = CONNECTION.get()
        record.connection = connection
        record.provider = PROVIDER.get()
        record.connection_tag = f"[{connection}] " if connection else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts (UTC, ISO 8601), level, logger, message, connection,
    provider, and exc (the formatted traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
            .isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        connection = getattr(record, "connection", None) or CONNECTION.get()
        if connection:
            out["connection"] = connection
            out["provider"] = getattr(record, "provider", None) or PROVIDER.get()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def setup(verbose: bool, fmt: str = "text") -> None:
    """Configure calsync's handler on the root logger for ``fmt`` (made on first use).
    Like ``logging.basicConfig``, it leaves logging alone when someone else (an embedding
    application, a test runner) has already put handlers on the root logger."""
    root = logging.getLogger()
    ours: list[logging.Handler] = [h for h in root.handlers
                                   if getattr(h, "calsync_handler", False)]
    if not ours:
        if root.handlers:
            return
        made = logging.StreamHandler()
        made.calsync_handler = True  # type: ignore[attr-defined]
        made.addFilter(RunContextFilter())
        root.addHandler(made)
        ours = [made]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for handler in ours:
        handler.setFormatter(JsonFormatter() if fmt == "json" else
                             logging.Formatter(TEXT_FORMAT))
