"""a session's messages in a table of their own, appended to; the session row counts them

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29

The conversation was a JSON list in the session row, encoded and rewritten on every write of
the session: a run on a long session cost more the longer it was. Existing lists move into
`session_messages` (run_id "": which run added a message was not recorded before).
"""

import json
from datetime import UTC, datetime
from typing import Any

from alembic import op
import sqlalchemy as sa
import sqlmodel

from flowsvc.store.tables import UTCDateTime


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

S = sqlmodel.sql.sqltypes.AutoString
_BATCH = 500  # sessions moved per round: the lists are read into memory


def _messages(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):  # SQLite's JSON arrives as text through a plain select
        value = json.loads(value)
    return list(value or [])


def upgrade() -> None:
    messages = op.create_table(
        'session_messages',
        sa.Column('session_id', S(length=36), nullable=False),
        sa.Column('position', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('id', S(), nullable=False),
        sa.Column('run_id', S(length=36), nullable=False),
        sa.Column('role', S(), nullable=False),
        sa.Column('content', S(), nullable=False),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('session_id', 'position'),
    )
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('messages_count', sa.Integer(), nullable=False, server_default='0')
        )

    conn = op.get_bind()
    sessions = sa.table(
        'sessions',
        sa.column('id', S()),
        sa.column('messages', sa.JSON()),
        sa.column('messages_count', sa.Integer()),
    )
    after = ''
    while True:
        rows = conn.execute(
            sa.select(sessions.c.id, sessions.c.messages)
            .where(sessions.c.id > after)
            .order_by(sessions.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            break
        after = rows[-1].id
        moved = []
        for row in rows:
            listed = _messages(row.messages)
            if not listed:
                continue
            for position, m in enumerate(listed, start=1):
                moved.append({
                    'session_id': row.id,
                    'position': position,
                    'id': m['id'],
                    'run_id': '',
                    'role': m['role'],
                    'content': m['content'],
                    'created_at': _when(m['date']),
                })
            conn.execute(
                sessions.update()
                .where(sessions.c.id == row.id)
                .values(messages_count=len(listed))
            )
        if moved:
            conn.execute(messages.insert(), moved)

    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.drop_column('messages')


def _when(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def downgrade() -> None:
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('messages', sa.JSON(), nullable=False, server_default='[]'))
    conn = op.get_bind()
    sessions = sa.table('sessions', sa.column('id', S()), sa.column('messages', sa.JSON()))
    messages = sa.table(
        'session_messages',
        sa.column('session_id', S()),
        sa.column('position', sa.Integer()),
        sa.column('id', S()),
        sa.column('role', S()),
        sa.column('content', S()),
        sa.column('created_at', UTCDateTime()),
    )
    current = ''
    listed: list[dict[str, Any]] = []
    query = sa.select(messages).order_by(messages.c.session_id, messages.c.position)
    for row in conn.execute(query).all():
        if row.session_id != current and listed:
            conn.execute(
                sessions.update().where(sessions.c.id == current).values(messages=listed)
            )
            listed = []
        current = row.session_id
        listed.append({
            'id': row.id,
            'date': row.created_at.isoformat(),
            'role': row.role,
            'content': row.content,
        })
    if listed:
        conn.execute(sessions.update().where(sessions.c.id == current).values(messages=listed))
    with op.batch_alter_table('sessions', schema=None) as batch_op:
        batch_op.drop_column('messages_count')
    op.drop_table('session_messages')
