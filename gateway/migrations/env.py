"""Alembic environment: the gateway passes its own connection; nothing is read from alembic.ini."""

from __future__ import annotations

from alembic import context

from gateway.audit import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through gateway.audit.upgrade_schema, which passes a connection")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
