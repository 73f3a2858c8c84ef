"""No built-in secret: the generated key of the embedded database, refusals without a
configured secret, keys derived per purpose (feed links survive a credential-key rotation),
and data of earlier versions (legacy ciphertexts and links) still accepted."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography.fernet import Fernet, InvalidToken

from calsync.config import Settings, load_settings
from calsync.db.models import Connection, User
from calsync.db.session import Database
from calsync.demo import DEMO_IDS
from calsync.errors import CalsyncError, ConfigError, UserError
from calsync.secrets import (
    CredentialBox,
    feed_link_keys,
    is_loopback,
    require_configured_secret,
    resolve_secret_key,
)
from tests.conftest import SECRET

PUBLIC_DEFAULT = "dev-insecure-change-me"  # the built-in secret of earlier versions


def legacy_feed_token(secret: str, user_id: str, version: int) -> str:
    """A feed token as earlier versions computed it: HMAC with the raw secret."""
    mac = hmac.new(secret.encode(), f"feed\x00{user_id}\x00{version}".encode(),
                   hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def legacy_fernet(secret: str) -> Fernet:
    """The credential key of earlier versions: SHA-256 over a prefix and the raw secret."""
    key = hashlib.sha256(b"calsync-credentials\x00" + secret.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a fresh shell: no CALSYNC_* settings but those given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALSYNC_")}
    env.update(extra)
    return env


def calsync(cwd: Path, *args: str, env: dict[str, str] | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "calsync.cli", *args], cwd=cwd,
                          env=env if env is not None else clean_env(), input=stdin,
                          capture_output=True, text=True, timeout=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``make run`` on a fresh machine: db upgrade, demo, serve on 127.0.0.1; no config file
    and no secret anywhere. Yields (base URL, the demo's output)."""
    assert calsync(tmp_path, "db", "upgrade").returncode == 0
    demo = calsync(tmp_path, "demo", "--if-empty")
    assert demo.returncode == 0, demo.stderr
    (tmp_path / "demo.txt").write_text(demo.stdout)
    port = free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "calsync.cli", "serve", "--no-worker",
                             "--host", "127.0.0.1", "--port", str(port)],
                            cwd=tmp_path, env=clean_env(), stdout=log, stderr=subprocess.STDOUT)
    log.close()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"serve exited: {(tmp_path / 'serve.log').read_text()}")
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("serve did not start")
            time.sleep(0.2)
        yield base, tmp_path / "demo.txt"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _printed_paths(demo_output: str) -> dict[str, str]:
    paths = {}
    for line in demo_output.splitlines():
        if "/feeds/" in line:
            path = urlsplit(line.rsplit(" ", 1)[1]).path
            paths[path.split("/")[2]] = path
    return paths


# --- the field test's scenario --------------------------------------------------------------

def test_forged_feed_link_with_the_old_default_secret_is_404(served) -> None:  # type: ignore[no-untyped-def]
    base, demo_output = served
    printed = _printed_paths(demo_output.read_text())
    assert sorted(printed) == sorted(DEMO_IDS)
    for user_id in DEMO_IDS:
        assert httpx.get(base + printed[user_id], timeout=10).status_code == 200
        for version in range(0, 4):  # the demo issues version 1; try its neighbours too
            forged = f"/feeds/{user_id}/{legacy_feed_token(PUBLIC_DEFAULT, user_id, version)}.ics"
            r = httpx.get(base + forged, timeout=10)
            assert r.status_code == 404, (user_id, version)


