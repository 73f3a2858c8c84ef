"""outbox retention and endpoints disabled after failing for days (issue 12)

- ``outbox_horizon``: one row saying what retention (``calsync.outbox.retention``) has
  deleted, so a change-feed cursor from before it is answered "cursor expired" instead of
  silently skipping the deleted events;
- ``webhook_endpoints.failing_since``: the first failed attempt since the last success
  (an endpoint failing for ``webhooks.disable_after_days`` is disabled). Endpoints failing
  now start their clock at their last failure (later than the real start: never sooner);
- ``ix_webhook_attempts_delivery``: attempts by delivery, for deleting a delivery's
  attempts and listing recent deliveries without scanning every attempt.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 12:40:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'outbox_horizon',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('pruned_through_seq', sa.Integer(), nullable=False),
        sa.Column('feed_pruned_through_seq', sa.Integer(), nullable=False),
        sa.Column('pruned_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'))
    with op.batch_alter_table("webhook_endpoints") as batch:
        batch.add_column(sa.Column("failing_since", sa.DateTime(timezone=True),
                                   nullable=True))
    op.execute("UPDATE webhook_endpoints SET failing_since = last_failure_at "
               "WHERE failures_in_a_row > 0")
    op.create_index("ix_webhook_attempts_delivery", "webhook_attempts", ["delivery_id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_attempts_delivery", table_name="webhook_attempts")
    # ALTER TABLE ... DROP COLUMN on both engines (SQLite >= 3.35): no table rebuild, which
    # on SQLite would drop a table other tables' foreign keys cascade from.
    op.drop_column("webhook_endpoints", "failing_since")
    op.drop_table('outbox_horizon')
