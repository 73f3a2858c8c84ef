"""``calsync secrets rotate`` re-seals the organisations' secrets (a Microsoft 365 client
secret, a Workspace key) with the connections', so dropping the old key keeps them usable."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import select

from calsync.config import load_settings
from calsync.db.models import Tenant
from calsync.db.session import Database
from calsync.secrets import CredentialBox
from calsync.sync.tenants import save_tenant
from tests.conftest import SECRET
from tests.test_sync_cli import calsync, cli_env  # noqa: F401 - fixture used by name


def test_secrets_rotate_reseals_organisation_credentials(
        cli_env: Database, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    settings = load_settings(env={"CALSYNC_SECRET_KEY": SECRET,
                                  "CALSYNC_DATABASE_URL": cli_env.url})
    save_tenant(settings, cli_env, "outlook", "tenant-1",
                {"mode": "app_only", "client_secret": "org-secret-value"}, ["contoso.com"],
                dt.datetime.now(dt.timezone.utc))
    new_key = "another-secret-key-0123456789"
    config = tmp_path / "rotate.toml"
    config.write_text(f'[security]\nsecret_key = "{new_key}"\n'
                      f'previous_secret_keys = ["{SECRET}"]\n')
    monkeypatch.delenv("CALSYNC_SECRET_KEY")
    code, out, err = calsync(monkeypatch, capsys, "--config", str(config), "secrets", "rotate")
    assert code == 0, err
    with cli_env.read_session() as s:
        blob = s.scalars(select(Tenant)).one().credentials
    assert CredentialBox(new_key).open(blob)["client_secret"] == "org-secret-value"
    with pytest.raises(Exception, match="cannot be decrypted"):
        CredentialBox(SECRET).open(blob)
