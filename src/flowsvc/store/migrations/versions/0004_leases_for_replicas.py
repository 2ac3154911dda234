"""leases, fencing epochs and cancel requests for replicas; request digests

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('owner_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True))
        batch_op.add_column(sa.Column('lease_epoch', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('lease_expires_ms', sa.BigInteger(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('request_digest', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False, server_default=''))
    with op.batch_alter_table('flow_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('cancel_requested', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('request_digest', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False, server_default=''))
        batch_op.create_index('ix_flow_runs_org_status', ['organisation_id', 'status'], unique=False)
        batch_op.create_index('ix_flow_runs_session_status', ['session_id', 'status'], unique=False)
    with op.batch_alter_table('live_flows', schema=None) as batch_op:
        batch_op.add_column(sa.Column('request_digest', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False, server_default=''))
    with op.batch_alter_table('eval_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('owner_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True))
        batch_op.add_column(sa.Column('lease_expires_ms', sa.BigInteger(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('eval_jobs', schema=None) as batch_op:
        batch_op.drop_column('lease_expires_ms')
        batch_op.drop_column('owner_id')
    with op.batch_alter_table('live_flows', schema=None) as batch_op:
        batch_op.drop_column('request_digest')
    with op.batch_alter_table('flow_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_flow_runs_session_status')
        batch_op.drop_index('ix_flow_runs_org_status')
        batch_op.drop_column('request_digest')
        batch_op.drop_column('cancel_requested')
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.drop_column('request_digest')
        batch_op.drop_column('lease_expires_ms')
        batch_op.drop_column('lease_epoch')
        batch_op.drop_column('owner_id')
