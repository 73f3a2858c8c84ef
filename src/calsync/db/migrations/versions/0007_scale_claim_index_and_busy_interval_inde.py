"""scale: claim index and busy-interval indexes (issue 12)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 09:05:00
"""
from __future__ import annotations

from alembic import op


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The worker's claim query (due connections, most overdue first) and the queue-depth
    # gauge read this index instead of scanning every connection.
    op.create_index("ix_connections_due", "connections", ["next_sync_at", "id"])
    # Re-expanding or dropping an external event deletes its occurrences by event id.
    op.create_index("ix_external_busy_event", "external_busy", ["event_id"])


def downgrade() -> None:
    op.drop_index("ix_external_busy_event", table_name="external_busy")
    op.drop_index("ix_connections_due", table_name="connections")
