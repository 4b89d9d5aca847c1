"""Alembic's environment: migrations run on the connection the broker hands over
(``broker.storage.schema``), inside the transaction it already holds, never from a URL
in an ini file, so the one configured ``[storage] url`` is the only truth."""

from alembic import context

from broker.storage.db import audit_metadata, metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=[metadata, audit_metadata],
    render_as_batch=True,  # SQLite alters a table by copying it; batch mode does that
    transactional_ddl=True,  # both engines roll DDL back: a failed step changes nothing
)
with context.begin_transaction():
    context.run_migrations()
