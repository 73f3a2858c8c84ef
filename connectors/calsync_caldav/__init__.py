"""calsync's CalDAV and iCloud connector (entry points ``caldav`` and ``icloud``).

Modules: ``factory`` (entry-point targets), ``connector`` (pull/push over CalDAV),
``discovery`` (principal and home set), ``transport`` (HTTP and error mapping),
``davxml`` (WebDAV XML), ``parse`` (ICS -> RemoteEvent, pure), ``render``
(OutgoingEvent -> ICS, pure), ``timezones`` (TZIDs nobody defined).
"""

from __future__ import annotations

from calsync_caldav.factory import CaldavFactory, IcloudFactory

__all__ = ["CaldavFactory", "IcloudFactory"]
