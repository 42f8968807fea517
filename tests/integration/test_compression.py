"""The background compression worker (storage.compression.Compressor) on a real archive."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless
from sqlalchemy import update

from filmless.bootstrap import Archive
from storage import codecs, part10
from storage.compression import Compressor
from storage.index import Source, schema
from storage.objects import MemoryObjectStore, ObjectStore, new_key
from storage.verify import verify
from tests.fixtures import synthetic
from tests.integration.conftest import object_keys, object_path, rows
from tests.unit.support import encapsulated_fragments, raw_values, read, sample_bytes, small_ct, to_part10

SOURCE = Source(aet="CT01", host="10.0.0.5")
_PIXEL_ENCODING = frozenset({0x7FE00010, 0x00280006})


def _instance(archive: Archive, uid: str) -> Any:
    row = archive.index.get_instance(uid)
    assert row is not None
    return row


def test_background_mode_then_drain_to_jpeg_ls(archive: Archive) -> None:
    datasets = list(synthetic.ct_series(3, seed=4))  # 512 x 512, like real CT
    files = [to_part10(ds) for ds in datasets]
    results = [archive.ingest.store_file(f, SOURCE) for f in files]
    originals = {r.sop_instance_uid: _instance(archive, r.sop_instance_uid).object_key for r in results}
    stats = archive.index.stats()
    assert stats["pending_compression"] == 3
    received_bytes = stats["received_bytes"]
    assert stats["stored_bytes"] >= received_bytes

    archive.compressor(worker_id="test").drain()

    stats = archive.index.stats()
    assert stats["pending_compression"] == 0 and archive.index.pending_jobs() == 0
    assert received_bytes / stats["stored_bytes"] >= 3.5
    (study,) = rows(archive, schema.study)
    assert study.stored_bytes == stats["stored_bytes"]
    assert study.received_bytes == received_bytes
    # The originals went through the deletion outbox, which is empty again.
    assert rows(archive, schema.object_gc) == []
    current = {r.object_key for r in rows(archive, schema.instance)}
    assert object_keys(archive) == current
    assert not current & set(originals.values())
    for ds, data, result in zip(datasets, files, results, strict=True):
        row = _instance(archive, result.sop_instance_uid)
        assert row.stored_transfer_syntax == JPEGLSLossless
        assert row.received_transfer_syntax == ExplicitVRLittleEndian
        assert not row.pending_compression and row.compression_note is None
        stored = archive.store.read(row.object_key)
        assert codecs.sha256(stored) == row.object_sha256 and len(stored) == row.stored_size
        assert not object_path(archive, originals[result.sop_instance_uid]).exists()
        back = read(stored)
        assert back.file_meta.TransferSyntaxUID == JPEGLSLossless
        assert np.array_equal(back.pixel_array, ds.pixel_array)
        assert dict(raw_values(read(stored), skip=_PIXEL_ENCODING)) == dict(
            raw_values(read(data), skip=_PIXEL_ENCODING)
        )
    assert verify(archive.index, archive.store).ok
    assert Compressor(archive.index, archive.store).run_once() == 0


def test_jpeg2000_setting(make_archive: Any) -> None:
    archive = make_archive(compression={"codec": "jpeg2000", "by_modality": {"US": "as-received"}})
    ct = archive.ingest.store_file(to_part10(small_ct(1, size=64)[0], ImplicitVRLittleEndian), SOURCE)
    us = archive.ingest.store_file(to_part10(synthetic.us_multiframe(2, rows=32, cols=32)), SOURCE)
    assert archive.index.pending_jobs() == 1
    archive.compressor().drain()
    assert _instance(archive, ct.sop_instance_uid).stored_transfer_syntax == "1.2.840.10008.1.2.4.90"
    assert _instance(archive, us.sop_instance_uid).stored_transfer_syntax == ExplicitVRLittleEndian
    assert verify(archive.index, archive.store).ok


def test_a_job_whose_instance_was_replaced_meanwhile_discards_its_result(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = small_ct(1, size=64)[0]
    uid = archive.ingest.store_file(to_part10(ds), SOURCE).sop_instance_uid
    v1_key = _instance(archive, uid).object_key
    changed = small_ct(1, size=64)[0]
    changed.StudyDescription = "corrected"
    real_compress = codecs.compress_object
    replaced: list[str] = []

    def compress_while_a_new_version_arrives(original: bytes, target: str) -> codecs.Compressed:
        if not replaced:  # another association replaces the instance during the encode
            replaced.append(archive.ingest.store_file(to_part10(changed), SOURCE).outcome)
        return real_compress(original, target)

    monkeypatch.setattr(codecs, "compress_object", compress_while_a_new_version_arrives)
    worker = archive.compressor()
    assert worker.run_once() == 1
    assert replaced == ["replaced"]
    row = _instance(archive, uid)
    v2_key = row.object_key
    assert row.version == 2 and v2_key != v1_key
    assert row.stored_transfer_syntax == ExplicitVRLittleEndian  # the stale result was not swapped in
    assert row.pending_compression
    # The discarded result is gone; both versions' objects remain.
    assert object_keys(archive) == {v1_key, v2_key}
    assert rows(archive, schema.object_gc) == []
    assert verify(archive.index, archive.store).ok
    worker.drain()  # the new version's own job
    row = _instance(archive, uid)
    assert row.stored_transfer_syntax == JPEGLSLossless
    assert read(archive.store.read(row.object_key)).StudyDescription == "corrected"
    assert object_keys(archive) == {v1_key, row.object_key}
    assert verify(archive.index, archive.store).ok


def _expire_leases(archive: Archive) -> None:
    with archive.index.write() as conn:
        conn.execute(update(schema.compression_job).values(claimed_until=datetime.now(UTC) - timedelta(seconds=1)))


def test_a_worker_that_dies_after_writing_its_result(archive: Archive) -> None:
    uid = archive.ingest.store_file(to_part10(small_ct(1, size=64)[0]), SOURCE).sop_instance_uid
    original_key = _instance(archive, uid).object_key
    # A worker claims the job, writes its result (write-ahead note first), then dies.
    (job,) = archive.index.claim_jobs("dead-worker", 1, timedelta(minutes=10))
    result = codecs.compress_object(archive.store.read(job.object_key), job.target_transfer_syntax)
    assert result.data is not None
    abandoned = new_key()
    archive.index.record_job_target(job, abandoned)
    archive.store.put(abandoned, result.data)
    # While the lease runs, nobody else takes the job, and the result is not an orphan.
    assert archive.compressor(worker_id="live").run_once() == 0
    report = verify(archive.index, archive.store)
    assert report.ok, report
    assert _instance(archive, uid).object_key == original_key
    # The lease expires; a new worker cleans up and completes the job.
    _expire_leases(archive)
    assert archive.compressor(worker_id="live").run_once() == 1
    row = _instance(archive, uid)
    assert row.stored_transfer_syntax == JPEGLSLossless and not row.pending_compression
    assert not archive.store.exists(abandoned) and not archive.store.exists(original_key)
    assert object_keys(archive) == {row.object_key}
    assert archive.index.pending_jobs() == 0 and rows(archive, schema.object_gc) == []
    assert verify(archive.index, archive.store).ok


def test_a_tiny_lease_expires_by_itself(archive: Archive) -> None:
    archive.ingest.store_file(to_part10(small_ct(1, size=32)[0]), SOURCE)
    (job,) = archive.index.claim_jobs("dead-worker", 1, timedelta(microseconds=1))
    archive.index.record_job_target(job, new_key())  # noted, never written
    assert archive.compressor().run_once() == 1
    assert archive.index.pending_jobs() == 0
    assert verify(archive.index, archive.store).ok


def test_a_dead_workers_result_is_cleaned_when_the_instance_is_replaced(archive: Archive) -> None:
    ds = small_ct(1, size=32)[0]
    uid = archive.ingest.store_file(to_part10(ds), SOURCE).sop_instance_uid
    (job,) = archive.index.claim_jobs("dead-worker", 1, timedelta(minutes=10))
    result = codecs.compress_object(archive.store.read(job.object_key), job.target_transfer_syntax)
    abandoned = new_key()
    archive.index.record_job_target(job, abandoned)
    archive.store.put(abandoned, result.data or b"")
    ds.StudyDescription = "new version while the worker is dead"
    archive.ingest.store_file(to_part10(ds), SOURCE)
    archive.compressor().drain()
    assert not archive.store.exists(abandoned)
    report = verify(archive.index, archive.store)
    assert report.ok, report
    assert _instance(archive, uid).stored_transfer_syntax == JPEGLSLossless


def _damaged(name: str) -> bytes:
    """A compressed sample whose codestream header is overwritten; the element structure
    (item lengths, delimiters) stays intact."""
    data = bytearray(sample_bytes(name))
    offset, _length = encapsulated_fragments(bytes(data))[1]
    data[offset + 2 : offset + 32] = bytes((i * 37 + 11) & 0xFF for i in range(30))
    return bytes(data)


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"])
def test_corrupt_compressed_input_is_kept_and_flagged(archive: Archive, name: str) -> None:
    data = _damaged(name)
    result = archive.ingest.store_file(data, SOURCE)
    row = _instance(archive, result.sop_instance_uid)
    ts = part10.split(data).transfer_syntax_uid
    assert row.stored_transfer_syntax == ts and row.pending_compression
    archive.compressor().drain()
    row = _instance(archive, result.sop_instance_uid)
    assert "corrupt-pixel-data" in row.flags.split(",")
    assert not row.pending_compression
    assert (row.compression_note or "").startswith("compressed pixel data does not decode")
    assert row.stored_transfer_syntax == ts
    assert archive.store.read(row.object_key).endswith(part10.split(data).dataset)  # as received
    assert verify(archive.index, archive.store).ok


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm"])
def test_sound_compressed_input_is_kept_unflagged(archive: Archive, name: str) -> None:
    result = archive.ingest.store_file(sample_bytes(name), SOURCE)
    key = _instance(archive, result.sop_instance_uid).object_key
    archive.compressor().drain()
    row = _instance(archive, result.sop_instance_uid)
    assert row.flags == "" and not row.pending_compression and row.object_key == key


def test_what_cannot_be_compressed_is_kept_with_a_note(archive: Archive) -> None:
    dose = archive.ingest.store_file(sample_bytes("rtdose_1frame.dcm"), SOURCE)
    pixels = small_ct(1, size=32, seed=8)[0]
    arr = pixels.pixel_array.copy()
    arr[0, 0] = 0xF000  # bits above Bits Stored
    pixels.PixelData = arr.tobytes()
    overlay = archive.ingest.store_file(to_part10(pixels), SOURCE)
    big = archive.ingest.store_file(sample_bytes("MR_small_bigendian.dcm"), SOURCE)
    assert not _instance(archive, big.sop_instance_uid).pending_compression  # never queued
    archive.compressor().drain()
    for result, note in ((dose, "Bits Allocated 32"), (overlay, "above Bits Stored")):
        row = _instance(archive, result.sop_instance_uid)
        assert "not-compressed" in row.flags.split(",")
        assert note in (row.compression_note or "")
        assert row.stored_transfer_syntax == row.received_transfer_syntax
    assert _instance(archive, big.sop_instance_uid).stored_transfer_syntax == ExplicitVRBigEndian
    assert verify(archive.index, archive.store).ok


def test_a_missing_object_is_flagged(archive: Archive) -> None:
    uid = archive.ingest.store_file(to_part10(small_ct(1, size=32)[0]), SOURCE).sop_instance_uid
    archive.store.delete(_instance(archive, uid).object_key)
    archive.compressor().drain()
    row = _instance(archive, uid)
    assert "missing-object" in row.flags.split(",") and not row.pending_compression
    assert verify(archive.index, archive.store).missing


def test_a_store_failure_is_retried_later(archive: Archive) -> None:
    uid = archive.ingest.store_file(to_part10(small_ct(1, size=32)[0]), SOURCE).sop_instance_uid
    original_key = _instance(archive, uid).object_key

    class FailingPuts(MemoryObjectStore):
        def __init__(self, inner: ObjectStore) -> None:
            super().__init__()
            self.inner = inner
            self.fail_puts = True

        def read(self, key: str) -> bytes:
            return self.inner.read(key)

    failing = Compressor(archive.index, FailingPuts(archive.store), worker_id="failing")
    assert failing.run_once() == 1
    (job,) = rows(archive, schema.compression_job)
    assert job.attempts == 1 and "unavailable" in (job.last_error or "")
    assert job.claimed_until is not None  # released with a back-off delay
    assert _instance(archive, uid).object_key == original_key  # still readable as received
    assert archive.compressor().run_once() == 0  # not before the back-off
    _expire_leases(archive)
    archive.compressor().drain()
    assert _instance(archive, uid).stored_transfer_syntax == JPEGLSLossless
    assert verify(archive.index, archive.store).ok


def test_a_kept_result_for_a_replaced_instance_leaves_the_new_job(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old job ends 'kept' after the instance was replaced: the new version's job (which
    SQLite may give the same pk) must survive and run."""
    ds = small_ct(1, size=32)[0]
    uid = archive.ingest.store_file(to_part10(ds), SOURCE).sop_instance_uid
    real_compress = codecs.compress_object
    calls: list[int] = []

    def replace_then_give_up(original: bytes, target: str) -> codecs.Compressed:
        calls.append(1)
        if len(calls) == 1:
            ds.StudyDescription = "second version"
            archive.ingest.store_file(to_part10(ds), SOURCE)
            return codecs.Compressed(None, ExplicitVRLittleEndian, "kept as received: test")
        return real_compress(original, target)

    monkeypatch.setattr(codecs, "compress_object", replace_then_give_up)
    archive.compressor().drain()
    row = _instance(archive, uid)
    assert len(calls) == 2
    assert row.version == 2 and row.stored_transfer_syntax == JPEGLSLossless
    assert row.flags == "" and not row.pending_compression
    assert verify(archive.index, archive.store).ok


