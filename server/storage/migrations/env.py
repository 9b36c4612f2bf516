"""Alembic's environment for Menwei's store: always run from server/storage/migrate.py with
the connection of an open write transaction (config.attributes["connection"])."""

from alembic import context

from server.storage.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
