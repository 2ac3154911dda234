"""the trace a run began in, for runs resumed elsewhere

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('flow_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('trace_context', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False, server_default=''))


def downgrade() -> None:
    with op.batch_alter_table('flow_runs', schema=None) as batch_op:
        batch_op.drop_column('trace_context')
