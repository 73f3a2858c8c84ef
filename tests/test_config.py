from __future__ import annotations

from pathlib import Path

import pytest

from calsync.config import load_settings
from calsync.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_without_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(env={})
    assert s.database.url == "sqlite:///./var/calsync.db"
    assert s.feeds.history_months == 1 and s.feeds.future_months == 12
    assert s.source == "<defaults>"


def test_example_config_loads_and_documents_every_key() -> None:
    s = load_settings(ROOT / "config.example.toml", env={})
    text = (ROOT / "config.example.toml").read_text()
    from dataclasses import fields

    for section in fields(s):
        if section.name == "source":
            continue
        assert f"[{section.name}]" in text
        for key in fields(getattr(s, section.name)):
            assert f"\n{key.name} =" in text or f"\n# {key.name} =" in text, key.name


def test_webhook_retention_and_disable_windows(tmp_path: Path) -> None:
    assert load_settings(env={}).webhooks.retention_days == 30
    assert load_settings(env={}).webhooks.disable_after_days == 5
    cfg = tmp_path / "c.toml"
    cfg.write_text("[webhooks]\nretention_days = 1\ndisable_after_days = 14\n")
    webhooks = load_settings(cfg, env={}).webhooks
    assert (webhooks.retention_days, webhooks.disable_after_days) == (1, 14)


def test_env_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[database]\nurl = "sqlite:///a.db"\n')
    s = load_settings(cfg, env={"CALSYNC_DATABASE_URL": "postgresql://x@h/db",
                                "CALSYNC_BASE_URL": "https://cal.example.com",
                                "CALSYNC_SECRET_KEY": "k" * 20})
    assert s.database.url == "postgresql://x@h/db"
    assert s.server.base_url == "https://cal.example.com"
    assert s.security.secret_key == "k" * 20


def test_config_env_var_selects_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[feeds]\nfuture_months = 3\n")
    assert load_settings(env={"CALSYNC_CONFIG": str(cfg)}).feeds.future_months == 3


@pytest.mark.parametrize("body, key, expected", [
    ("[server]\nport = 'eighty'\n", "server.port", "an integer"),
    ("[server]\nport = 70000\n", "server.port", "TCP port"),
    ("[feeds]\nhistory_months = -1\n", "feeds.history_months", "0 or more"),
    ("[sync]\nconflict_policy = 'mine'\n", "sync.conflict_policy", "newest_wins"),
    ("[sync]\nbogus = 1\n", "sync.bogus", "one of the keys"),
    ("[nope]\n", "nope", "one of the tables"),
    ("[database]\nurl = 'mysql://x'\n", "database.url", "sqlite"),
    ("[server]\nbase_url = 'ftp://x'\n", "server.base_url", "http"),
    ("[webhooks]\ntimeout_seconds = 0\n", "webhooks.timeout_seconds", "greater than 0"),
    ("[webhooks]\nlease_seconds = 5\ntimeout_seconds = 10.0\n", "webhooks.lease_seconds",
     "more than webhooks.timeout_seconds"),
    ("[webhooks]\nretention_days = 0\n", "webhooks.retention_days", "1 or more"),
    ("[webhooks]\nretention_days = 1.5\n", "webhooks.retention_days", "an integer"),
    ("[webhooks]\ndisable_after_days = -2\n", "webhooks.disable_after_days", "1 or more"),
])
def test_bad_values_name_key_value_and_expectation(tmp_path: Path, body: str, key: str,
                                                   expected: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, env={})
    assert info.value.key == key
    assert expected in str(info.value)


def test_short_secret_is_rejected_without_echoing_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"CALSYNC_SECRET_KEY": "shortsecret"})
    assert "shortsecret" not in str(info.value)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="existing TOML file"):
        load_settings(tmp_path / "absent.toml", env={})


def test_no_secret_by_default_and_separate_keys_from_env(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_settings(env={}).security.secret_key == ""
    s = load_settings(env={"CALSYNC_FEED_KEY": "f" * 20, "CALSYNC_CREDENTIAL_KEY": "c" * 20})
    assert s.security.feed_key == "f" * 20 and s.security.credential_key == "c" * 20


@pytest.mark.parametrize("key", ["secret_key", "feed_key", "credential_key"])
def test_short_or_published_keys_are_rejected_by_name(tmp_path: Path, key: str) -> None:
    cfg = tmp_path / "c.toml"
    for value in ("tooshort", "dev-insecure-change-me"):
        cfg.write_text(f'[security]\n{key} = "{value}"\n')
        with pytest.raises(ConfigError) as info:
            load_settings(cfg, env={})
        assert info.value.key == f"security.{key}"
        assert value not in str(info.value)
