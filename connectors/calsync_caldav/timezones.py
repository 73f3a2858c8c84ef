"""TZID resolution now lives in the core (:mod:`calsync.ical.timezones`); this name stays
for existing imports."""

from __future__ import annotations

from calsync.ical.timezones import resolve_tzid

__all__ = ["resolve_tzid"]