def test_giving_up_after_a_written_result_leaves_no_orphan(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    from storage.errors import IndexUnavailable

    uid = archive.ingest.store_file(to_part10(small_ct(1, size=32)[0]), SOURCE).sop_instance_uid

    def swap_fails(*args: Any, **kwargs: Any) -> bool:
        raise IndexUnavailable("index unavailable: simulated")

    worker = Compressor(archive.index, archive.store, max_attempts=1)
    monkeypatch.setattr(archive.index, "finish_job_swapped", swap_fails)
    assert worker.run_once() == 1  # result written, swap failed, attempts exhausted
    monkeypatch.undo()
    worker.collect_garbage()
    row = _instance(archive, uid)
    assert "not-compressed" in row.flags.split(",")
    assert "compression failed" in (row.compression_note or "")
    assert object_keys(archive) == {row.object_key}
    report = verify(archive.index, archive.store)
    assert report.ok, report


def _run_worker_until_done(archive: Archive, **kwargs: Any) -> float:
    import threading
    import time

    stop = threading.Event()
    compressor = archive.compressor(worker_id="test-forever")
    started = time.monotonic()
    thread = threading.Thread(target=compressor.run_forever, args=(stop,), kwargs={"idle_sleep": 0.02, **kwargs})
    thread.start()
    try:
        while archive.index.pending_jobs() and time.monotonic() - started < 30:
            time.sleep(0.02)
        return time.monotonic() - started
    finally:
        stop.set()
        thread.join(10)


def test_the_worker_waits_while_images_arrive_but_not_forever(archive: Archive) -> None:
    archive.ingest.store_file(to_part10(small_ct(1, size=32)[0]), SOURCE)
    elapsed = _run_worker_until_done(archive, busy=lambda: True, max_deferral=0.3)
    assert archive.index.pending_jobs() == 0
    assert elapsed >= 0.3  # deferred first, then worked all the same


def test_a_stopped_worker_releases_its_claims(archive: Archive) -> None:
    archive.ingest.store_file(to_part10(small_ct(1, size=32)[0]), SOURCE)
    _run_worker_until_done(archive)
    assert archive.index.pending_jobs() == 0
    archive.ingest.store_file(to_part10(small_ct(2, size=32, seed=9)[1]), SOURCE)
    claimed = archive.index.claim_jobs("gone:1", 10, timedelta(minutes=10))
    assert claimed and archive.index.release_claims("gone:1") == len(claimed)
    assert archive.compressor().run_once() == len(claimed)
