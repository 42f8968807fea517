"""Fixtures of the unit tests: the ingest service over the fakes (MemoryObjectStore) and a
throw-away SQLite index file."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from storage.codecs import CompressionPolicy
from storage.index import Index, create_index_engine
from storage.ingest import CompressionMode, Ingest
from storage.objects import MemoryObjectStore


@dataclass
class MemoryArchive:
    index: Index
    store: MemoryObjectStore
    ingest: Ingest

    def close(self) -> None:
        self.ingest.close()
        self.index.dispose()


def memory_archive(path: Path, mode: CompressionMode = CompressionMode.BACKGROUND) -> MemoryArchive:
    index = Index(create_index_engine(f"sqlite:///{path}"))
    index.create()
    store = MemoryObjectStore()
    return MemoryArchive(index, store, Ingest(index, store, CompressionPolicy(), mode=mode))


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[MemoryArchive]:
    built = memory_archive(tmp_path / "index.sqlite")
    yield built
    built.close()


@pytest.fixture(scope="module")
def shared_archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MemoryArchive]:
    built = memory_archive(tmp_path_factory.mktemp("index") / "index.sqlite")
    yield built
    built.close()
