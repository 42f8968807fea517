"""storage.ingest over the fakes: a MemoryObjectStore and a throw-away SQLite index."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless

from storage import part10
from storage.errors import RejectedInstance
from storage.index import Source
from storage.ingest import CompressionMode, Outcome, describe_rejection
from tests.unit.conftest import MemoryArchive, memory_archive
from tests.unit.support import read, sample_bytes, small_ct, to_part10

SOURCE = Source(aet="UNIT", host="127.0.0.1")
DAMAGE_CASES = [
    to_part10(small_ct(1, size=16)[0]),
    to_part10(small_ct(1, size=16, seed=1)[0], ImplicitVRLittleEndian),
    sample_bytes("rtplan.dcm"),
    sample_bytes("test-SR.dcm"),
    sample_bytes("JPEG2000.dcm"),
]


def test_store_then_duplicate(archive: MemoryArchive) -> None:
    data = to_part10(small_ct(1, size=16)[0])
    first = archive.ingest.store_file(data, SOURCE)
    assert first.outcome is Outcome.STORED
    assert first.stored_transfer_syntax == ExplicitVRLittleEndian
    keys = list(archive.store.keys())
    assert len(keys) == 1
    stored = archive.store.read(keys[0])
    assert stored.endswith(part10.split(data).dataset)  # the dataset bytes as received
    row = archive.index.get_instance(first.sop_instance_uid)
    assert row is not None and row.object_key == keys[0] and row.pending_compression
    again = archive.ingest.store_file(data, SOURCE)
    assert again.outcome is Outcome.DUPLICATE
    assert list(archive.store.keys()) == keys


def test_inline_mode_compresses_before_returning(tmp_path: Path) -> None:
    built = memory_archive(tmp_path / "index.sqlite", CompressionMode.INLINE)
    try:
        result = built.ingest.store_file(to_part10(small_ct(1, size=32)[0]), SOURCE)
        assert result.stored_transfer_syntax == JPEGLSLossless
        row = built.index.get_instance(result.sop_instance_uid)
        assert row is not None
        assert not row.pending_compression
        assert row.stored_transfer_syntax == JPEGLSLossless
        assert row.received_transfer_syntax == ExplicitVRLittleEndian
        assert built.index.pending_jobs() == 0
        assert read(built.store.read(row.object_key)).file_meta.TransferSyntaxUID == JPEGLSLossless
    finally:
        built.close()


def test_inline_mode_keeps_what_it_cannot_compress(tmp_path: Path) -> None:
    built = memory_archive(tmp_path / "index.sqlite", CompressionMode.INLINE)
    try:
        result = built.ingest.store_file(sample_bytes("rtdose_1frame.dcm"), SOURCE)
        row = built.index.get_instance(result.sop_instance_uid)
        assert row is not None and row.stored_transfer_syntax == row.received_transfer_syntax
        assert "Bits Allocated 32" in (row.compression_note or "")
    finally:
        built.close()


# As in production, pydicom's remarks on damaged values (e.g. an invalid UID) stay warnings.
@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=150, deadline=None, database=None)
@given(
    case=st.sampled_from(range(len(DAMAGE_CASES))),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=3),
    cut=st.none() | st.floats(0, 1),
)
def test_damaged_input_is_stored_or_rejected_cleanly(
    shared_archive: MemoryArchive, case: int, edits: list[tuple[float, int]], cut: float | None
) -> None:
    """Whatever the damage, ingest either stores the object or raises a RejectedInstance;
    a rejection leaves the store as it was."""
    damaged = bytearray(DAMAGE_CASES[case])
    span = min(len(damaged), 2048) - 132
    for where, value in edits:
        damaged[132 + int(where * span)] = value
    if cut is not None:
        damaged = damaged[: int(cut * len(damaged))]
    before = set(shared_archive.store.keys())
    try:
        shared_archive.ingest.store_file(bytes(damaged), SOURCE)
    except RejectedInstance as exc:
        assert set(shared_archive.store.keys()) == before
        assert describe_rejection(exc).startswith(type(exc).__name__)


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm"])
def test_compressed_objects_are_kept_and_queued_for_a_decode_check(archive: MemoryArchive, name: str) -> None:
    data = sample_bytes(name)
    result = archive.ingest.store_file(data, SOURCE)
    row = archive.index.get_instance(result.sop_instance_uid)
    assert row is not None
    assert row.stored_transfer_syntax == row.received_transfer_syntax == part10.split(data).transfer_syntax_uid
    assert row.pending_compression
    assert archive.index.pending_jobs() == 1


def test_objects_without_pixels_are_not_queued(archive: MemoryArchive) -> None:
    result = archive.ingest.store_file(sample_bytes("rtplan.dcm"), SOURCE)
    row = archive.index.get_instance(result.sop_instance_uid)
    assert row is not None and not row.pending_compression
    assert archive.index.pending_jobs() == 0
