"""A whole Google Workspace domain through domain-wide delegation (DESIGN 6.1), through the
real google-auth (service-account JWT grants with ``sub``) against the Google emulator, on
SQLite and PostgreSQL: every user of the domain connected and synced with no sign-in, a
user the delegation does not cover reported on their own connection, the key sealed at
rest, and a delegation that is not authorised refused in one line."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from calsync.db.models import Connection, Tenant
from calsync.db.session import Database
from calsync.schedule.store import import_document
from calsync_google.delegation import forget_impersonations
from tests.conftest import SECRET
from tests.emulators.google import GoogleEmulator

DOMAIN = "example.org"
MEMBERS = [f"tech{i}@{DOMAIN}" for i in range(1, 6)]
GHOST = f"ghost@{DOMAIN}"  # a calsync user, not a member of the Workspace


@pytest.fixture
def google() -> Iterator[GoogleEmulator]:
    with GoogleEmulator() as emulator:
        for email in MEMBERS:
            emulator.add_account(email)
        yield emulator
    forget_impersonations()  # tokens of this emulator's users


@pytest.fixture
def workspace(db: Database, google: GoogleEmulator, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Database, Path, Any]]:
    users = [{"id": e.split("@")[0], "name": e.split("@")[0], "email": e,
              "timezone": "America/Chicago"} for e in [*MEMBERS, GHOST]]
    jobs = [{"id": f"j-{u['id']}", "title": "Repair", "job_type": "Repair",
             "account": "Acme", "start": "2030-01-07T15:00:00+00:00",
             "end": "2030-01-07T16:00:00+00:00", "assignees": [u["id"]],
             "status": "scheduled"} for u in users]
    assert import_document(db, {"users": users, "jobs": jobs}).ok
    key = google.add_service_account()
    key_file = tmp_path / "sa-key.json"
    key_file.write_text(json.dumps(key))
    values = google.settings_values()
    config = tmp_path / "calsync.toml"
    config.write_text("[google]\n" + "".join(f'{k} = "{v}"\n' for k, v in values.items())
                      + "[sync]\nfuture_months = 60\n")
    monkeypatch.setenv("CALSYNC_CONFIG", str(config))
    monkeypatch.setenv("CALSYNC_DATABASE_URL", db.url)
    monkeypatch.setenv("CALSYNC_SECRET_KEY", SECRET)
    yield db, key_file, key


def calsync(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
            *args: str) -> tuple[int, str, str]:
    from calsync.cli import main

    monkeypatch.setattr(sys, "argv", ["calsync", *args])
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def connect_domain(google: GoogleEmulator, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str], key_file: Path, key: Any
                   ) -> tuple[Any, str]:
    """The admin authorises the service account, then `calsync connect google-domain`;
    its JSON summary and what it printed."""
    google.delegate(key["client_id"], DOMAIN)
    code, out, err = calsync(monkeypatch, capsys, "connect", "google-domain", "--domain",
                             DOMAIN, "--service-account-key-file", str(key_file), "--json")
    assert code == 0, err
    return json.loads(out), out


def test_every_user_of_the_domain_is_impersonated_and_synced(
        workspace: tuple[Database, Path, Any], google: GoogleEmulator,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    db, key_file, key = workspace
    summary, printed = connect_domain(google, monkeypatch, capsys, key_file, key)
    assert summary["matched"] == len(MEMBERS) + 1 and summary["connected"] == len(MEMBERS)
    [refused] = summary["refused"]
    assert refused["user"] == "ghost" and "does not know" in refused["error"]
    assert summary["synced"] == {"ok": len(MEMBERS), "failed": 0}
    assert key["private_key"] not in printed
    # each user's own (primary) calendar got their job, written as that user
    for email in MEMBERS:
        copies = [e for e in google.events(email).values() if e.get("status") != "cancelled"]
        assert [e["summary"] for e in copies] == ["Repair: Acme"]
    # one signed JWT grant per user, no refresh token and no user sign-in
    assert google.counts["token:urn:ietf:params:oauth:grant-type:jwt-bearer"] >= len(MEMBERS)
    assert google.counts["token:refresh_token"] == 0
    with db.read_session() as s:
        tenant = s.scalar(select(Tenant))
        assert tenant is not None and tenant.domains == [DOMAIN]
        assert b"PRIVATE KEY" not in tenant.credentials  # sealed at rest
        ghost = s.scalar(select(Connection).where(Connection.account == GHOST))
        assert ghost is not None and ghost.status == "error"
    code, out, _ = calsync(monkeypatch, capsys, "connections", "list", "--user", "ghost")
    assert code == 0 and "google (via org_" in out and "does not know" in out


def test_a_delegation_not_authorised_is_refused_in_one_line_and_stores_nothing(
        workspace: tuple[Database, Path, Any], google: GoogleEmulator,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    db, key_file, key = workspace
    code, out, err = calsync(monkeypatch, capsys, "connect", "google-domain", "--domain",
                             DOMAIN, "--service-account-key-file", str(key_file))
    assert code != 0 and "Domain-wide delegation" in err and key["client_id"] in err
    assert len(err.strip().splitlines()) == 1 and "PRIVATE" not in err
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"type": "service_account", "client_email": "x@y"}))
    code, out, err = calsync(monkeypatch, capsys, "connect", "google-domain", "--domain",
                             DOMAIN, "--service-account-key-file", str(broken))
    assert code != 0 and "lacks private_key, token_uri" in err
    with db.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Tenant)) == 0
        assert s.scalar(select(func.count()).select_from(Connection)) == 0


def test_a_users_token_serves_their_later_syncs_until_it_expires(
        workspace: tuple[Database, Path, Any], google: GoogleEmulator,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # 10,000 users on a 5-minute cycle would otherwise sign a JWT grant per user per sync
    # (33/s against Google's token endpoint) for tokens that live an hour
    db, key_file, key = workspace
    connect_domain(google, monkeypatch, capsys, key_file, key)
    grants = "token:urn:ietf:params:oauth:grant-type:jwt-bearer"
    after_connect = google.counts[grants]
    for _ in range(2):  # two more rounds of every member's sync
        for email in MEMBERS:
            code, out, err = calsync(monkeypatch, capsys, "sync", "--user",
                                     email.split("@")[0], "--json")
            assert code == 0, err
    assert google.counts[grants] == after_connect
    # once a token has expired, the next sync signs one new grant for that user
    google.access_tokens.clear()  # Google forgets them: the next call answers 401
    code, out, err = calsync(monkeypatch, capsys, "sync", "--user", "tech1", "--json")
    assert code == 0, err
    assert google.counts[grants] == after_connect + 1
