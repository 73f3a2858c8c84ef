"""Sign-in and tokens through msal: device code flow, authorization code + PKCE, refresh.

The stored credential is msal's ``SerializableTokenCache`` (serialised JSON; the core
encrypts it) plus the home account id and which client kind obtained it (public clients
must refresh without a secret). msal gets its HTTP client injected (``http_client=`` a
requests.Session-like object); against a non-Microsoft authority host (the emulator)
instance discovery is off.

msal adds ``offline_access openid profile`` itself (it refuses them in ``scopes``), so the
scopes sent are ``Calendars.ReadWrite User.Read offline_access openid profile``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urlparse

import msal

from calsync.errors import NeedsReauth, ProviderUnavailable, UserError

log = logging.getLogger("calsync.outlook.auth")

SCOPES = ["Calendars.ReadWrite", "User.Read"]  # + offline_access (added by msal)
CREDENTIALS_VERSION = 1
_MICROSOFT_HOSTS = {"login.microsoftonline.com", "login.microsoftonline.us",
                    "login.chinacloudapi.cn", "login.microsoft.com"}
# msal's cache of OpenID discovery answers, shared by every app of this process, so building
# a connector does not cost a discovery request each time.
_HTTP_CACHE: dict[Any, Any] = {}
REAUTH_ERRORS = {"invalid_grant", "interaction_required", "consent_required",
                 "login_required", "invalid_client", "unauthorized_client"}


def reauth_message(account: str) -> str:
    who = f" for {account}" if account else ""
    return (f"Outlook sign-in{who} was revoked or has expired; reconnect with "
            f"`calsync connect outlook USER`")


def authority_url(settings: Any) -> str:
    return f"{settings.outlook.authority_host.rstrip('/')}/{settings.outlook.tenant}"


def build_app(settings: Any, http_client: Any, cache: msal.SerializableTokenCache | None,
              confidential: bool = False) -> msal.ClientApplication:
    """A msal application for ``settings.outlook`` with the injected HTTP client."""
    cfg = settings.outlook
    if not cfg.client_id:
        raise UserError("outlook.client_id is not set: register an app in Azure and put its "
                        "client id in the [outlook] table (see docs/connectors/outlook.md)")
    host = urlparse(cfg.authority_host).hostname or ""
    kwargs: dict[str, Any] = {"authority": authority_url(settings), "token_cache": cache,
                              "http_client": http_client, "http_cache": _HTTP_CACHE}
    if host not in _MICROSOFT_HOSTS:
        kwargs.update(instance_discovery=False, validate_authority=False)
    try:
        if confidential:
            return msal.ConfidentialClientApplication(
                cfg.client_id, client_credential=cfg.client_secret, **kwargs)
        return msal.PublicClientApplication(cfg.client_id, **kwargs)
    except ValueError as exc:  # bad authority, discovery failure
        raise UserError(f"outlook.authority_host/tenant: {exc}") from exc
    except OSError as exc:
        raise ProviderUnavailable(f"Microsoft sign-in service unreachable: "
                                  f"{type(exc).__name__}") from exc


def _check(result: dict[str, Any] | None, what: str) -> dict[str, Any]:
    if not result:
        raise UserError(f"Outlook {what} failed: no answer from the sign-in service")
    if "access_token" not in result:
        error = result.get("error", "unknown_error")
        desc = (result.get("error_description") or "").splitlines()[0][:200]
        raise UserError(f"Outlook {what} failed: {error}: {desc}")
    return result


def credentials_from(cache: msal.SerializableTokenCache, result: dict[str, Any],
                     confidential: bool) -> dict[str, Any]:
    claims = result.get("id_token_claims") or {}
    home = None
    info = result.get("client_info")
    if isinstance(info, dict) and info.get("uid"):
        home = f"{info['uid']}.{info['utid']}"
    return {"v": CREDENTIALS_VERSION, "token_cache": cache.serialize(),
            "home_account_id": home, "username": claims.get("preferred_username"),
            "client": "confidential" if confidential else "public"}


def run_device_flow(settings: Any, http_client: Any,
                    prompt: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The device code flow: prompt shows the message; returns (credentials, token result)."""
    cache = msal.SerializableTokenCache()
    app = build_app(settings, http_client, cache)
    assert isinstance(app, msal.PublicClientApplication)
    flow = app.initiate_device_flow(scopes=SCOPES)
    if "user_code" not in flow:
        raise UserError(f"Outlook device sign-in could not start: {flow.get('error')}: "
                        f"{(flow.get('error_description') or '')[:200]} (is 'Allow public "
                        f"client flows' on in the Azure app registration?)")
    prompt(flow.get("message") or f"Open {flow['verification_uri']} and enter the code "
                                  f"{flow['user_code']}")
    result = _check(app.acquire_token_by_device_flow(flow), "device sign-in")
    return credentials_from(cache, result, confidential=False), result


