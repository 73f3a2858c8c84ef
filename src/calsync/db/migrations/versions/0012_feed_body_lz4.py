"""feeds: feed bodies compressed with lz4 on PostgreSQL (issue 12, the cold nightly rebuild)

Feed bodies (``feed_cache.body``, ~50 KB for 100 events) are compressed when written, and
a rebuild writes every feed that changed (all of them when cold): lz4 instead of pglz
takes 0.08 instead of 0.29 ms of server CPU per 52 KB body, for the same size on disk
(measured, PostgreSQL 15; the full-size cold rebuild's ``feed_cache`` phase 3.1 -> 1.2 s).
A server built without lz4 keeps pglz. PostgreSQL 14 or later (column compression
methods); SQLite does not compress. What is stored now stays as it is until rewritten.

Measured and left out: ``fillfactor = 30`` on ``schedule_items`` makes storing fragments
heap-only (HOT) updates (0 -> 100% HOT, 14 -> 7 µs of server CPU per fragment, cold
rebuild ~5 s faster), but the first warm rebuild after it then takes 0.6-0.8 s longer
(3.9 -> 4.7 s, pages pruned and written back as they are read), and the warm rebuild must
not get slower.

The span triggers of 0009 need no change: on PostgreSQL ``trg_schedule_items_span`` fires
only on ``UPDATE OF start_at, end_at`` with a WHEN that the values differ, on SQLite only
on ``UPDATE OF start_at, end_at``; storing a fragment sets neither column.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 15:20:00
"""
from __future__ import annotations

from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

_LZ4 = """DO $$ BEGIN
  ALTER TABLE feed_cache ALTER COLUMN body SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
  RAISE NOTICE 'this server has no lz4: feed bodies stay compressed with pglz';
END $$"""


def _postgresql_14() -> bool:
    bind = op.get_bind()
    version = bind.dialect.server_version_info or (0,)
    return bind.dialect.name == "postgresql" and tuple(version) >= (14,)


def upgrade() -> None:
    if _postgresql_14():
        op.execute(_LZ4)


def downgrade() -> None:
    if _postgresql_14():
        op.execute("ALTER TABLE feed_cache ALTER COLUMN body SET COMPRESSION DEFAULT")
