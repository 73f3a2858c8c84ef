"""The sync CLI: connect (caldav through a fake factory, memory), calendars list/set/
confirm-empty, connections list, sync --json, secrets rotate. Runs ``calsync.cli.main``."""

from __future__ import annotations

import datetime as dt
import io
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from calsync.db.models import Calendar, Connection
from calsync.db.session import Database
from calsync.errors import UserError
from calsync.schedule.store import import_document
from calsync.secrets import CredentialBox
from calsync.sync import connector as connector_module
from calsync.sync.connector import ConnectContext, RemoteCalendar
from calsync.sync.memory import MemoryConnector, MemoryServer, shared_server
from tests.conftest import SECRET

UTC = dt.timezone.utc


class FakeCaldavFactory:
    """Stands in for the CalDAV plugin: password "right" works, anything else is refused."""

    providers = ("caldav",)

    def __init__(self) -> None:
        self.server = MemoryServer()
        self.server.add_calendar("https://dav.example/cal/work/", "Work")
        self.server.add_calendar("https://dav.example/cal/holidays/", "Holidays", read_only=True)
        self.seen: list[ConnectContext] = []

    def connect(self, ctx: ConnectContext) -> MemoryConnector:
        return MemoryConnector(self.server)

    def verify(self, ctx: ConnectContext) -> tuple[ConnectContext, list[RemoteCalendar]]:
        self.seen.append(ctx)
        if ctx.credentials.get("password") != "right":
            raise UserError(f"wrong username or password for {ctx.url}")
        return ctx, self.connect(ctx).list_calendars()


