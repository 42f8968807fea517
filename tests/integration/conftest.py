"""Fixtures of the integration tests: a real archive (index and LocalObjectStore under
``tmp_path``) built by the composition root, and probes of its tables and files.

Every test that builds an archive runs on both index backends (``[sqlite]``: the default
SQLite file; ``[postgresql]``: a new database on the session's PostgreSQL server); see
tests/conftest.py."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from filmless.bootstrap import Archive, build_archive
from filmless.settings import Settings
from storage.index import schema
from storage.objects import LocalObjectStore

TABLES = [
    schema.patient,
    schema.study,
    schema.series,
    schema.instance,
    schema.instance_version,
    schema.compression_job,
    schema.object_gc,
    schema.audit_event,
]


@pytest.fixture
def make_archive(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, new_index_url: Callable[[], str | None]
) -> Iterator[Callable[..., Archive]]:
    """Build archives from settings overrides (each with an index of its own on the test's
    backend); the environment cannot leak into them."""
    for name in list(os.environ):
        if name.startswith("FILMLESS_"):
            monkeypatch.delenv(name)
    built: list[Archive] = []

    def make(**overrides: Any) -> Archive:
        if "index" not in overrides:
            overrides["index"] = new_index_url()
        archive = build_archive(Settings(data=tmp_path / f"archive{len(built)}", **overrides))
        built.append(archive)
        return archive

    yield make
    for archive in built:
        archive.close()


@pytest.fixture
def archive(make_archive: Callable[..., Archive]) -> Archive:
    return make_archive()


def rows(archive: Archive, table: Any, *where: Any) -> list[Any]:
    with archive.index.read() as conn:
        return list(conn.execute(select(table).where(*where).order_by(table.c.pk)))


def counts(archive: Archive) -> dict[str, int]:
    with archive.index.read() as conn:
        return {t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one()) for t in TABLES}


def object_keys(archive: Archive) -> set[str]:
    return set(archive.store.keys())


def snapshot(archive: Archive) -> tuple[dict[str, int], dict[str, bytes]]:
    """Row counts of every table and every stored object's bytes."""
    return counts(archive), {key: archive.store.read(key) for key in object_keys(archive)}


def object_path(archive: Archive, key: str) -> Any:
    store = archive.store
    assert isinstance(store, LocalObjectStore)
    return store.root / key
