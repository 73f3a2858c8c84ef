"""A whole Microsoft 365 tenant in one command (DESIGN 6.1), through the real msal
(ConfidentialClientApplication, client credentials) against the Graph emulator, on SQLite
and PostgreSQL: 200 technicians (50 on SQLite) connected and synced without a sign-in of
their own, one mailbox refused by an application access policy reported on that user's
connection (the others go on), one app token for the whole tenant and one refresh when it
expires, users imported later, a fixed policy, a certificate, and removing the tenant."""

from __future__ import annotations

import datetime as dt
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from calsync.config import load_settings
from calsync.db.models import Calendar, Connection, Link, Tenant
from calsync.db.session import Database
from calsync.schedule.store import import_document
from calsync.secrets import CredentialBox
from calsync.sync.runner import run_due_syncs
from calsync_outlook.app_only import forget_tenant_tokens
from tests.conftest import SECRET
from tests.emulators.graph import GraphEmulator, registered_outlook

USERS = 200
REFUSED = "tech002@contoso.com"
APP_SECRET = "tenant-app-secret-9f8e7d"


@pytest.fixture
def graph() -> Iterator[GraphEmulator]:
    emulator = GraphEmulator().start()
    emulator.enable_app_only(secret=APP_SECRET)
    emulator.enforce_concurrency = True
    yield emulator
    emulator.stop()
    forget_tenant_tokens()


@pytest.fixture
def org_size(db: Database) -> int:
    """200 technicians on PostgreSQL (the database for scale); 50 on SQLite keeps the
    suite quick while running the same path."""
    return USERS if db.dialect == "postgresql" else 50


@pytest.fixture
def org(db: Database, graph: GraphEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        org_size: int) -> Iterator[Database]:
    """The tenant's technicians (``org_size``, parametrized by tests that need fewer) as
    calsync users with one job each, plus a user outside the tenant's domains."""
    size = org_size
    emails = [f"tech{i:03d}@contoso.com" for i in range(1, size + 1)]
    for email in emails:
        graph.add_mailbox(email)
    graph.access_policy = set(emails) - {REFUSED}
    users = [{"id": email.split("@")[0], "name": email.split("@")[0].title(),
              "email": email, "timezone": "America/Chicago"} for email in emails]
    users.append({"id": "outsider", "name": "Out", "email": "out@elsewhere.org",
                  "timezone": "UTC"})
    jobs = [{"id": f"j-{u['id']}", "title": "Install", "job_type": "Install",
             "account": "Acme", "start": "2030-01-07T15:00:00+00:00",
             "end": "2030-01-07T16:00:00+00:00", "assignees": [u["id"]],
             "status": "scheduled"} for u in users[:size]]
    report = import_document(db, {"users": users, "jobs": jobs})
    assert report.ok, report.errors
    config = tmp_path / "calsync.toml"
    config.write_text(f'[outlook]\nclient_id = "{graph.client_id}"\n'
                      f'authority_host = "{graph.base_url}"\ngraph_url = "{graph.graph_url}"\n'
                      f'[sync]\nfuture_months = 60\n')
    monkeypatch.setenv("CALSYNC_CONFIG", str(config))
    monkeypatch.setenv("CALSYNC_DATABASE_URL", db.url)
    monkeypatch.setenv("CALSYNC_SECRET_KEY", SECRET)
    with registered_outlook(graph):
        yield db


def calsync(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
            *args: str, stdin: str = "") -> tuple[int, str, str]:
    from calsync.cli import main

    monkeypatch.setattr(sys, "argv", ["calsync", *args])
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def connect(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
            graph: GraphEmulator, *extra: str) -> dict[str, object]:
    code, out, err = calsync(monkeypatch, capsys, "connect", "outlook-tenant", "--tenant",
                             graph.tenant, "--client-id", graph.client_id,
                             "--client-secret-stdin", "--json", *extra,
                             stdin=APP_SECRET + "\n")
    assert code == 0, err
    summary: dict[str, object] = json.loads(out)
    return summary


