"""Alembic's environment for the index: migrations run on the connection filmless hands over
(``config.attributes["connection"]``, inside its transaction), or on an engine built from
``sqlalchemy.url`` the way filmless builds it, or as SQL text (offline mode)."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from storage.index.engine import create_index_engine, index_url
from storage.index.schema import include_object_for, metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=include_object_for(connection.dialect.name),
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    if context.is_offline_mode():
        context.configure(
            url=index_url(config.get_main_option("sqlalchemy.url") or ""),
            target_metadata=metadata,
            literal_binds=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_index_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.connect() as connection:
            _run(connection)
            connection.commit()
    finally:
        engine.dispose()


_main()
