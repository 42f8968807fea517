"""Index URLs: plain PostgreSQL URLs use psycopg 3; only SQLite and PostgreSQL are accepted."""

from __future__ import annotations

import pytest

from storage.index import create_index_engine
from storage.index.engine import index_url


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgresql://filmless:secret@db.example:5433/pacs", "postgresql+psycopg"),
        ("postgres://filmless@db.example/pacs", "postgresql+psycopg"),
        ("postgresql+psycopg://filmless@db.example/pacs", "postgresql+psycopg"),
        ("sqlite:////var/lib/filmless/index.sqlite", "sqlite"),
    ],
)
def test_index_urls(url: str, driver: str) -> None:
    parsed = index_url(url)
    assert parsed.drivername == driver
    assert parsed.database in ("pacs", "/var/lib/filmless/index.sqlite")


def test_a_postgresql_engine_is_built_without_connecting() -> None:
    engine = create_index_engine("postgresql://filmless@127.0.0.1:1/pacs")
    try:
        assert engine.dialect.driver == "psycopg"
        assert engine.pool._pre_ping  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def test_other_databases_are_refused() -> None:
    with pytest.raises(ValueError, match="sqlite:/// or postgresql://"):
        create_index_engine("mysql://filmless@db.example/pacs")
