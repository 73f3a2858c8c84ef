"""Google Workspace domain-wide delegation: one service account, authorised once by the
Workspace admin for the Calendar scope, impersonates each user of the domain (google-auth's
``service_account.Credentials`` with ``subject`` = the user's e-mail). No user signs in.

Stored credentials (sealed by the core): the tenant row holds ``{"mode": "domain_wide",
"domain", "service_account_key": <the JSON key file>}``; each user's connection adds only
``{"mode": "domain_wide"}``. Tokens are per user (Google issues one per subject), obtained
with a signed JWT and never stored: there is no refresh token. Each process keeps a user's
credentials (and so their token, for its hour) between syncs, so a user on a 5-minute cycle
costs one grant an hour, not one a sync.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from typing import Any

from google.oauth2 import service_account

from calsync.errors import ProviderError, UserError
from calsync_google.client import SCOPE

MODE = "domain_wide"
_KEY_FIELDS = ("type", "client_email", "private_key", "token_uri")


def is_domain_wide(credentials: dict[str, Any]) -> bool:
    return credentials.get("mode") == MODE


def check_key(key: Any, where: str = "--service-account-key-file") -> dict[str, Any]:
    """The service-account key file's content, or UserError naming what is wrong (never
    echoing the key)."""
    if not isinstance(key, dict):
        raise UserError(f"{where}: not a JSON object (expected the service account's key file)")
    missing = [f for f in _KEY_FIELDS if not key.get(f)]
    if missing:
        raise UserError(f"{where}: the key file lacks {', '.join(missing)} (download a JSON "
                        f"key of the service account in Google Cloud)")
    if key.get("type") != "service_account":
        raise UserError(f"{where}: type is {str(key.get('type'))[:40]!r}, expected "
                        f"'service_account'")
    return key


KEPT_USERS = 20_000  # users whose credentials a process keeps (least recently used go)
_kept: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
_kept_lock = threading.Lock()


def impersonating(creds: dict[str, Any], subject: str) -> Any:
    """Credentials acting for ``subject``: the same object for every sync of that user with
    the same key (google-auth refreshes its token when it expires or is refused), shared by
    the threads that use it (:class:`~calsync_google.client.SharedCredentials`)."""
    from calsync_google.client import SharedCredentials

    key = check_key(creds.get("service_account_key"), "stored service-account key")
    # the whole key file: a new key (or token URI) is new credentials
    which = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    kept = (str(key.get("client_email")), which, subject.lower())
    with _kept_lock:
        found = _kept.get(kept)
        if found is not None:
            _kept.move_to_end(kept)
            return found
    try:
        made = SharedCredentials(service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            key, scopes=[SCOPE], subject=subject))
    except (ValueError, KeyError) as exc:
        raise UserError("the stored service-account key cannot be read; run `calsync connect "
                        "google-domain` again with a new key") from exc
    with _kept_lock:
        made = _kept.setdefault(kept, made)
        while len(_kept) > KEPT_USERS:
            _kept.popitem(last=False)
    return made


def forget_impersonations() -> None:
    """Drop every kept user's credentials (tests; a key withdrawn by the admin)."""
    with _kept_lock:
        _kept.clear()


class NotAuthorised(ProviderError):
    """The service account is not authorised for the Calendar scope at all (every user of
    the domain is refused alike): the admin's set-up, not one user's."""


def refused(account: str, domain: str, client_id: str, error: str) -> ProviderError:
    """What the Workspace admin must do when Google refuses to let the service account act
    for ``account``."""
    if error == "unauthorized_client":
        return NotAuthorised(
            f"Google Workspace refused to act for {account}: the domain-wide delegation does "
            f"not cover the Calendar scope: a Workspace admin must authorise client id "
            f"{client_id} for https://www.googleapis.com/auth/calendar (Admin console > "
            f"Security > API controls > Domain-wide delegation)")
    else:
        why = (f"Google does not know {account} in the delegated domain {domain} "
               f"({error}): the user must be a member of the Workspace domain, or should not "
               f"be synced through it")
    return ProviderError(f"Google Workspace refused to act for {account}: {why}")
