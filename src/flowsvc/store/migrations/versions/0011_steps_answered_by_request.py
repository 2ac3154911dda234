"""an index of the steps answered with a request id

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04

SubmitUserInput with a request_id looks its step up by (session, request id), twice a call:
that read every step of the session, ~1 ms for a session of 2,660 steps (0.006 ms with this
index). Only steps answered with a request id have an entry.
"""

from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

_ANSWERED = "input_request_id IS NOT NULL"


def upgrade() -> None:
    op.create_index(
        'ix_session_steps_input_request',
        'session_steps',
        ['session_id', 'input_request_id'],
        sqlite_where=sa.text(_ANSWERED),
        postgresql_where=sa.text(_ANSWERED),
    )


def downgrade() -> None:
    op.drop_index('ix_session_steps_input_request', table_name='session_steps')
