"""feeds: source digest of each cached feed, so the rebuild skips unchanged feeds (issue 12)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 12:10:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("feed_cache") as batch:
        batch.add_column(sa.Column("source_digest", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("feed_cache") as batch:
        batch.drop_column("source_digest")
