"""A newcomer's mistakes get one line saying what and where, through the real ``calsync``
command: a database that cannot be reached or does not exist, a SQLite path whose folder
cannot be made, an import file that is not UTF-8 (a UTF-8 byte-order mark is fine)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.caldav_servers import DavServer, radicale_server  # noqa: F401 - fixture
from tests.conftest import PG_ADMIN_URL, SECRET, need

CALSYNC = Path(sys.executable).with_name("calsync")
PASSWORD = "s3cret-pw-do-not-print"


def calsync(tmp_path: Path, database_url: str, *args: str,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALSYNC_")}
    env.update({"CALSYNC_DATABASE_URL": database_url, "CALSYNC_SECRET_KEY": SECRET})
    proc = subprocess.run([str(CALSYNC), *args], env=env, cwd=tmp_path, input=stdin,
                          capture_output=True, timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode,
                                       proc.stdout.decode(), proc.stderr.decode())


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends


def assert_one_line(proc: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and PASSWORD not in proc.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("args", [("db", "upgrade"), ("serve", "--no-worker"),
                                  ("connections", "list"), ("token", "list")])
def test_postgresql_on_a_closed_port_is_one_line(tmp_path: Path, args: tuple[str, ...]) -> None:
    port = closed_port()
    url = f"postgresql://calsync:{PASSWORD}@127.0.0.1:{port}/calsync"
    line = assert_one_line(calsync(tmp_path, url, *args), "cannot open the database",
                           f"postgresql://calsync:***@127.0.0.1:{port}/calsync",
                           "Connection refused")
    assert line.startswith("calsync: ")


def test_postgresql_database_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    import psycopg

    base = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        psycopg.connect(base, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        need(False, f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
    url = base.rsplit("/", 1)[0] + "/calsync_no_such_database"
    assert_one_line(calsync(tmp_path, url, "db", "upgrade"), "cannot open the database",
                    'database "calsync_no_such_database" does not exist')


def test_sqlite_path_whose_folder_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "var"
    blocker.write_text("a file where the folder should be\n")
    url = f"sqlite:///{blocker / 'data' / 'calsync.db'}"
    assert_one_line(calsync(tmp_path, url, "db", "upgrade"), "cannot open the database",
                    str(blocker / "data"))


def _migrated(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'calsync.db'}"
    proc = calsync(tmp_path, url, "db", "upgrade")
    assert proc.returncode == 0, proc.stderr
    return url


def test_import_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    url = _migrated(tmp_path)
    doc = {"users": [{"id": "u1", "name": "Jürgen", "timezone": "Europe/Berlin"}]}
    latin1 = tmp_path / "users-latin1.json"
    latin1.write_bytes(json.dumps(doc, ensure_ascii=False, indent=1).encode("latin-1"))
    line = assert_one_line(calsync(tmp_path, url, "import", str(latin1)),
                           str(latin1), "not UTF-8", "byte 0xfc at line 5")
    assert line.startswith("calsync: ")
    # the same through stdin
    assert_one_line(calsync(tmp_path, url, "import", "-", stdin=latin1.read_bytes()),
                    "<stdin>", "not UTF-8")


def test_import_file_with_a_utf8_byte_order_mark_loads(tmp_path: Path) -> None:
    url = _migrated(tmp_path)
    doc = {"users": [{"id": "u1", "name": "Jürgen", "timezone": "Europe/Berlin"}]}
    bom = tmp_path / "users-bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(doc, ensure_ascii=False).encode())
    proc = calsync(tmp_path, url, "import", str(bom))
    assert proc.returncode == 0, proc.stderr
    assert "users: 1 created" in proc.stdout


def test_import_record_with_an_unknown_field_is_rejected_naming_it(tmp_path: Path) -> None:
    url = _migrated(tmp_path)
    doc = {"users": [{"id": "u1", "name": "Jane", "timezone": "America/Chicago"}],
           "blocks": [{"id": "b1", "user": "u1", "title": "Training",
                       "start": "2026-11-25T13:00:00-06:00",
                       "end": "2026-11-25T15:00:00-06:00", "locaton": "Room 4"}]}
    path = tmp_path / "typo.json"
    path.write_text(json.dumps(doc))
    proc = calsync(tmp_path, url, "import", str(path))
    assert proc.returncode == 1
    assert "users: 1 created" in proc.stdout and "blocks: 1 rejected" in proc.stdout
    assert proc.stderr.strip() == ("rejected blocks[0] (id='b1'): field 'locaton': unknown "
                                   "field; did you mean 'location'?")


def test_third_party_info_logs_are_off_unless_verbose(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'calsync.db'}"
    quiet = calsync(tmp_path, url, "db", "upgrade")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "" and quiet.stdout.strip() == "database is at head"
    verbose = calsync(tmp_path, f"sqlite:///{tmp_path / 'other.db'}", "-v", "db", "upgrade")
    assert verbose.returncode == 0
    assert "alembic" in verbose.stderr  # the same set-up lines, shown when asked for


def test_sync_against_radicale_logs_no_http_requests_unless_verbose(
        tmp_path: Path, radicale_server: DavServer) -> None:  # noqa: F811
    url = _migrated(tmp_path)
    doc = {"users": [{"id": "u1", "name": "Jane", "timezone": "America/Chicago"}]}
    (tmp_path / "users.json").write_text(json.dumps(doc))
    assert calsync(tmp_path, url, "import", "users.json").returncode == 0
    work = radicale_server.make_calendar(f"Work {uuid.uuid4().hex[:6]}")
    proc = calsync(tmp_path, url, "connect", "caldav", "u1", "--url", work, "--username",
                   radicale_server.username, "--password-stdin", stdin=b"secret\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no "HTTP Request: PROPFIND ..." lines
    assert calsync(tmp_path, url, "calendars", "set", "u1", "--primary", work).returncode == 0
    quiet = calsync(tmp_path, url, "sync")
    assert quiet.returncode == 0, quiet.stderr
    assert "HTTP Request" not in quiet.stderr and "httpx" not in quiet.stderr
    verbose = calsync(tmp_path, url, "-v", "sync")
    assert verbose.returncode == 0, verbose.stderr
    assert "HTTP Request: REPORT" in verbose.stderr
