"""organisation-wide connections and subscribed calendars (issue 13)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 09:05:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('tenants',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('public_id', sa.String(length=32), nullable=False),
    sa.Column('provider', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=320), nullable=False),
    sa.Column('domains', sa.JSON(), nullable=False),
    sa.Column('credentials', sa.LargeBinary(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('public_id'),
    sa.UniqueConstraint('provider', 'name', name='uq_tenants_provider_name')
    )
    with op.batch_alter_table('connections') as batch:
        batch.add_column(sa.Column('tenant_id', sa.Integer(), nullable=True))
        batch.create_index('ix_connections_tenant_id', ['tenant_id'])
        batch.create_foreign_key('fk_connections_tenant_id_tenants', 'tenants',
                                 ['tenant_id'], ['id'], ondelete='CASCADE')


def downgrade() -> None:
    with op.batch_alter_table('connections') as batch:
        batch.drop_constraint('fk_connections_tenant_id_tenants', type_='foreignkey')
        batch.drop_index('ix_connections_tenant_id')
        batch.drop_column('tenant_id')
    op.drop_table('tenants')
