"""where a forked session came from (ForkSession)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('parent_session_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('forked_from_step_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False, server_default=''))


def downgrade() -> None:
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.drop_column('forked_from_step_id')
        batch_op.drop_column('parent_session_id')
