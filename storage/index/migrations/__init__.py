"""Alembic migrations of the index schema (``env.py``, ``versions/``).

:mod:`storage.index.migrate` runs them (``filmless migrate``, and ``filmless serve`` on start-up).
Each revision records the schema version it makes in ``filmless_meta`` (``SCHEMA_VERSION`` of
the revision module), so that a filmless older than the index refuses it; the head's version is
:data:`storage.index.schema.SCHEMA_VERSION`.

A new revision: change :mod:`storage.index.schema`, bump ``SCHEMA_VERSION``, then write
``versions/NNNN_<what>.py`` with ``down_revision`` the previous head (``alembic revision
--autogenerate`` drafts it: ``command.revision(alembic_config("sqlite:///<an index at head>"),
message=..., autogenerate=True)`` with :func:`storage.index.migrate.alembic_config`). Operations
that SQLite cannot ALTER in place go through ``op.batch_alter_table``. The tests check, on SQLite
and PostgreSQL, that upgrading an empty database to the head gives exactly the tables of
:mod:`storage.index.schema`.
"""
