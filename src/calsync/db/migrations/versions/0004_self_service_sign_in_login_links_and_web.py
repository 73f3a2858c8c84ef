"""self-service sign-in: login links and web sessions (issue 10)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 09:05:00
"""
from __future__ import annotations

import sqlalchemy as sa  # noqa: F401 - used once the revision has content
from alembic import op  # noqa: F401


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