def test_generated_key_file_is_made_once_with_mode_0600_and_reused(tmp_path: Path) -> None:
    key_file = tmp_path / "var" / "calsync.db.secret"
    assert calsync(tmp_path, "db", "upgrade").returncode == 0
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"users": [{"id": "u1", "name": "Jane", "email": "j@x.com",
                                            "timezone": "UTC"}]}))
    assert calsync(tmp_path, "import", str(users)).returncode == 0
    first = calsync(tmp_path, "feed", "url", "u1")
    assert first.returncode == 0, first.stderr
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    secret = key_file.read_text()
    assert len(secret.strip()) >= 32
    mtime = key_file.stat().st_mtime_ns
    again = calsync(tmp_path, "feed", "url", "u1")  # another process: the same key, same link
    assert again.returncode == 0 and again.stdout == first.stdout
    assert key_file.read_text() == secret and key_file.stat().st_mtime_ns == mtime
    assert list(key_file.parent.glob(".calsync.db.secret.*")) == []  # nothing left aside
    # the link is signed with that key, not with any built-in one
    token = first.stdout.strip().rsplit("/", 1)[1][:-len(".ics")]
    assert token != legacy_feed_token(PUBLIC_DEFAULT, "u1", 1)


def test_generated_key_is_resolved_the_same_by_concurrent_first_uses(tmp_path: Path) -> None:
    settings = load_settings(env={"CALSYNC_DATABASE_URL": f"sqlite:///{tmp_path}/a/c.db"})
    assert settings.security.secret_key == ""
    procs = [subprocess.Popen(
        [sys.executable, "-c", "from calsync.config import load_settings;"
         "from calsync.secrets import resolve_secret_key;"
         "print(resolve_secret_key(load_settings()).security.secret_key)"],
        env=clean_env(CALSYNC_DATABASE_URL=f"sqlite:///{tmp_path}/a/c.db"),
        stdout=subprocess.PIPE, text=True) for _ in range(6)]
    outputs = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(outputs) == 1
    assert outputs == {(tmp_path / "a" / "c.db.secret").read_text().strip()}
    assert resolve_secret_key(settings).security.secret_key in outputs


def test_a_key_file_open_to_others_is_refused(tmp_path: Path) -> None:
    settings = load_settings(env={"CALSYNC_DATABASE_URL": f"sqlite:///{tmp_path}/c.db"})
    key_file = tmp_path / "c.db.secret"
    resolve_secret_key(settings)
    key_file.chmod(0o644)
    with pytest.raises(UserError, match=r"c\.db\.secret is open to other users.*chmod 600"):
        resolve_secret_key(settings)


# --- refusals -------------------------------------------------------------------------------

def test_there_is_no_built_in_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env={})
    assert settings.security.secret_key == ""
    with pytest.raises(UserError, match="no secret key is configured"):
        CredentialBox.from_settings(settings)
    with pytest.raises(UserError, match="no secret key is configured"):
        feed_link_keys(settings)
    with pytest.raises(UserError, match="no secret key is configured"):
        CredentialBox.from_settings(Settings())


def test_the_published_example_secret_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[security]\nsecret_key = "{PUBLIC_DEFAULT}"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env={})
    assert info.value.key == "security.secret_key"
    assert PUBLIC_DEFAULT not in str(info.value)
    with pytest.raises(ConfigError):
        load_settings(env={"CALSYNC_SECRET_KEY": PUBLIC_DEFAULT})


@pytest.mark.parametrize("how", ["--host", "config"])
def test_serve_beyond_loopback_without_a_secret_refuses(tmp_path: Path, how: str) -> None:
    assert calsync(tmp_path, "db", "upgrade").returncode == 0
    args = ["serve", "--no-worker", "--port", str(free_port())]
    if how == "--host":
        args += ["--host", "0.0.0.0"]
    else:
        (tmp_path / "calsync.toml").write_text('[server]\nhost = "0.0.0.0"\n')
    proc = calsync(tmp_path, *args)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines == [lines[-1]], proc.stderr  # one line, no traceback
    assert "refusing to serve on 0.0.0.0 without a configured secret key" in lines[-1]
    assert "CALSYNC_SECRET_KEY" in lines[-1]


