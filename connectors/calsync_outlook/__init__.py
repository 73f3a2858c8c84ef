"""calsync's Microsoft Outlook connector: msal sign-in and Microsoft Graph calendars.

Entry point ``outlook = "calsync_outlook:OutlookFactory"`` in the ``calsync.connectors``
group. Modules: ``auth`` (msal: device code, auth code + PKCE, refresh), ``graph`` (HTTP edge:
retries, throttling, concurrency, $batch), ``mapping`` (Graph JSON <-> calsync shapes),
``timezones`` (Windows <-> IANA), ``connector`` (the Connector), ``factory`` (the factory and
the optional hooks the core calls by name).
"""

from __future__ import annotations

from calsync_outlook.factory import OutlookFactory, OutlookHttp

__all__ = ["OutlookFactory", "OutlookHttp"]
