"""self-service API: OAuth sign-ins that return to a page (issue 10)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 09:10:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("oauth_states") as batch:
        batch.add_column(sa.Column("return_to", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("oauth_states") as batch:
        batch.drop_column("return_to")
