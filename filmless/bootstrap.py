"""The composition root: builds the index, the object store and the services once."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from filmless.settings import Settings, load_settings
from storage.compression import Compressor
from storage.errors import ObjectStoreUnreachable
from storage.index import Index, create_index_engine
from storage.ingest import Ingest
from storage.objects import LocalObjectStore, ObjectStore, layers
from storage.objects.encrypted import EncryptedObjectStore, parse_keys as parse_encryption_keys
from storage.objects.spool import SpoolingObjectStore, SpoolUploader, spool_usage

log = logging.getLogger("filmless.bootstrap")


@dataclass
class Archive:
    """The archive's services, built from settings."""

    settings: Settings
    index: Index
    store: ObjectStore
    ingest: Ingest

    @property
    def spooling(self) -> SpoolingObjectStore | None:
        """The spooling layer of the object store (None: no spool)."""
        return _spooling(self.store)

    def compressor(self, worker_id: str | None = None) -> Compressor:
        return Compressor(self.index, self.store, worker_id=worker_id)

    def close(self) -> None:
        self.ingest.close()
        self.index.dispose()


def open_object_store(url: str, settings: Settings | None = None, *, spool: Path | None = None) -> ObjectStore:
    """The object store of a storage URL: ``file:///path`` or ``s3://bucket/prefix`` (reached
    with the ``s3_*`` settings), wrapped in client-side encryption when keys are configured.

    With a ``spool`` directory, objects the store fails to take are spooled there when
    ``settings.spool_enabled`` (:class:`SpoolingObjectStore`); what a spool already holds is
    read from it (and uploaded by :func:`start_spool_uploader`) even when spooling is off. The
    spool is under the encryption: it holds what the store would."""
    settings = settings if settings is not None else load_settings()
    parsed = urlparse(url)
    store: ObjectStore
    if parsed.scheme == "file":
        store = LocalObjectStore(Path(parsed.path))
    elif parsed.scheme == "s3":
        store = _s3_store(url, settings)
    else:
        raise ValueError(f"unsupported storage URL scheme {parsed.scheme!r} (file:// and s3:// are supported)")
    if spool is not None:
        spool_objects = spool / "objects"
        if settings.spool_enabled or spool_usage(spool_objects).objects:
            store = SpoolingObjectStore(
                store, LocalObjectStore(spool_objects), spool_writes=settings.spool_enabled
            )
    if settings.storage_encryption_keys is not None:
        active, keys = parse_encryption_keys(settings.storage_encryption_keys.get_secret_value())
        store = EncryptedObjectStore(store, keys, active)
    return store


def check_object_store(store: ObjectStore) -> None:
    """Raise :class:`storage.errors.ObjectStoreError` unless the store answers: for S3, the
    bucket exists and the credentials are accepted. With spooling on, a store that does not
    answer (:class:`ObjectStoreUnreachable`) is only a warning: objects are spooled until it does."""
    spooling = _spooling(store)
    inner = spooling.inner if spooling is not None else store.inner if isinstance(store, EncryptedObjectStore) else store
    try:
        check_bucket = getattr(inner, "check_bucket", None)
        if check_bucket is not None:
            check_bucket()
        else:
            inner.exists("healthz/probe")
    except ObjectStoreUnreachable as exc:
        if spooling is None or not spooling.spool_writes:
            raise
        spooling.remote_failed(exc)


def _spooling(store: ObjectStore) -> SpoolingObjectStore | None:
    return next((layer for layer in layers(store) if isinstance(layer, SpoolingObjectStore)), None)


def start_spool_uploader(archive: Archive) -> SpoolUploader | None:
    """Start uploading what the archive's spool holds (None: no spool). One uploader works
    per spool directory (a lock file beside it); others wait their turn."""
    spooling = archive.spooling
    if spooling is None:
        return None
    if spooling.spool_writes:
        log.info("objects the object store fails to take are spooled under %s", spooling.spool.root)
    uploader = SpoolUploader(spooling, archive.settings.spool_path / "uploader.lock")
    uploader.start()
    return uploader


def _s3_store(url: str, settings: Settings) -> ObjectStore:
    from storage.objects.s3 import S3Config, S3ObjectStore, parse_s3_url

    bucket, prefix = parse_s3_url(url)
    secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key is not None else None
    return S3ObjectStore(
        S3Config(
            endpoint=settings.s3_endpoint,
            bucket=bucket,
            prefix=prefix,
            access_key=settings.s3_access_key,
            secret_key=secret,
            region=settings.s3_region,
            secure=settings.s3_secure,
            path_style=settings.s3_path_style,
            sse=settings.s3_sse,
            sse_kms_key_id=settings.s3_sse_kms_key_id,
            part_size=settings.s3_part_size,
        )
    )


def build_archive(settings: Settings, *, on_queued: Callable[[], None] | None = None) -> Archive:
    settings.data.mkdir(parents=True, exist_ok=True)
    index = Index(create_index_engine(settings.index_url))
    try:
        index.create()  # creates or upgrades the schema; refuses an index of a newer filmless
        store = open_object_store(settings.storage_url, settings, spool=settings.spool_path)
    except BaseException:
        index.dispose()
        raise
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
