"""Alembic environment: migrations run on the connection Database.migrate() hands in."""

from alembic import context

from flowsvc.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("flowsvc applies migrations itself on start (Database.migrate)")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
