"""webhooks, their delivery outbox and organisation secrets; schedules; runs' schedule and callback

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel

from flowsvc.store.tables import UTCDateTime


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

S = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    op.create_table(
        'webhooks',
        sa.Column('id', S(length=36), nullable=False),
        sa.Column('organisation_id', S(length=128), nullable=False),
        sa.Column('url', S(), nullable=False),
        sa.Column('event_types', sa.JSON(), nullable=False),
        sa.Column('event_mask', sa.Integer(), nullable=False),
        sa.Column('flow_id', S(length=36), nullable=False),
        sa.Column('secret', S(length=64), nullable=False),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_webhooks_org_created', 'webhooks', ['organisation_id', 'created_at', 'id'])
    op.create_table(
        'webhook_deliveries',
        sa.Column('id', S(length=96), nullable=False),
        sa.Column('organisation_id', S(length=128), nullable=False),
        sa.Column('webhook_id', S(length=36), nullable=False),
        sa.Column('url', S(), nullable=False),
        sa.Column('event_type', S(length=32), nullable=False),
        sa.Column('session_id', S(length=36), nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('run_id', S(length=36), nullable=False),
        sa.Column('status', S(length=12), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_ms', sa.BigInteger(), nullable=False),
        sa.Column('last_status_code', sa.Integer(), nullable=False),
        sa.Column('last_error', S(), nullable=False),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('delivered_at', UTCDateTime(), nullable=True),
        sa.Column('owner_id', S(length=36), nullable=True),
        sa.Column('lease_expires_ms', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_webhook_deliveries_due', 'webhook_deliveries', ['status', 'next_attempt_ms'])
    op.create_index('ix_webhook_deliveries_order', 'webhook_deliveries', ['webhook_id', 'session_id', 'seq'])
    op.create_index('ix_webhook_deliveries_list', 'webhook_deliveries', ['organisation_id', 'webhook_id', 'created_at', 'id'])
    op.create_table(
        'webhook_org_secrets',
        sa.Column('organisation_id', S(length=128), nullable=False),
        sa.Column('secret', S(length=64), nullable=False),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('organisation_id'),
    )
    op.create_table(
        'schedules',
        sa.Column('id', S(length=36), nullable=False),
        sa.Column('organisation_id', S(length=128), nullable=False),
        sa.Column('flow_id', S(length=36), nullable=False),
        sa.Column('cron', S(length=256), nullable=False),
        sa.Column('time_zone', S(length=64), nullable=False),
        sa.Column('interval_seconds', sa.BigInteger(), nullable=False),
        sa.Column('body', sa.JSON(), nullable=False),
        sa.Column('options', sa.JSON(), nullable=False),
        sa.Column('overlap_policy', S(length=16), nullable=False),
        sa.Column('catch_up', S(length=16), nullable=False),
        sa.Column('paused', sa.Boolean(), nullable=False),
        sa.Column('next_tick_at', UTCDateTime(), nullable=True),
        sa.Column('request_id', S(length=128), nullable=True),
        sa.Column('request_digest', S(length=64), nullable=False),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('updated_at', UTCDateTime(), nullable=False),
        sa.Column('owner_id', S(length=36), nullable=True),
        sa.Column('lease_expires_ms', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('organisation_id', 'request_id', name='uq_schedules_request'),
    )
    op.create_index('ix_schedules_org_created', 'schedules', ['organisation_id', 'created_at', 'id'])
    op.create_index('ix_schedules_due', 'schedules', ['paused', 'next_tick_at'])
    with op.batch_alter_table('flow_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('schedule_id', S(length=36), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('scheduled_time', UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('webhook_url', S(), nullable=False, server_default=''))
        batch_op.create_index('ix_flow_runs_schedule_created', ['schedule_id', 'created_at', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('flow_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_flow_runs_schedule_created')
        batch_op.drop_column('webhook_url')
        batch_op.drop_column('scheduled_time')
        batch_op.drop_column('schedule_id')
    op.drop_table('schedules')
    op.drop_table('webhook_org_secrets')
    op.drop_table('webhook_deliveries')
    op.drop_table('webhooks')
