"""organisation-wide connections: the users an organisation's onboarding leaves out

A user whose connection through a tenant is disconnected (the API, the pages, `calsync
connections disconnect`) is remembered here, so the worker's next onboarding does not
connect them again; `calsync tenants onboard TENANT --user USER` takes them back.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 16:20:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("left_out", sa.JSON(), nullable=False,
                                   server_default=sa.text("'[]'")))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("left_out")
