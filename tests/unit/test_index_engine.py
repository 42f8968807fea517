"""Index URLs: plain PostgreSQL URLs use psycopg 3; only SQLite and PostgreSQL are accepted.
SQLite's commits are made durable after the write lock is released."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storage.index import create_index_engine
from storage.index.engine import WriteLock, index_url


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


def test_make_durable_syncs_the_wal_or_the_database_once_the_wal_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "index.sqlite"
    database.write_bytes(b"db")
    lock = WriteLock(str(tmp_path / "index.sqlite.writelock"), str(database))
    synced: list[str] = []
    monkeypatch.setattr("storage.index.engine.os.fdatasync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")))
    lock.make_durable()  # no WAL: checkpointed into the database file and removed
    (tmp_path / "index.sqlite-wal").write_bytes(b"wal")
    lock.make_durable()
    assert synced == [str(database), str(database) + "-wal"]
    database.unlink()
    (tmp_path / "index.sqlite-wal").unlink()
    with pytest.raises(FileNotFoundError):
        lock.make_durable()  # no database at all is a failure, never a silent success
    lock.close()
    WriteLock(None).make_durable()  # in memory: nothing to do
