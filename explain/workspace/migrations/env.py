"""Alembic environment: run on the connection `explain.workspace.db.migrate` passes in."""
from alembic import context

from explain.workspace.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