def test_a_whole_tenant_is_connected_and_synced_in_one_command(
        org: Database, graph: GraphEmulator, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], org_size: int) -> None:
    users = org_size
    summary = connect(monkeypatch, capsys, graph)
    assert summary["matched"] == users  # out@elsewhere.org is not in the tenant's domains
    assert summary["connected"] == users - 1
    [refused] = summary["refused"]  # type: ignore[misc]
    assert refused["user"] == "tech002"
    assert "application access policy" in refused["error"] and REFUSED in refused["error"]
    assert summary["synced"] == {"ok": users - 1, "failed": 0}
    # one app token for the whole tenant, no user sign-in at all
    assert graph.token_requests["client_credentials"] == 1
    assert graph.token_requests["total"] == 1
    for email in ("tech001@contoso.com", f"tech{users:03d}@contoso.com"):
        [copy] = graph.events_in(email, graph.calendar_id(email))
        assert copy["subject"].startswith("Install")
    assert graph.events_in(REFUSED, graph.calendar_id(REFUSED)) == []

    with org.read_session() as s:
        tenant = s.scalar(select(Tenant))
        assert tenant is not None and tenant.domains == ["contoso.com",
                                                         "contoso.onmicrosoft.com"]
        assert APP_SECRET.encode() not in tenant.credentials  # sealed
        conns = list(s.scalars(select(Connection).where(Connection.tenant_id == tenant.id)))
        assert len(conns) == users
        assert {c.status for c in conns if c.account != REFUSED} == {"ok"}
        # the secret is stored once, on the tenant; users' rows hold only the mode
        box = CredentialBox.from_settings(__import__("calsync.config").config.load_settings(
            env={"CALSYNC_SECRET_KEY": SECRET}))
        assert box.open(conns[0].credentials) == {"mode": "app_only"}
        assert s.scalar(select(func.count()).select_from(Link)) == users - 1

    code, out, _ = calsync(monkeypatch, capsys, "connections", "list", "--user", "tech002")
    assert code == 0 and "error" in out and "application access policy" in out
    assert "outlook (via org_" in out
    code, out, _ = calsync(monkeypatch, capsys, "tenants", "list")
    assert code == 0 and f"users: {users} (1 error, {users - 1} ok)" in out
    assert "tech002" in out and APP_SECRET not in out

    # a sync of the refused user keeps the error (it has no calendars to sync)
    code, out, err = calsync(monkeypatch, capsys, "sync", "--user", "tech002", "--json")
    assert code != 0 and json.loads(out)[0]["status"] == "error"
    assert "application access policy" in json.loads(out)[0]["error"]

    # the app token expires: one refresh for the tenant, not one per user
    graph.expire_access_tokens()
    for user in ("tech001", "tech003", "tech004"):
        code, out, err = calsync(monkeypatch, capsys, "sync", "--user", user, "--json")
        assert code == 0, err
        assert [r["status"] for r in json.loads(out)] == ["ok"]
    assert graph.token_requests["client_credentials"] == 2


@pytest.mark.parametrize("org_size", [6])
def test_users_imported_later_and_a_fixed_policy_are_onboarded_and_removal_disconnects(
        org: Database, graph: GraphEmulator, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    summary = connect(monkeypatch, capsys, graph, "--no-sync")
    assert summary["connected"] == 5 and summary["synced"] == {"ok": 0, "failed": 0}
    graph.add_mailbox("newhire@contoso.com")
    graph.access_policy = (graph.access_policy or set()) | {"newhire@contoso.com", REFUSED}
    report = import_document(org, {"users": [{"id": "newhire", "name": "New",
                                               "email": "newhire@contoso.com",
                                               "timezone": "UTC"}]})
    assert report.ok
    # the worker's next tick onboards the new user and the mailbox the admin let in, and
    # syncs them
    settings = load_settings()
    results = run_due_syncs(settings, org, dt.datetime.now(dt.timezone.utc))
    synced = {r.user_id: r.status for r in results}
    assert synced.get("newhire") == "ok" and synced.get("tech002") == "ok"
    [tech002_job] = graph.events_in(REFUSED, graph.calendar_id(REFUSED))  # synced now
    assert tech002_job["subject"].startswith("Install")
    code, out, err = calsync(monkeypatch, capsys, "tenants", "onboard", "--json")
    assert code == 0, err
    [onboarded] = json.loads(out)
    assert onboarded["connected"] == 0 and onboarded["already_connected"] == 7
    with org.read_session() as s:
        fixed = s.scalar(select(Connection).where(Connection.account == REFUSED))
        assert fixed is not None and fixed.status == "ok"
        assert s.scalar(select(func.count()).select_from(Calendar).where(
            Calendar.connection_id == fixed.id, Calendar.role == "primary")) == 1
        tenant = s.scalar(select(Tenant))
        assert tenant is not None
        public = tenant.public_id

    code, out, err = calsync(monkeypatch, capsys, "tenants", "remove", public)
    assert code == 0, err
    assert "7 user connection(s) disconnected" in out
    with org.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Connection)) == 0
        assert s.scalar(select(func.count()).select_from(Tenant)) == 0
        assert s.scalar(select(func.count()).select_from(Link)) == 0


