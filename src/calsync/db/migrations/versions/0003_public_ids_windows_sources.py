"""public ids for connections and calendars; window tracking, retry time and series sources

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 09:00:00
"""
from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def _backfill(table: str, prefix: str) -> None:
    conn = op.get_bind()
    ids = [row[0] for row in conn.execute(sa.text(f"SELECT id FROM {table}"))]
    for row_id in ids:
        conn.execute(sa.text(f"UPDATE {table} SET public_id = :p WHERE id = :i"),
                     {"p": f"{prefix}_{secrets.token_hex(6)}", "i": row_id})


def upgrade() -> None:
    for table, prefix in (("connections", "con"), ("calendars", "cal")):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column('public_id', sa.String(length=32), nullable=True))
        _backfill(table, prefix)
        with op.batch_alter_table(table) as batch:
            batch.alter_column('public_id', existing_type=sa.String(length=32),
                               nullable=False)
            batch.create_unique_constraint(f'uq_{table}_public_id', ['public_id'])
    with op.batch_alter_table('calendars') as batch:
        batch.add_column(sa.Column('window_start', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('retry_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('external_events') as batch:
        batch.add_column(sa.Column('source', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('external_events') as batch:
        batch.drop_column('source')
    with op.batch_alter_table('calendars') as batch:
        batch.drop_column('retry_at')
        batch.drop_column('window_start')
    for table in ("calendars", "connections"):
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f'uq_{table}_public_id', type_='unique')
            batch.drop_column('public_id')
