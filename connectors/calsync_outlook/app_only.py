"""App-only access to a Microsoft 365 tenant (client credentials, no user sign-in).

An admin consents once to the application permission ``Calendars.ReadWrite`` for calsync's
app registration; calsync then reaches every mailbox of the tenant through
``/users/{email}/…`` with an app token from msal's ``ConfidentialClientApplication``
(client secret, or a certificate: ``{"private_key": PEM, "public_certificate": PEM}``,
which msal names by its SHA-256 thumbprint).

:class:`AppTokens` is one tenant's token: cached in this process and shared by the
connectors of all its users (:func:`tenant_tokens`), so 200 technicians cost one token
request, and a 401 refreshes it once for all of them (``stale`` names the rejected token;
whoever comes second gets the fresh one). App tokens have no refresh token; msal asks for
a new one when the cached one is near expiry.

Stored credentials (sealed by the core): the tenant row holds ``{"mode": "app_only",
"tenant", "client_id", "client_secret" | "certificate"}``; each user's connection adds only
``{"mode": "app_only"}`` (the core merges the tenant's in when it builds the connector).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import Any
from urllib.parse import urlparse

import msal

from calsync.errors import NeedsReauth, ProviderError, ProviderUnavailable, UserError

log = logging.getLogger("calsync.outlook.app_only")

APP_SCOPES = ["https://graph.microsoft.com/.default"]
MODE = "app_only"
_MICROSOFT_HOSTS = {"login.microsoftonline.com", "login.microsoftonline.us",
                    "login.chinacloudapi.cn", "login.microsoft.com"}
_REFUSED = {"invalid_client", "unauthorized_client", "invalid_request"}


def is_app_only(credentials: dict[str, Any]) -> bool:
    return credentials.get("mode") == MODE


def admin_advice(tenant: str) -> str:
    return (f"Microsoft 365 tenant {tenant}: the app's credentials were refused; renew the "
            f"client secret or certificate in Azure and run `calsync connect outlook-tenant "
            f"--tenant {tenant} …` again")


class AppTokens:
    """One tenant's app-only access token (thread-safe)."""

    def __init__(self, authority: str, client_id: str, credential: Any, tenant: str,
                 http_client: Any = None) -> None:
        host = urlparse(authority).hostname or ""
        kwargs: dict[str, Any] = {"authority": authority, "token_cache": msal.TokenCache()}
        if http_client is not None:
            kwargs["http_client"] = http_client
        if host not in _MICROSOFT_HOSTS:
            kwargs.update(instance_discovery=False, validate_authority=False)
        try:
            self._app = msal.ConfidentialClientApplication(
                client_id, client_credential=credential, **kwargs)
        except ValueError as exc:
            raise UserError(f"Microsoft 365 tenant {tenant}: {exc}") from exc
        except OSError as exc:
            raise ProviderUnavailable(f"Microsoft sign-in service unreachable: "
                                      f"{type(exc).__name__}") from exc
        self.tenant = tenant
        self._lock = threading.Lock()
        self._token: str | None = None
        self.issued = 0  # tokens obtained from the identity service (not from the cache)

    def _drop_cached(self) -> None:
        cache = self._app.token_cache
        for entry in list(cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
            cache.remove_at(entry)

    def token(self, force_refresh: bool = False, stale: str | None = None) -> str:
        """The tenant's app token; after a 401 (``force_refresh`` with the rejected
        ``stale`` token) a new one, fetched once however many connectors ask."""
        with self._lock:
            if force_refresh and stale is not None and self._token not in (None, stale):
                return self._token
            if force_refresh:
                self._drop_cached()
            try:
                result = self._app.acquire_token_for_client(scopes=APP_SCOPES)
            except OSError as exc:
                raise ProviderUnavailable(f"Microsoft sign-in service unreachable: "
                                          f"{type(exc).__name__}") from exc
            if result and "access_token" in result:
                if result.get("token_source") != "cache":
                    self.issued += 1
                self._token = str(result["access_token"])
                return self._token
            error = str((result or {}).get("error") or "no_token")
            code = str((result or {}).get("error_description") or "").split(":")[0]
            log.warning("app-only token for tenant %s refused: %s %s", self.tenant, error,
                        code)
            if error in _REFUSED:
                raise NeedsReauth(f"{admin_advice(self.tenant)} ({error} {code})".strip())
            if error == "invalid_scope":
                raise ProviderError(f"Microsoft 365 tenant {self.tenant}: the app-only scope "
                                    f"was refused ({code})")
            raise ProviderUnavailable(f"Microsoft sign-in service error for tenant "
                                      f"{self.tenant}: {error}")

    def changed_credentials(self) -> dict[str, Any] | None:
        return None  # nothing per user to store back


_tenants: dict[str, AppTokens] = {}
_tenants_lock = threading.Lock()


def _credential(creds: dict[str, Any]) -> Any:
    cert = creds.get("certificate")
    if isinstance(cert, dict) and cert.get("private_key") and (
            cert.get("public_certificate") or cert.get("thumbprint")):
        return {k: str(v) for k, v in cert.items()
                if k in ("private_key", "public_certificate", "thumbprint")}
    secret = creds.get("client_secret")
    if not secret:
        raise NeedsReauth("Microsoft 365 tenant connection has no client secret or certificate "
                          "stored; run `calsync connect outlook-tenant` again")
    return str(secret)


def tenant_tokens(settings: Any, creds: dict[str, Any], http_client: Any = None) -> AppTokens:
    """The shared :class:`AppTokens` of the tenant in ``creds`` (one per tenant, client id
    and credential in this process)."""
    tenant = str(creds.get("tenant") or "")
    client_id = str(creds.get("client_id") or "")
    if not tenant or not client_id:
        raise NeedsReauth("Microsoft 365 tenant connection is missing its tenant or client "
                          "id; run `calsync connect outlook-tenant` again")
    credential = _credential(creds)
    authority = f"{settings.outlook.authority_host.rstrip('/')}/{tenant}"
    fingerprint = hashlib.sha256(repr((authority, client_id, credential)).encode()).hexdigest()
    with _tenants_lock:
        tokens = _tenants.get(fingerprint)
        if tokens is None:
            tokens = AppTokens(authority, client_id, credential, tenant, http_client)
            _tenants[fingerprint] = tokens
        return tokens


def forget_tenant_tokens() -> None:
    """Drop every cached tenant token (a removed tenant, tests)."""
    with _tenants_lock:
        _tenants.clear()
