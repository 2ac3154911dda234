"""flow_runs' status, schedule and evaluation indexes hold only the rows they are asked about

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03

Every run had an entry in three status indexes and in the schedule index (under an empty
schedule_id when it had none): pages written on every commit for rows no query looks up by
those keys. Queries ask only for active runs (QUEUED, RUNNING), runs of a schedule and (a new
index) runs that named an evaluation job, so the indexes hold only those rows: a run inserted
already finished, with no schedule and no evaluation, adds no entry to any of them.
"""

from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

_ACTIVE = "status IN ('QUEUED', 'RUNNING')"
_SCHEDULED = "schedule_id != ''"
_WITH_EVAL_JOB = "eval_job_id != ''"


def _partial(name: str, columns: list[str], where: str) -> None:
    op.create_index(
        name, 'flow_runs', columns, sqlite_where=sa.text(where), postgresql_where=sa.text(where)
    )


def upgrade() -> None:
    op.drop_index('ix_flow_runs_status', table_name='flow_runs')
    op.drop_index('ix_flow_runs_org_status', table_name='flow_runs')
    op.drop_index('ix_flow_runs_session_status', table_name='flow_runs')
    op.drop_index('ix_flow_runs_schedule_created', table_name='flow_runs')
    _partial('ix_flow_runs_active_session', ['session_id', 'created_at', 'id'], _ACTIVE)
    _partial('ix_flow_runs_active_org_flow', ['organisation_id', 'flow_id'], _ACTIVE)
    _partial('ix_flow_runs_schedule_created', ['schedule_id', 'created_at', 'id'], _SCHEDULED)
    _partial('ix_flow_runs_eval_job', ['eval_job_id'], _WITH_EVAL_JOB)


def downgrade() -> None:
    op.drop_index('ix_flow_runs_eval_job', table_name='flow_runs')
    op.drop_index('ix_flow_runs_schedule_created', table_name='flow_runs')
    op.drop_index('ix_flow_runs_active_org_flow', table_name='flow_runs')
    op.drop_index('ix_flow_runs_active_session', table_name='flow_runs')
    op.create_index('ix_flow_runs_schedule_created', 'flow_runs', ['schedule_id', 'created_at', 'id'])
    op.create_index('ix_flow_runs_session_status', 'flow_runs', ['session_id', 'status'])
    op.create_index('ix_flow_runs_org_status', 'flow_runs', ['organisation_id', 'status'])
    op.create_index('ix_flow_runs_status', 'flow_runs', ['status'])
