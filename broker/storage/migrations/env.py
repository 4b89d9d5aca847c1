"""Alembic's environment: migrations run on the connection the broker hands over
(``broker.storage.schema``), inside the transaction it already holds, never from a URL
in an ini file, so the one configured ``[storage] url`` is the only truth."""

from alembic import context

from broker.storage.db import audit_metadata, metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=[metadata, audit_metadata],
    # SQLite alters a table by copying it; batch mode does that. A future batch step on a
    # table others reference must run with PRAGMA foreign_keys off, which SQLite allows
    # only outside a transaction: such a step needs its own handling here.
    render_as_batch=True,
    transactional_ddl=True,  # both engines roll DDL back: a failed step changes nothing
)
with context.begin_transaction():
    context.run_migrations()
