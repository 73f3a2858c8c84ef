"""Long-running processes freeze the objects start-up made (full garbage collections no
longer walk modules, the app and SQLAlchemy's caches on every request)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from calsync.api import serving
from calsync.heap import freeze_startup_heap
from tests.conftest import SECRET


def test_freezing_keeps_later_garbage_collectable() -> None:
    try:
        frozen = freeze_startup_heap()
        # Frozen objects still die by reference counting (another thread of the suite may
        # drop some), so the count can only fall after the freeze, never grow.
        assert frozen > 1000
        assert gc.get_freeze_count() <= frozen
        cycle: list[object] = []
        cycle.append(cycle)
        marker = id(cycle)
        del cycle
        gc.collect()
        assert all(id(o) != marker for o in gc.get_objects())
        assert gc.get_freeze_count() <= frozen  # later objects are not frozen
    finally:
        gc.unfreeze()


def test_each_serving_process_freezes_after_building_its_app(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "calsync.toml"
    config.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "c.db"}"\n')
    monkeypatch.setenv(serving.CONFIG_ENV, str(config))
    monkeypatch.setenv("CALSYNC_SECRET_KEY", SECRET)
    gc.unfreeze()
    try:
        app = serving.app_from_environment()
        assert app is not None
        assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()