def test_postgresql_without_a_secret_refuses(pg_database_url: str, tmp_path: Path) -> None:
    env = clean_env(CALSYNC_DATABASE_URL=pg_database_url)
    for args in (["feed", "url", "u1"], ["serve", "--no-worker", "--host", "127.0.0.1",
                                         "--port", str(free_port())], ["worker"]):
        proc = calsync(tmp_path, *args, env=env)
        assert proc.returncode != 0, args
        lines = proc.stderr.strip().splitlines()
        assert lines == [lines[-1]], proc.stderr
        assert "no secret key is configured" in lines[-1] and "PostgreSQL" in lines[-1]
    # configured explicitly, the same command works
    ok = calsync(tmp_path, "feed", "url", "nobody",
                 env=clean_env(CALSYNC_DATABASE_URL=pg_database_url, CALSYNC_SECRET_KEY=SECRET))
    assert ok.stderr.strip() == "calsync: user 'nobody' not found"


def test_loopback_addresses() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "calsync.example"))
    configured = load_settings(env={"CALSYNC_SECRET_KEY": SECRET})
    require_configured_secret(configured, "0.0.0.0")  # an explicit secret may serve anywhere


# --- one key per purpose --------------------------------------------------------------------

def _sqlite_settings(tmp_path: Path, **security: object) -> tuple[Settings, Database]:
    db = Database(f"sqlite:///{tmp_path / 'calsync.db'}")
    db.upgrade()
    base = load_settings(env={"CALSYNC_SECRET_KEY": SECRET})
    return replace(base, database=replace(base.database, url=db.url),
                   security=replace(base.security, **security)), db


def test_keys_are_derived_per_purpose_not_the_raw_secret(tmp_path: Path) -> None:
    settings, db = _sqlite_settings(tmp_path)
    keys = feed_link_keys(settings)
    assert keys.current != SECRET.encode() and len(keys.current) == 32
    sealed = CredentialBox.from_settings(settings).seal({"password": "p"})
    with pytest.raises(InvalidToken):  # new ciphertexts are not under the old scheme's key
        legacy_fernet(SECRET).decrypt(sealed)
    with pytest.raises(InvalidToken):  # nor under the feed-link key
        Fernet(base64.urlsafe_b64encode(keys.current)).decrypt(sealed)
    db.dispose()


def _write_config(path: Path, db_url: str, **security: object) -> None:
    lines = [f'[database]\nurl = "{db_url}"\n[security]\n']
    for key, value in security.items():
        lines.append(f"{key} = {json.dumps(value)}\n")
    path.write_text("".join(lines))


def _user_with_credentials(db: Database, blob: bytes) -> None:
    with db.session() as s:
        s.add(User(id="u1", name="Jane", email="j@x.com", timezone="UTC"))
        s.flush()
        s.add(Connection(user_id="u1", provider="caldav", account="jane",
                         url="http://127.0.0.1:1/", credentials=blob))


def _stored_credentials(db: Database) -> bytes:
    with db.session() as s:
        conn = s.query(Connection).one()
        assert conn.credentials is not None
        return conn.credentials


