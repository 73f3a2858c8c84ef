"""self-service sign-in: login links and web sessions (issue 10)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 09:05:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Only SHA-256 hashes of link tokens and session ids are stored.
    op.create_table(
        'login_links',
        sa.Column('token_hash', sa.String(length=64), primary_key=True),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('user_id', sa.String(length=128),
                  sa.ForeignKey('users.id', ondelete='CASCADE'), nullable=True),
        sa.Column('name', sa.String(length=256), nullable=False),
        sa.Column('created_by', sa.String(length=160), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index('ix_login_links_expires_at', 'login_links', ['expires_at'])
    op.create_table(
        'web_sessions',
        sa.Column('session_hash', sa.String(length=64), primary_key=True),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('user_id', sa.String(length=128),
                  sa.ForeignKey('users.id', ondelete='CASCADE'), nullable=True),
        sa.Column('name', sa.String(length=256), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index('ix_web_sessions_expires_at', 'web_sessions', ['expires_at'])


def downgrade() -> None:
    op.drop_index('ix_web_sessions_expires_at', table_name='web_sessions')
    op.drop_table('web_sessions')
    op.drop_index('ix_login_links_expires_at', table_name='login_links')
    op.drop_table('login_links')
