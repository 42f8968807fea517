"""The index schema's migrations on SQLite and PostgreSQL: alembic makes exactly the schema of
storage/index/schema.py, indexes made before alembic are adopted, a newer index is refused
(by ``filmless migrate`` and ``filmless serve`` alike), and processes that start together on
an empty database create it once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from filmless.cli import main
from storage.errors import IndexUnavailable
from storage.index import ApplicationEntity, Index, create_index_engine, migrate
from storage.index.repository import SERVICES
from storage.index.schema import SCHEMA_VERSION, include_object_for, application_entity, meta, metadata


@pytest.fixture
def url(tmp_path: Path, new_index_url: Callable[[], str | None]) -> str:
    """A new, empty index on the test's backend."""
    return new_index_url() or f"sqlite:///{tmp_path / 'index.sqlite'}"


def _open(url: str) -> Index:
    return Index(create_index_engine(url))


def _schema_differences(index: Index) -> list[Any]:
    with index.engine.connect() as conn:
        opts = {
            "compare_type": True,
            "compare_server_default": False,
            "include_object": include_object_for(conn.dialect.name),
        }
        context = MigrationContext.configure(conn, opts=opts)
        return list(compare_metadata(context, metadata))


def test_the_migrations_make_the_schema_of_schema_py(url: str) -> None:
    index = _open(url)
    try:
        before, after = index.create()
        assert before.empty and after.current and after.revision == migrate.head()
        assert after.schema_version == SCHEMA_VERSION
        assert _schema_differences(index) == []
        assert index.create()[0].current  # nothing left to do
        # The head revision makes the version schema.py declares.
        script = migrate._script().get_revision(migrate.head())
        assert script is not None and script.module.SCHEMA_VERSION == SCHEMA_VERSION
    finally:
        index.dispose()


def test_downgrade_to_nothing_and_up_again(url: str) -> None:
    index = _open(url)
    try:
        index.create()
        with index.engine.begin() as conn:
            command.downgrade(migrate.alembic_config(connection=conn), "base")
        with index.engine.connect() as conn:
            assert set(sa.inspect(conn).get_table_names()) <= {"alembic_version"}
        assert index.create()[1].current
        assert _schema_differences(index) == []
    finally:
        index.dispose()


def _made_before_alembic(url: str, version: int) -> None:
    """An index as filmless made it before alembic: create_all, a filmless_meta schema
    version and, for version 1, an AE registry without the permission columns."""
    engine = create_index_engine(url)
    try:
        with engine.begin() as conn:
            metadata.create_all(conn)
            conn.execute(sa.insert(meta).values(key="schema_version", value=str(version)))
            if version == 1:
                for name in ("may_echo", "may_store", "may_find", "may_move", "may_get", "ascii_only"):
                    conn.execute(sa.text(f"ALTER TABLE application_entity DROP COLUMN {name}"))
                conn.execute(
                    sa.text(
                        "INSERT INTO application_entity (ae_title, host, port, description, created_at) "
                        "VALUES ('CT1', '10.0.0.21', 104, 'CT room 1', CURRENT_TIMESTAMP)"
                    )
                )
            else:
                conn.execute(
                    sa.insert(application_entity).values(
                        ae_title="CT1", host="10.0.0.21", port=104, description="CT room 1",
                        created_at=sa.func.current_timestamp(), may_store=False,
                    )
                )
    finally:
        engine.dispose()


@pytest.mark.parametrize("version", [1, 2])
def test_an_index_made_before_alembic_is_adopted(url: str, version: int) -> None:
    _made_before_alembic(url, version)
    index = _open(url)
    try:
        state = index.schema_state()
        assert state.before_alembic and state.schema_version == version
        before, after = index.create()
        assert before.before_alembic and after.current and after.schema_version == SCHEMA_VERSION
        ae = index.get_ae("CT1")
        assert ae is not None and ae.description == "CT room 1"
        expected = SERVICES if version == 1 else tuple(s for s in SERVICES if s != "store")
        assert ae.services == expected and not ae.ascii_only
        index.add_ae(ApplicationEntity("WS", "10.0.0.5", 104, may_get=False))
        assert index.get_ae("WS").services == ("echo", "store", "find", "move")  # type: ignore[union-attr]
        assert _schema_differences(index) == []
    finally:
        index.dispose()


def _stamp(url: str, revision: str) -> None:
    engine = create_index_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
    finally:
        engine.dispose()


def test_an_index_of_a_newer_filmless_is_refused(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    index = _open(url)
    index.create()
    index.dispose()
    _stamp(url, "9999_from_the_future")
    index = _open(url)
    try:
        state = index.schema_state()
        assert state.newer and not state.current
        with pytest.raises(IndexUnavailable, match="newer than this filmless"):
            index.create()
    finally:
        index.dispose()
    assert main(["migrate", "--index", url]) == 1
    assert "newer than this filmless" in capsys.readouterr().out
    serve = ["serve", "--index", url, "--data", str(tmp_path / "data"), "--dicom-port", "0", "--http-port", "0"]
    assert main(serve) == 1
    assert "newer than this filmless" in capsys.readouterr().err
    _stamp(url, migrate.head())  # and refused by its filmless_meta schema version too
    engine = create_index_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.update(meta).where(meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION + 1)))
    engine.dispose()
    assert main(["migrate", "--index", url]) == 1
    assert "newer than this filmless" in capsys.readouterr().out


def test_filmless_migrate(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "--check", "--index", url]) == 1
    assert "empty" in capsys.readouterr().out
    assert main(["migrate", "--index", url]) == 0
    assert f"now revision {migrate.head()}" in capsys.readouterr().out
    assert main(["migrate", "--check", "--index", url]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["migrate", "--index", url]) == 0


def test_filmless_migrate_a_data_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    assert main(["migrate", "--data", str(data)]) == 0
    assert (data / "index.sqlite").is_file()
    assert "up to date" in capsys.readouterr().out.replace("\n", " ")


def test_processes_starting_together_create_the_schema_once(url: str) -> None:
    indexes = [_open(url) for _ in range(4)]
    barrier = threading.Barrier(len(indexes))
    results: list[Any] = []

    def start(index: Index) -> None:
        barrier.wait()
        try:
            results.append(index.create())
        except Exception as exc:  # noqa: BLE001 - reported below
            results.append(exc)

    threads = [threading.Thread(target=start, args=(index,)) for index in indexes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert all(isinstance(r, tuple) for r in results), results
        assert sum(before.empty for before, _after in results) == 1
        assert all(after.current for _before, after in results)
    finally:
        for index in indexes:
            index.dispose()
