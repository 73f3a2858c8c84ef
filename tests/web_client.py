"""Helpers for driving the pages under /app/ with a TestClient: sign in by login link,
read the CSRF token and the forms of a page."""

from __future__ import annotations

import html
import re
from typing import Any
from urllib.parse import urlsplit

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def login_link(client: Any, admin_token: str, body: dict[str, Any]) -> str:
    r = client.post("/api/login-links", json=body,
                    headers={"Authorization": f"Bearer {admin_token}"})
    assert r.status_code == 201, r.text
    return str(r.json()["url"])


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def sign_in(client: Any, admin_token: str, body: dict[str, Any]) -> Any:
    """Redeem a fresh link in ``client`` (its cookie jar keeps the session); returns the
    page the link lands on."""
    r = client.get(path_of(login_link(client, admin_token, body)))
    assert r.status_code == 200, r.text
    return r


def csrf_of(page: str) -> str:
    m = CSRF.search(page)
    assert m is not None, "no CSRF token on the page"
    return html.unescape(m[1])


def forms(page: str, action: str) -> list[dict[str, str]]:
    """The hidden/visible inputs (name -> value) of every form posting to ``action``."""
    out = []
    for body in re.findall(rf'<form method="post" action="{re.escape(action)}".*?</form>',
                           page, re.S):
        out.append({k: html.unescape(v)
                    for k, v in re.findall(r'name="([\w]+)" value="([^"]*)"', body)})
    return out