@pytest.fixture
def cli_env(sqlite_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Database:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CALSYNC_CONFIG", raising=False)
    monkeypatch.setenv("CALSYNC_DATABASE_URL", sqlite_db.url)
    monkeypatch.setenv("CALSYNC_SECRET_KEY", SECRET)
    import_document(sqlite_db, {"users": [{"id": "u1", "name": "Jane",
                                           "timezone": "America/Chicago"}]})
    return sqlite_db


@pytest.fixture
def fake_caldav(monkeypatch: pytest.MonkeyPatch) -> FakeCaldavFactory:
    factory = FakeCaldavFactory()
    monkeypatch.setitem(connector_module._registry, "caldav", factory)
    return factory


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


def test_connect_caldav_stores_encrypted_credentials(cli_env: Database, fake_caldav: Any,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = calsync(monkeypatch, capsys, "connect", "caldav", "u1", "--url",
                             "https://dav.example/", "--username", "jane", "--password-stdin",
                             stdin="right\n")
    assert code == 0, err
    assert "(connection con_" in out and "  cal_" in out and "Holidays (read-only)" in out
    assert fake_caldav.seen[0].credentials == {"username": "jane", "password": "right"}
    with cli_env.session() as s:
        conn = s.scalars(select(Connection)).one()
        assert conn.provider == "caldav" and conn.account == "jane" and conn.status == "ok"
        assert conn.credentials is not None and b"right" not in conn.credentials
        box = CredentialBox(SECRET)
        assert box.open(conn.credentials) == {"username": "jane", "password": "right"}
        roles = {c.remote_id: (c.role, c.read_only) for c in s.scalars(select(Calendar))}
    assert roles == {"https://dav.example/cal/work/": ("ignored", False),
                     "https://dav.example/cal/holidays/": ("ignored", True)}
    # reconnecting updates the same connection
    code, _, err = calsync(monkeypatch, capsys, "connect", "caldav", "u1", "--url",
                           "https://dav.example/", "--username", "jane", "--password-stdin",
                           stdin="right\n")
    assert code == 0, err
    with cli_env.session() as s:
        assert len(s.scalars(select(Connection)).all()) == 1
        assert len(s.scalars(select(Calendar)).all()) == 2


def test_connect_with_wrong_password_fails_with_one_line(cli_env: Database, fake_caldav: Any,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    code, out, err = calsync(monkeypatch, capsys, "connect", "caldav", "u1", "--url",
                             "https://dav.example/", "--username", "jane", "--password-stdin",
                             stdin="wrong\n")
    assert code != 0
    expected = "calsync: wrong username or password for https://dav.example/"
    assert err.strip().splitlines() == [expected]
    assert "Traceback" not in err and "wrong\n" not in out
    with cli_env.session() as s:
        assert s.scalars(select(Connection)).all() == []


def test_connect_refuses_password_as_argument_and_unknown_user(
        cli_env: Database, fake_caldav: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = calsync(monkeypatch, capsys, "connect", "caldav", "u1", "--url", "https://x/",
                           "--username", "jane")
    assert code != 0 and "--password-stdin" in err
    code, _, err = calsync(monkeypatch, capsys, "connect", "caldav", "nobody", "--url",
                           "https://x/", "--username", "jane", "--password-stdin",
                           stdin="right\n")
    assert code != 0 and "user 'nobody' not found" in err


def test_calendars_list_and_set(cli_env: Database, fake_caldav: Any,
                                monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    calsync(monkeypatch, capsys, "connect", "caldav", "u1", "--url", "https://dav.example/",
            "--username", "jane", "--password-stdin", stdin="right\n")
    code, out, err = calsync(monkeypatch, capsys, "calendars", "list", "u1", "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert [{k: v for k, v in c.items() if k != "id"} for c in listed] == [
        {"name": "Work", "role": "ignored", "read_only": False},
        {"name": "Holidays", "role": "ignored", "read_only": True},
    ]
    assert all(c["id"].startswith("cal_") for c in listed)
    code, _, err = calsync(monkeypatch, capsys, "calendars", "set", "u1", "--primary",
                           listed[1]["id"])
    assert code != 0 and "read-only" in err
    code, _, err = calsync(monkeypatch, capsys, "calendars", "set", "u1", "--primary", "nope")
    assert code != 0 and "no calendar 'nope'" in err
    # the remote id and the exact name are accepted too
    code, _, err = calsync(monkeypatch, capsys, "calendars", "set", "u1", "--primary",
                           "https://dav.example/cal/work/", "--conflict", "Holidays")
    assert code == 0, err
    _, out, _ = calsync(monkeypatch, capsys, "calendars", "list", "u1", "--json")
    assert [(c["name"], c["role"]) for c in json.loads(out)] == [("Work", "primary"),
                                                                  ("Holidays", "conflict")]
    # --conflict alone keeps the primary; dropping it takes --no-primary
    calsync(monkeypatch, capsys, "calendars", "set", "u1", "--conflict", listed[1]["id"])
    _, out, _ = calsync(monkeypatch, capsys, "calendars", "list", "u1", "--json")
    assert [c["role"] for c in json.loads(out)] == ["primary", "conflict"]
    calsync(monkeypatch, capsys, "calendars", "set", "u1", "--no-primary")
    _, out, _ = calsync(monkeypatch, capsys, "calendars", "list", "u1", "--json")
    assert [c["role"] for c in json.loads(out)] == ["ignored", "conflict"]


def test_sync_json_counts_and_connections_list(cli_env: Database,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    server = shared_server(name)
    now = dt.datetime.now(UTC).replace(microsecond=0)
    server.put_external("personal", "Dentist", now + dt.timedelta(days=1),
                        now + dt.timedelta(days=1, hours=1))
    code, _, err = calsync(monkeypatch, capsys, "connect", "memory", "u1", "--server", name)
    assert code == 0, err
    calsync(monkeypatch, capsys, "calendars", "set", "u1", "--primary", "work",
            "--conflict", "personal")
    start = now + dt.timedelta(days=2)
    import_document(cli_env, {"blocks": [
        {"id": "b1", "user": "u1", "title": "Training", "start": start.isoformat(),
         "end": (start + dt.timedelta(hours=2)).isoformat()},
        {"id": "b2", "user": "u1", "title": "Stock take",
         "start": (start + dt.timedelta(days=1)).isoformat(),
         "end": (start + dt.timedelta(days=1, hours=2)).isoformat()}]})
    code, out, err = calsync(monkeypatch, capsys, "sync", "--user", "u1", "--json")
    assert code == 0, err
    [conn] = json.loads(out)
    assert (conn["status"], conn["created"], conn["updated"], conn["deleted"],
            conn["imported"]) == ("ok", 2, 0, 0, 1)
    assert {o.key for o in server.objects("work")} == {"block-b1", "block-b2"}

    code, out, _ = calsync(monkeypatch, capsys, "sync", "--user", "u1")
    assert code == 0
    assert "0 created, 0 updated, 0 deleted, 0 imported" in out

    code, out, err = calsync(monkeypatch, capsys, "connections", "list", "--user", "u1",
                             "--json")
    assert code == 0, err
    [row] = json.loads(out)
    assert row["provider"] == "memory" and row["status"] == "ok" and row["last_error"] is None
    assert row["last_sync_at"] is not None
    assert {c["name"]: c["role"] for c in row["calendars"]} == {"Personal": "conflict",
                                                                "Work": "primary"}


def test_sync_reports_failure_and_confirm_empty(cli_env: Database,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    server = shared_server(name)
    now = dt.datetime.now(UTC).replace(microsecond=0)
    server.put_external("work", "Lunch", now + dt.timedelta(days=1),
                        now + dt.timedelta(days=1, hours=1))
    calsync(monkeypatch, capsys, "connect", "memory", "u1", "--server", name)
    calsync(monkeypatch, capsys, "calendars", "set", "u1", "--primary", "work")
    assert calsync(monkeypatch, capsys, "sync")[0] == 0
    server.clear("work")
    server.invalidate_tokens("work")
    code, out, err = calsync(monkeypatch, capsys, "sync", "--user", "u1")
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and "lists none" in err
    _, out, _ = calsync(monkeypatch, capsys, "connections", "list", "--json")
    assert json.loads(out)[0]["calendars"][0]["status"] == "guarded"
    code, out, err = calsync(monkeypatch, capsys, "calendars", "confirm-empty", "u1", "work")
    assert code == 0, err
    code, out, err = calsync(monkeypatch, capsys, "sync", "--json")
    assert code == 0, err
    assert json.loads(out)[0]["dropped"] == 1


def test_secrets_rotate_reencrypts_under_the_new_key(cli_env: Database, fake_caldav: Any,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    calsync(monkeypatch, capsys, "connect", "caldav", "u1", "--url", "https://dav.example/",
            "--username", "jane", "--password-stdin", stdin="right\n")
    new_key = "another-secret-key-0123456789"
    config = tmp_path / "rotate.toml"
    config.write_text(f'[security]\nsecret_key = "{new_key}"\n'
                      f'previous_secret_keys = ["{SECRET}"]\n')
    monkeypatch.delenv("CALSYNC_SECRET_KEY")
    code, out, err = calsync(monkeypatch, capsys, "--config", str(config), "secrets", "rotate")
    assert code == 0, err
    assert "1 connection" in out
    with cli_env.session() as s:
        blob = s.scalars(select(Connection)).one().credentials
    assert blob is not None
    assert CredentialBox(new_key).open(blob)["password"] == "right"
    with pytest.raises(Exception, match="cannot be decrypted"):
        CredentialBox(SECRET).open(blob)


def test_sync_skips_a_connection_another_worker_holds(cli_env: Database,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from calsync.sync.runner import claim_connection

    name = f"cli-{uuid.uuid4().hex[:8]}"
    calsync(monkeypatch, capsys, "connect", "memory", "u1", "--server", name)
    with cli_env.session() as s:
        cid = s.scalars(select(Connection.id)).one()
    assert claim_connection(cli_env, cid, "other-worker", dt.datetime.now(UTC), 600)
    code, out, err = calsync(monkeypatch, capsys, "sync")
    assert code != 0  # nothing could be synced
    assert "another worker is syncing it" in out
    assert "worker other-worker is syncing it (lease until " in out
    assert "nothing synced" in err and "other-worker" in err
    assert "connection con_" in out  # the public id, as connections list shows it
    with cli_env.session() as s:
        conn = s.get(Connection, cid)
        assert conn is not None and conn.lease_owner == "other-worker"
        assert conn.last_sync_at is None