def test_feed_links_survive_a_credential_key_rotation(tmp_path: Path) -> None:
    settings, db = _sqlite_settings(tmp_path)
    _user_with_credentials(db, CredentialBox(SECRET).seal({"password": "right"}))
    cfg = tmp_path / "calsync.toml"
    _write_config(cfg, db.url, secret_key=SECRET)
    before = calsync(tmp_path, "feed", "url", "u1")
    assert before.returncode == 0, before.stderr
    new_credential_key = "new-credential-key-" + "x" * 20
    _write_config(cfg, db.url, secret_key=SECRET, credential_key=new_credential_key)
    rotated = calsync(tmp_path, "secrets", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    blob = _stored_credentials(db)
    assert CredentialBox(new_credential_key).open(blob) == {"password": "right"}
    with pytest.raises(CalsyncError, match="cannot be decrypted"):
        CredentialBox(SECRET).open(blob)  # the old key no longer opens it
    after = calsync(tmp_path, "feed", "url", "u1")
    assert after.stdout == before.stdout  # every subscription link unchanged
    # rotating the feed key instead changes the links, not the credentials
    _write_config(cfg, db.url, secret_key=SECRET, credential_key=new_credential_key,
                  feed_key="new-feed-key-" + "y" * 20)
    moved = calsync(tmp_path, "feed", "url", "u1")
    assert moved.returncode == 0 and moved.stdout != before.stdout
    assert _stored_credentials(db) == blob
    db.dispose()


def test_credentials_sealed_by_earlier_versions_still_open_and_rotate(tmp_path: Path) -> None:
    settings, db = _sqlite_settings(tmp_path)
    old_blob = legacy_fernet(SECRET).encrypt(json.dumps({"password": "right"}).encode())
    assert CredentialBox.from_settings(settings).open(old_blob) == {"password": "right"}
    # a secret rotated away in an earlier version: listed in previous_secret_keys
    older = "an-older-secret-0123456789"
    older_blob = legacy_fernet(older).encrypt(b'{"password": "older"}')
    rotated_settings = replace(settings, security=replace(
        settings.security, previous_secret_keys=(older,)))
    assert CredentialBox.from_settings(rotated_settings).open(older_blob) == \
        {"password": "older"}
    # `calsync secrets rotate` moves them to the derived key
    _user_with_credentials(db, old_blob)
    _write_config(tmp_path / "calsync.toml", db.url, secret_key=SECRET)
    assert calsync(tmp_path, "secrets", "rotate").returncode == 0
    blob = _stored_credentials(db)
    with pytest.raises(InvalidToken):
        legacy_fernet(SECRET).decrypt(blob)
    assert CredentialBox(SECRET).open(blob) == {"password": "right"}
    db.dispose()


def test_links_handed_out_by_earlier_versions_keep_working(app_client, db, make_token) -> None:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {make_token('admin')}"}
    user = {"name": "Jane", "email": "j@x.com", "timezone": "UTC"}
    assert app_client.put("/api/users/u1", json=user, headers=headers).status_code == 201
    url = app_client.post("/api/users/u1/feed", headers=headers).json()["url"]
    with db.session() as s:
        version = s.get(User, "u1").feed_version  # type: ignore[union-attr]
    old = f"/feeds/u1/{legacy_feed_token(SECRET, 'u1', version)}.ics"
    assert urlsplit(url).path != old  # new links are signed with the derived key
    assert app_client.get(old).status_code == 200
    assert app_client.get(urlsplit(url).path).status_code == 200
    app_client.post("/api/users/u1/feed", headers=headers)  # regenerate retires both
    assert app_client.get(old).status_code == 404


def test_credentials_sealed_under_the_old_default_survive_the_upgrade(tmp_path: Path) -> None:
    """An installation that never set a secret: its credentials were sealed with the
    published default. After the upgrade it runs on a generated secret; they still open,
    and `secrets rotate` moves them under the generated key."""
    assert calsync(tmp_path, "db", "upgrade").returncode == 0
    db = Database(f"sqlite:///{tmp_path / 'var' / 'calsync.db'}")
    _user_with_credentials(db, legacy_fernet(PUBLIC_DEFAULT).encrypt(b'{"password": "p"}'))
    rotated = calsync(tmp_path, "secrets", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    blob = _stored_credentials(db)
    with pytest.raises(InvalidToken):
        legacy_fernet(PUBLIC_DEFAULT).decrypt(blob)
    generated = (tmp_path / "var" / "calsync.db.secret").read_text().strip()
    assert CredentialBox(generated).open(blob) == {"password": "p"}
    db.dispose()


def test_the_docker_image_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    """The image's own command, run as the container would (calsync on PATH, no secret)."""
    dockerfile = (Path(__file__).resolve().parents[1] / "Dockerfile").read_text()
    match = re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    assert match is not None
    command = json.loads(match.group(1))
    env = clean_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "calsync: refusing to serve on 0.0.0.0 without a configured secret key: set "
        "[security] secret_key or CALSYNC_SECRET_KEY (a generated key is used only on "
        "127.0.0.1)")
