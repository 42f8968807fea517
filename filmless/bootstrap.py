"""The composition root: builds the index, the object store and the services once."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from filmless.settings import Settings
from storage.compression import Compressor
from storage.index import Index, create_index_engine
from storage.ingest import Ingest
from storage.objects import LocalObjectStore, ObjectStore


@dataclass
class Archive:
    """The archive's services, built from settings."""

    settings: Settings
    index: Index
    store: ObjectStore
    ingest: Ingest

    def compressor(self, worker_id: str | None = None) -> Compressor:
        return Compressor(self.index, self.store, worker_id=worker_id)

    def close(self) -> None:
        self.ingest.close()
        self.index.dispose()


def open_object_store(url: str) -> ObjectStore:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalObjectStore(Path(parsed.path))
    raise ValueError(f"unsupported storage URL scheme {parsed.scheme!r} (file:// is supported)")


def build_archive(settings: Settings, *, on_queued: Callable[[], None] | None = None) -> Archive:
    settings.data.mkdir(parents=True, exist_ok=True)
    index = Index(create_index_engine(settings.index_url))
    index.create()
    store = open_object_store(settings.storage_url)
    ingest = Ingest(
        index,
        store,
        settings.compression.policy(),
        mode=settings.compression.mode,
        max_object_size=settings.max_object_size,
        on_queued=on_queued,
    )
    return Archive(settings=settings, index=index, store=store, ingest=ingest)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pynetdicom logs every PDU at INFO; keep its own warnings and errors.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, getattr(logging, level)))
