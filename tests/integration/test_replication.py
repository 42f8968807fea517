"""storage.replication on real archives: the queue copies every object to the target, a
snapshot of the index makes the replica restorable, objects compression replaced are pruned,
a failing target is retried with the error in the status, and MinIO works as a target."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from filmless.bootstrap import Archive
from storage import export as exporting
from storage import replication
from storage.errors import ObjectStoreError
from storage.objects import LocalObjectStore
from storage.objects.s3 import S3ObjectStore
from tests.integration.test_export import SOURCE, _populate, objects, table_rows
from tests.object_stores import MinioServer
from tests.unit.support import small_ct, to_part10


def _replica_objects(folder: Path) -> set[str]:
    root = folder / "objects"
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_replication_to_a_folder(make_archive: Callable[..., Archive], tmp_path: Path) -> None:
    source = make_archive()
    _populate(source)
    folder = tmp_path / "site-b"
    replicator = replication.Replicator(source.index, source.store, exporting.folder(folder), "site-b")
    assert [s.as_dict()["pending"] for s in replication.status(source.index)] == []

    first = replicator.run_once()
    assert first.enqueued == 4 and first.copied == 4 and first.failed == 0 and first.snapshot
    assert _replica_objects(folder) == set(objects(source))
    (state,) = replication.status(source.index)
    assert state.target == "site-b" and state.replicated == 4 and state.pending == 0 and state.in_sync
    assert state.snapshot_objects == 4

    idle = replicator.run_once()
    assert idle.enqueued == 0 and idle.copied == 0

    # New studies arrive; compression replaces their objects: the replaced ones are pruned.
    _populate(source, seed=1, n=2)
    second = replicator.run_once()
    assert second.copied == 3 and second.snapshot
    assert _replica_objects(folder) == set(objects(source))
    assert replication.status(source.index)[0].replicated == 7

    target = make_archive()
    report = exporting.restore(exporting.folder(folder), target.index, target.store)
    assert report.ok, (report.errors, report.verify)
    assert objects(target) == objects(source)
    restored, original = table_rows(target), table_rows(source)
    for name in original:
        if name not in ("filmless_meta", "replication_job"):  # the replica's own bookkeeping moves on
            assert restored[name] == original[name], name


def test_objects_replaced_after_they_were_replicated_are_pruned(make_archive: Callable[..., Archive], tmp_path: Path) -> None:
    source = make_archive(compression={"mode": "background"})
    folder = tmp_path / "site-b"
    replicator = replication.Replicator(source.index, source.store, exporting.folder(folder), "site-b")
    for ds in small_ct(2, size=32, seed=5):
        source.ingest.store_file(to_part10(ds), SOURCE)
    before = replicator.run_once()
    assert before.copied == 2 and before.snapshot
    replicated = _replica_objects(folder)
    source.compressor().drain()  # new objects; the old ones are deleted from the archive
    after = replicator.run_once()
    if set(objects(source)) == replicated:
        pytest.skip("nothing was compressed")
    assert after.copied == 2 and after.pruned == 2
    assert _replica_objects(folder) == set(objects(source))


class _FailingStore(LocalObjectStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.failing = True

    def put(self, key: str, data: bytes) -> None:
        if self.failing and key.startswith("objects/"):
            raise ObjectStoreError("the other site does not answer")
        super().put(key, data)


def test_a_failing_target_is_retried(make_archive: Callable[..., Archive], tmp_path: Path) -> None:
    source = make_archive()
    _populate(source)
    dest = _FailingStore(tmp_path / "site-b")
    replicator = replication.Replicator(source.index, source.store, dest, "site-b")
    report = replicator.run_once()
    assert report.failed == 4 and report.copied == 0 and not report.snapshot
    (state,) = replication.status(source.index)
    assert state.pending == 4 and state.failing == 4 and not state.in_sync
    assert state.last_error is not None and "does not answer" in state.last_error
    assert state.oldest_pending is not None
    assert replicator.run_once().copied == 0  # backing off
    dest.failing = False
    with source.index.write() as conn:  # the back-off is over
        conn.execute(replication.replication_job.update().values(claimed_until=None))
    again = replicator.run_once()
    assert again.copied == 4 and again.snapshot
    (state,) = replication.status(source.index)
    assert state.in_sync and state.failing == 0 and state.last_error is None


@pytest.fixture(scope="module")
def minio() -> Iterator[MinioServer]:
    with MinioServer() as server:
        yield server


@pytest.mark.parametrize("index_backend", ["sqlite"], indirect=True)
def test_replication_to_minio(make_archive: Callable[..., Archive], minio: MinioServer) -> None:
    source = make_archive()
    _populate(source)
    bucket = minio.create_bucket("filmless-replica")
    dest = S3ObjectStore(minio.s3_config(bucket, "site-b/"))
    report = replication.Replicator(source.index, source.store, dest, "s3://filmless-replica/site-b").run_once()
    assert report.copied == 4 and report.snapshot
    target = make_archive()
    restored = exporting.restore(S3ObjectStore(minio.s3_config(bucket, "site-b/")), target.index, target.store)
    assert restored.ok
    assert objects(target) == objects(source)
