"""Calendars by public id against a real Radicale server, through ``calsync.cli.main``:
``calendars list`` shows stable ``cal_…`` ids, ``calendars set`` takes them and keeps the
primary unless told otherwise, ``calendars refresh`` finds calendars made after ``connect``
and reports vanished ones, ``connections list`` shows ``con_…`` ids and every calendar that
is not ok with what to do."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from calsync.db.models import Calendar
from calsync.db.session import Database
from calsync.schedule.store import import_document
from tests.caldav_servers import DavServer, radicale_server  # noqa: F401 - fixture
from tests.conftest import SECRET
from tests.test_sync_cli import calsync


@pytest.fixture
def cli_env(sqlite_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Database:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CALSYNC_CONFIG", raising=False)
    monkeypatch.setenv("CALSYNC_DATABASE_URL", sqlite_db.url)
    monkeypatch.setenv("CALSYNC_SECRET_KEY", SECRET)
    import_document(sqlite_db, {"users": [{"id": "u1", "name": "Jane",
                                           "timezone": "America/Chicago"}]})
    return sqlite_db


def _by_name(out: str) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in json.loads(out)}


def _connected(server: DavServer, monkeypatch: pytest.MonkeyPatch,
               capsys: pytest.CaptureFixture[str]) -> tuple[str, dict[str, str]]:
    """Two fresh calendars on the server, connected for u1; returns (tag, name -> url)."""
    tag = uuid.uuid4().hex[:6]
    urls = {f"Work {tag}": server.make_calendar(f"Work {tag}"),
            f"Personal {tag}": server.make_calendar(f"Personal {tag}"),
            f"Spare {tag}": server.make_calendar(f"Spare {tag}")}
    code, out, err = calsync(monkeypatch, capsys, "connect", "caldav", "u1", "--url",
                             server.home_url, "--username", server.username,
                             "--password-stdin", stdin="secret\n")
    assert code == 0, err
    assert "(connection con_" in out
    return tag, urls


def test_calendars_have_public_ids_and_set_keeps_the_primary(
        cli_env: Database, radicale_server: DavServer, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    tag, _urls = _connected(radicale_server, monkeypatch, capsys)
    code, out, err = calsync(monkeypatch, capsys, "calendars", "list", "u1", "--json")
    assert code == 0, err
    cals = _by_name(out)
    work, personal = cals[f"Work {tag}"], cals[f"Personal {tag}"]
    assert set(work) == {"id", "name", "role", "read_only"}
    assert all(c["id"].startswith("cal_") for c in cals.values())
    assert len({c["id"] for c in cals.values()}) == len(cals)
    _, again, _ = calsync(monkeypatch, capsys, "calendars", "list", "u1", "--json")
    assert json.loads(again) == json.loads(out)  # stable
    _, text, _ = calsync(monkeypatch, capsys, "calendars", "list", "u1")
    assert f"{work['id']}  'Work {tag}'  ignored" in text and "[con_" in text

    code, out, err = calsync(monkeypatch, capsys, "calendars", "set", "u1",
                             "--primary", work["id"], "--conflict", personal["id"])
    assert code == 0, err
    roles = {n: c["role"] for n, c in _by_name(
        calsync(monkeypatch, capsys, "calendars", "list", "u1", "--json")[1]).items()}
    assert (roles[f"Work {tag}"], roles[f"Personal {tag}"]) == ("primary", "conflict")

    # --conflict alone keeps the primary (it used to drop it without a word)
    spare = cals[f"Spare {tag}"]
    code, out, err = calsync(monkeypatch, capsys, "calendars", "set", "u1",
                             "--conflict", spare["id"])
    assert code == 0, err
    roles = {n: c["role"] for n, c in _by_name(
        calsync(monkeypatch, capsys, "calendars", "list", "u1", "--json")[1]).items()}
    assert (roles[f"Work {tag}"], roles[f"Personal {tag}"], roles[f"Spare {tag}"]) == (
        "primary", "ignored", "conflict")

    # listing the primary as a conflict calendar is refused, naming the way out
    code, _, err = calsync(monkeypatch, capsys, "calendars", "set", "u1",
                           "--conflict", work["id"])
    assert code != 0 and "--no-primary" in err and len(err.strip().splitlines()) == 1

    # dropping the primary is explicit
    code, out, err = calsync(monkeypatch, capsys, "calendars", "set", "u1", "--no-primary")
    assert code == 0, err
    assert "no primary calendar" in out
    roles = {n: c["role"] for n, c in _by_name(
        calsync(monkeypatch, capsys, "calendars", "list", "u1", "--json")[1]).items()}
    assert (roles[f"Work {tag}"], roles[f"Spare {tag}"]) == ("ignored", "conflict")

    code, _, err = calsync(monkeypatch, capsys, "calendars", "set", "u1")
    assert code != 0 and "nothing to change" in err
    code, _, err = calsync(monkeypatch, capsys, "calendars", "set", "u1", "--primary",
                           work["id"], "--no-primary")
    assert code != 0 and "not both" in err
    # internal row numbers are not calendar ids
    with cli_env.session() as s:
        row = s.scalar(select(Calendar).where(Calendar.public_id == work["id"]))
        assert row is not None
        number = str(row.id)
    code, _, err = calsync(monkeypatch, capsys, "calendars", "set", "u1", "--primary", number)
    assert code != 0 and f"no calendar {number!r}" in err


def test_refresh_finds_new_calendars_and_reports_vanished_ones(
        cli_env: Database, radicale_server: DavServer, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    tag, urls = _connected(radicale_server, monkeypatch, capsys)
    cals = _by_name(calsync(monkeypatch, capsys, "calendars", "list", "u1", "--json")[1])
    code, _, err = calsync(monkeypatch, capsys, "calendars", "set", "u1", "--primary",
                           cals[f"Work {tag}"]["id"], "--conflict",
                           cals[f"Personal {tag}"]["id"])
    assert code == 0, err

    later = radicale_server.make_calendar(f"Later {tag}")
    assert f"Later {tag}" not in _by_name(
        calsync(monkeypatch, capsys, "calendars", "list", "u1", "--json")[1])
    assert radicale_server.delete(urls[f"Personal {tag}"]).status_code in (200, 204)
    assert radicale_server.delete(urls[f"Spare {tag}"]).status_code in (200, 204)

    code, out, err = calsync(monkeypatch, capsys, "calendars", "refresh", "u1", "--json")
    assert code == 0, err
    [report] = json.loads(out)
    assert report["connection"].startswith("con_")
    assert [c["name"] for c in report["added"]] == [f"Later {tag}"]
    assert report["removed"] == [{"id": cals[f"Spare {tag}"]["id"], "name": f"Spare {tag}"}]
    assert report["gone"] == [{"id": cals[f"Personal {tag}"]["id"],
                               "name": f"Personal {tag}", "role": "conflict"}]

    after = _by_name(calsync(monkeypatch, capsys, "calendars", "list", "u1", "--json")[1])
    new = after[f"Later {tag}"]
    assert new["role"] == "ignored" and new["id"] == report["added"][0]["id"]
    assert f"Spare {tag}" not in after
    assert after[f"Work {tag}"]["role"] == "primary"  # untouched
    with cli_env.session() as s:
        row = s.scalar(select(Calendar).where(Calendar.public_id == new["id"]))
        assert row is not None and row.remote_id == later

    # the gone calendar shows in connections list with what to do
    code, out, err = calsync(monkeypatch, capsys, "connections", "list", "--json")
    assert code == 0, err
    [conn] = json.loads(out)
    assert conn["id"] == report["connection"]
    gone = [c for c in conn["calendars"] if c["status"] != "ok"]
    assert gone == [{"id": cals[f"Personal {tag}"]["id"], "name": f"Personal {tag}",
                     "role": "conflict", "status": "gone",
                     "last_error": gone[0]["last_error"]}]
    assert "calsync calendars set" in gone[0]["last_error"]
    _, text, _ = calsync(monkeypatch, capsys, "connections", "list")
    assert text.splitlines()[0].startswith(f"{conn['id']}  u1  caldav")
    assert (f"  calendar {cals[f'Personal {tag}']['id']}  'Personal {tag}'  gone: "
            f"the calendar no longer exists") in text

    # the new calendar can be chosen at once, replacing the gone one
    code, _, err = calsync(monkeypatch, capsys, "calendars", "set", "u1", "--conflict",
                           new["id"])
    assert code == 0, err
    # once no role uses the gone calendar, the next refresh drops it
    code, out, err = calsync(monkeypatch, capsys, "calendars", "refresh", "u1")
    assert code == 0, err
    assert "0 new, 1 removed, 0 gone" in out and f"'Personal {tag}'" in out
    code, out, err = calsync(monkeypatch, capsys, "calendars", "refresh", "u1")
    assert code == 0 and "0 new, 0 removed, 0 gone" in out


def test_connections_list_shows_calendars_in_error_and_guarded(
        cli_env: Database, radicale_server: DavServer, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    tag, _urls = _connected(radicale_server, monkeypatch, capsys)
    with cli_env.session() as s:
        rows = {c.name: c for c in s.scalars(select(Calendar))}
        rows[f"Work {tag}"].role = "primary"
        rows[f"Work {tag}"].status = "error"
        rows[f"Work {tag}"].last_error = "the server answered 500; it is retried"
        rows[f"Spare {tag}"].status = "guarded"  # ignored now, but not ok: still shown
        rows[f"Spare {tag}"].last_error = "lists none after 3 items"
        ids = {n: c.public_id for n, c in rows.items()}
    _, text, _ = calsync(monkeypatch, capsys, "connections", "list", "--user", "u1")
    assert (f"  calendar {ids[f'Work {tag}']}  'Work {tag}'  error: the server answered "
            f"500; it is retried") in text
    assert f"  calendar {ids[f'Spare {tag}']}  'Spare {tag}'  guarded: lists none" in text
    assert f"Personal {tag}" not in text


def test_refresh_of_a_user_without_connections_says_so(
        cli_env: Database, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = calsync(monkeypatch, capsys, "calendars", "refresh", "u1")
    assert code != 0 and "no connections" in err and len(err.strip().splitlines()) == 1


def test_refresh_of_an_unreachable_server_is_one_line_and_changes_nothing(
        cli_env: Database, radicale_server: DavServer, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from calsync.db.models import Connection
    from tests.caldav_servers import free_port

    tag, urls = _connected(radicale_server, monkeypatch, capsys)
    before = _by_name(calsync(monkeypatch, capsys, "calendars", "list", "u1", "--json")[1])
    with cli_env.session() as s:
        conn = s.scalars(select(Connection)).one()
        conn.url = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
        public_id = conn.public_id
    config = tmp_path / "no-retries.toml"
    config.write_text("[sync]\nmax_retries = 0\n")
    code, out, err = calsync(monkeypatch, capsys, "--config", str(config), "calendars",
                             "refresh", "u1")
    assert code != 0
    [line] = err.strip().splitlines()
    assert line.startswith(f"calsync: could not list the calendars of connection {public_id} "
                           f"(caldav {radicale_server.username}): ")
    after = _by_name(calsync(monkeypatch, capsys, "calendars", "list", "u1", "--json")[1])
    assert after == before