def auth_code_url(settings: Any, http_client: Any, state: str, code_challenge: str,
                  redirect_uri: str) -> str:
    """The authorize URL with the core's own state and PKCE challenge (S256); the answer
    comes back as a form POST (``response_mode=form_post``). The endpoint is the one msal
    found through the tenant's OpenID configuration."""
    app = build_app(settings, http_client, None, confidential=bool(settings.outlook.client_secret))
    params = {"client_id": settings.outlook.client_id, "response_type": "code",
              "redirect_uri": redirect_uri,
              "scope": " ".join([*SCOPES, "offline_access", "openid", "profile"]),
              "state": state, "code_challenge": code_challenge,
              "code_challenge_method": "S256", "response_mode": "form_post",
              "prompt": "select_account"}
    endpoint = app.authority.authorization_endpoint
    return f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(params)}"


def redeem_code(settings: Any, http_client: Any, code: str, code_verifier: str,
                redirect_uri: str) -> tuple[dict[str, Any], dict[str, Any]]:
    confidential = bool(settings.outlook.client_secret)
    cache = msal.SerializableTokenCache()
    app = build_app(settings, http_client, cache, confidential=confidential)
    result = _check(app.acquire_token_by_authorization_code(
        code, SCOPES, redirect_uri=redirect_uri, data={"code_verifier": code_verifier}),
        "sign-in")
    return credentials_from(cache, result, confidential), result


class TokenSource:
    """Access tokens for one connection, refreshed by msal from the stored cache.

    After a refusal (revoked/expired grant) it stays dead: every later call raises the same
    NeedsReauth without asking the identity service again (no retry storm)."""

    def __init__(self, settings: Any, http_client: Any, credentials: dict[str, Any],
                 account_hint: str = "") -> None:
        if credentials.get("v") != CREDENTIALS_VERSION or "token_cache" not in credentials:
            raise NeedsReauth(reauth_message(account_hint) + " (stored credentials are in an "
                                                             "unknown format)")
        self._settings = settings
        self._creds = dict(credentials)
        self.cache = msal.SerializableTokenCache()
        self.cache.deserialize(credentials["token_cache"])
        self._app = build_app(settings, http_client, self.cache,
                              confidential=credentials.get("client") == "confidential")
        self._account_hint = account_hint or credentials.get("username") or ""
        self._lock = threading.Lock()
        self._dead: NeedsReauth | None = None
        self._token: str | None = None

    def _account(self) -> dict[str, Any] | None:
        accounts = self._app.get_accounts()
        home = self._creds.get("home_account_id")
        for acc in accounts:
            if home is None or acc.get("home_account_id") == home:
                return dict(acc)
        return None

    def token(self, force_refresh: bool = False, stale: str | None = None) -> str:
        """An access token. ``force_refresh`` after a 401 (``stale`` is the rejected one:
        when another thread already refreshed, its newer token is returned)."""
        with self._lock:
            if self._dead is not None:
                raise self._dead
            if force_refresh and stale is not None and self._token not in (None, stale):
                return self._token
            account = self._account()
            if account is None:
                self._dead = NeedsReauth(reauth_message(self._account_hint))
                raise self._dead
            try:
                result = self._app.acquire_token_silent_with_error(
                    SCOPES, account, force_refresh=force_refresh)
            except OSError as exc:
                raise ProviderUnavailable(f"Microsoft sign-in service unreachable: "
                                          f"{type(exc).__name__}") from exc
            if result and "access_token" in result:
                self._token = str(result["access_token"])
                return self._token
            error = (result or {}).get("error", "no_refresh_token")
            if result is None or error in REAUTH_ERRORS:
                log.warning("outlook token refresh refused (%s) for a connection; "
                            "needs re-auth", error)
                self._dead = NeedsReauth(reauth_message(self._account_hint), error=error)
                raise self._dead
            raise ProviderUnavailable(f"Microsoft sign-in service error: {error}")

    def changed_credentials(self) -> dict[str, Any] | None:
        """The credentials to store when msal's cache changed since the last call."""
        with self._lock:
            if not self.cache.has_state_changed:
                return None
            self.cache.has_state_changed = False
            self._creds["token_cache"] = self.cache.serialize()
            return dict(self._creds)
