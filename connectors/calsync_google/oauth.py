"""Signing in to Google: the device flow (CLI) and the authorization-code flow with PKCE
(web), over the same injected ``httplib2.Http`` the API calls use.

Device flow ("OAuth 2.0 for TV and Limited-Input Device Applications"): POST
``device_auth_uri`` (client_id, scope) -> ``device_code``, ``user_code``,
``verification_url``, ``interval``, ``expires_in``; then poll ``token_uri`` with
``grant_type=urn:ietf:params:oauth:grant-type:device_code``: ``authorization_pending`` ->
wait ``interval``; ``slow_down`` -> interval + 5 s; ``access_denied``/``expired_token`` ->
UserError. The sleep is injected (``ctx.options["sleep"]``).

Web flow: ``auth_uri`` with ``code_challenge`` (S256), ``access_type=offline`` and
``prompt=consent`` (so Google returns a refresh token), then the code is exchanged at
``token_uri`` with the ``code_verifier``.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import httplib2

from calsync.errors import ProviderUnavailable, UserError
from calsync_google.client import SCOPE

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def _post_form(http: httplib2.Http, url: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    try:
        resp, content = http.request(url, "POST", body=urlencode(form), headers={
            "Content-Type": "application/x-www-form-urlencoded"})
    except (httplib2.HttpLib2Error, OSError) as exc:
        raise ProviderUnavailable(f"Google sign-in at {url} failed: {type(exc).__name__}; "
                                  "try again") from exc
    try:
        data = json.loads(content.decode("utf-8")) if content else {}
    except ValueError:
        data = {}
    return int(resp.status), data if isinstance(data, dict) else {}


def _require_client(settings: Any) -> None:
    if not settings.google.client_id:
        raise UserError("google.client_id is not set: create an OAuth client in Google Cloud "
                        "(see docs/connectors/google.md) and put it in the [google] table")


def token_result(data: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    """What calsync stores from a token endpoint answer."""
    if not data.get("refresh_token"):
        raise UserError("Google returned no refresh token; sign in again (the consent "
                        "screen must allow offline access)")
    expiry = now + dt.timedelta(seconds=int(data.get("expires_in", 3600)))
    return {"token": data.get("access_token"), "refresh_token": data["refresh_token"],
            "expiry": expiry.isoformat(), "scopes": [SCOPE], "version": 1}


def run_device_flow(settings: Any, http: httplib2.Http, prompt: Callable[[str], None],
                    sleep: Callable[[float], None] = time.sleep,
                    now: Callable[[], dt.datetime] | None = None) -> dict[str, Any]:
    """Run the device flow; returns the credentials to store."""
    _require_client(settings)
    clock = now or (lambda: dt.datetime.now(dt.timezone.utc))
    status, data = _post_form(http, settings.google.device_auth_uri,
                              {"client_id": settings.google.client_id, "scope": SCOPE})
    if data.get("error") == "invalid_scope":
        start = f"{settings.server.base_url.rstrip('/')}/oauth/google/start?user_id=USER"
        raise UserError("Google does not allow the Calendar scope on the device (TV) sign-in "
                        f"for this client ({data.get('error_description', 'invalid_scope')}); "
                        f"connect the user through the web sign-in instead: {start}")
    if status != 200 or "device_code" not in data:
        raise UserError(f"Google refused the device sign-in ({data.get('error', status)}); "
                        "check google.client_id (an OAuth client of type 'TVs and Limited "
                        "Input devices')")
    url = data.get("verification_url") or data.get("verification_uri")
    prompt(f"To connect Google Calendar, open {url} and enter the code {data['user_code']}")
    interval = float(data.get("interval", 5))
    remaining = float(data.get("expires_in", 1800))
    form = {"client_id": settings.google.client_id,
            "client_secret": settings.google.client_secret,
            "device_code": data["device_code"], "grant_type": DEVICE_GRANT}
    while remaining > 0:
        sleep(interval)
        remaining -= interval
        status, answer = _post_form(http, settings.google.token_uri, form)
        error = answer.get("error")
        if status == 200 and answer.get("access_token"):
            return token_result(answer, clock())
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += 5
            continue
        if error == "access_denied":
            raise UserError("the Google sign-in was declined")
        if error == "expired_token":
            break
        raise UserError(f"Google sign-in failed: {error or status} "
                        f"({answer.get('error_description', '')})")
    raise UserError("the Google sign-in code expired before it was entered; run the "
                    "command again")


def authorization_url(settings: Any, state: str, code_challenge: str,
                      redirect_uri: str) -> str:
    _require_client(settings)
    query = {"client_id": settings.google.client_id, "redirect_uri": redirect_uri,
             "response_type": "code", "scope": SCOPE, "state": state,
             "code_challenge": code_challenge, "code_challenge_method": "S256",
             "access_type": "offline", "prompt": "consent", "include_granted_scopes": "true"}
    sep = "&" if "?" in settings.google.auth_uri else "?"
    return str(settings.google.auth_uri) + sep + urlencode(query)


def exchange_code(settings: Any, http: httplib2.Http, code: str, code_verifier: str,
                  redirect_uri: str, now: dt.datetime) -> dict[str, Any]:
    _require_client(settings)
    status, data = _post_form(http, settings.google.token_uri, {
        "client_id": settings.google.client_id, "client_secret": settings.google.client_secret,
        "code": code, "code_verifier": code_verifier, "redirect_uri": redirect_uri,
        "grant_type": "authorization_code"})
    if status != 200 or not data.get("access_token"):
        raise UserError(f"Google did not accept the sign-in code ({data.get('error', status)}); "
                        "start the sign-in again")
    return token_result(data, now)


def revoke_uri(settings: Any) -> str:
    """Google's revocation endpoint, beside ``token_uri``
    (``https://oauth2.googleapis.com/revoke``)."""
    return str(settings.google.token_uri).rsplit("/", 1)[0] + "/revoke"


def revoke(settings: Any, http: httplib2.Http, token: str) -> bool:
    """Revoke a refresh (or access) token: "Revoking a token" of Google's OAuth 2.0 for web
    server apps, a form POST answered 200. A 400 means the token is already expired or
    revoked (False: nothing was left to revoke); anything else raises ProviderUnavailable."""
    status, data = _post_form(http, revoke_uri(settings), {"token": token})
    if status == 200:
        return True
    if status == 400:
        return False
    raise ProviderUnavailable(f"Google did not revoke the sign-in (HTTP {status} "
                              f"{data.get('error', '')}); it expires unused in any case")