@pytest.mark.parametrize("org_size", [2])
def test_refused_app_credentials_are_one_line_and_store_nothing(
        org: Database, graph: GraphEmulator, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = calsync(monkeypatch, capsys, "connect", "outlook-tenant", "--tenant",
                             graph.tenant, "--client-id", graph.client_id,
                             "--client-secret-stdin", stdin="wrong-secret\n")
    assert code != 0 and "credentials were refused" in err and "invalid_client" in err
    assert len(err.strip().splitlines()) == 1 and "wrong-secret" not in err
    graph.app_permissions = set()  # no admin consent
    forget_tenant_tokens()
    code, out, err = calsync(monkeypatch, capsys, "connect", "outlook-tenant", "--tenant",
                             graph.tenant, "--client-id", graph.client_id,
                             "--client-secret-stdin", stdin=APP_SECRET + "\n")
    assert code != 0 and "admin consent" in err
    with org.read_session() as s:
        assert s.scalar(select(func.count()).select_from(Tenant)) == 0
        assert s.scalar(select(func.count()).select_from(Connection)) == 0


@pytest.mark.parametrize("org_size", [3])
def test_a_certificate_instead_of_a_secret(
        org: Database, graph: GraphEmulator, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "calsync app")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365)).sign(key, hashes.SHA256()))
    graph.enable_app_only(secret=None)  # only the certificate is registered
    graph.add_app_certificate(cert.public_bytes(serialization.Encoding.PEM))
    pem = tmp_path / "app.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption())
                    + cert.public_bytes(serialization.Encoding.PEM))
    code, out, err = calsync(monkeypatch, capsys, "connect", "outlook-tenant", "--tenant",
                             graph.tenant, "--client-id", graph.client_id, "--certificate",
                             str(pem), "--json")
    assert code == 0, (err, graph.assertion_errors)
    summary = json.loads(out)
    assert summary["connected"] == 2 and summary["synced"] == {"ok": 2, "failed": 0}
    assert "PRIVATE KEY" not in out
    with org.read_session() as s:
        tenant = s.scalar(select(Tenant))
        assert tenant is not None and b"PRIVATE KEY" not in tenant.credentials
    code, out, err = calsync(monkeypatch, capsys, "connect", "outlook-tenant", "--tenant",
                             graph.tenant, "--client-id", graph.client_id, "--certificate",
                             str(tmp_path / "missing.pem"))
    assert code != 0 and "cannot read it" in err


@pytest.mark.parametrize("org_size", [3])
def test_a_disconnected_user_is_not_connected_again_until_taken_back(
        org: Database, graph: GraphEmulator, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # tech002 is refused by the access policy: tech001 and tech003 connect and sync
    summary = connect(monkeypatch, capsys, graph, "--no-sync")
    assert summary["connected"] == 2
    with org.read_session() as s:
        mine = s.scalar(select(Connection.public_id).where(Connection.user_id == "tech001"))
    code, out, err = calsync(monkeypatch, capsys, "connections", "disconnect", str(mine))
    assert code == 0, err

    # the worker's next tick (and `tenants onboard`) leave the disconnected user out
    forget_onboard_ticks()
    run_due_syncs(load_settings(), org, dt.datetime.now(dt.timezone.utc))
    code, out, err = calsync(monkeypatch, capsys, "tenants", "onboard", "--json")
    assert code == 0, err
    [report] = json.loads(out)
    assert report["connected"] == 0 and report["left_out"] == ["tech001"]
    with org.read_session() as s:
        assert s.scalar(select(Connection).where(Connection.user_id == "tech001")) is None
    code, out, err = calsync(monkeypatch, capsys, "tenants", "list", "--json")
    assert json.loads(out)[0]["left_out"] == ["tech001"]

    # an admin takes them back
    code, out, err = calsync(monkeypatch, capsys, "tenants", "onboard", "--user", "nobody")
    assert code != 0 and "no organisation left them out" in err
    assert len(err.strip().splitlines()) == 1, err  # one line, like every other bad input
    code, out, err = calsync(monkeypatch, capsys, "tenants", "onboard", "--user", "tech001",
                             "--json")
    assert code == 0, err
    [report] = json.loads(out)
    assert report["connected"] == 1 and report["left_out"] == []
    with org.read_session() as s:
        back = s.scalar(select(Connection).where(Connection.user_id == "tech001"))
        assert back is not None and back.tenant_id is not None
        assert s.scalar(select(Tenant.left_out)) == []


def forget_onboard_ticks() -> None:
    """The worker onboards at most once per interval per database; this test's tick must
    run."""
    from calsync.sync import tenants

    tenants._last_onboard.clear()
