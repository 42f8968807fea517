"""Ingest into a real archive: SQLite index file and objects on disk."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
from io import BytesIO
import unicodedata
from collections.abc import Callable
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import (
    BasicTextSRStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
)
from sqlalchemy.exc import OperationalError

from filmless.bootstrap import Archive
from storage import part10
from storage.codecs import CompressionPolicy
from storage.errors import (
    IndexUnavailable,
    MalformedDataset,
    MissingAttribute,
    NotDicom,
    ObjectStoreError,
    ObjectTooLarge,
    RejectedInstance,
    SOPClassMismatch,
)
from storage.index import Source, schema
from storage.ingest import CompressionMode, Ingest, Outcome, Received
from storage.objects import LocalObjectStore, MemoryObjectStore
from storage.verify import verify
from tests.fixtures import synthetic
from tests.integration.conftest import counts, object_keys, rows, snapshot
from tests.unit.support import small_ct, to_part10

SOURCE = Source(aet="CT01", host="10.0.0.5")
PATIENT = synthetic.VIETNAMESE_PATIENTS[1]


def _ct(n: int = 3, **kwargs: Any) -> list[bytes]:
    return [to_part10(ds) for ds in small_ct(n, size=32, **kwargs)]


def test_store_a_ct_series(archive: Archive) -> None:
    files = _ct(3)
    results = [archive.ingest.store_file(f, SOURCE) for f in files]
    assert [r.outcome for r in results] == [Outcome.STORED] * 3
    assert len({r.study_instance_uid for r in results}) == 1
    stats = archive.index.stats()
    assert (stats["patients"], stats["studies"], stats["series"], stats["instances"]) == (1, 1, 1, 3)
    assert stats["pending_compression"] == 3
    assert stats["received_bytes"] == sum(len(part10.split(f).dataset) for f in files)
    assert stats["by_modality"]["CT"]["instances"] == 3
    # Every row points at an object whose bytes match the recorded sha256.
    instances = rows(archive, schema.instance)
    assert {r.object_key for r in instances} == object_keys(archive)
    assert stats["stored_bytes"] == sum(r.stored_size for r in instances)
    for row in instances:
        data = archive.store.read(row.object_key)
        assert hashlib.sha256(data).hexdigest() == row.object_sha256
        assert row.version == 1 and row.source_aet == "CT01" and row.source_host == "10.0.0.5"
        assert row.stored_transfer_syntax == row.received_transfer_syntax == ExplicitVRLittleEndian
        assert part10.split(data).source_aet == "CT01"
    assert archive.index.pending_jobs() == 3
    assert verify(archive.index, archive.store).ok


def test_study_derived_values_across_series_and_modalities(archive: Archive) -> None:
    first = small_ct(2, size=16, patient=PATIENT)
    study_uid = first[0].StudyInstanceUID
    second = small_ct(2, size=16, patient=PATIENT, study_uid=study_uid, series_number=2)
    dx = synthetic.dx_image(rows=32, cols=24, patient=PATIENT, study_uid=study_uid)
    sr = synthetic.sr_document(patient=PATIENT, study_uid=study_uid)

    def study() -> Any:
        (row,) = rows(archive, schema.study)
        return row

    for ds in first:
        archive.ingest.store_file(to_part10(ds), SOURCE)
    assert (study().number_of_series, study().number_of_instances) == (1, 2)
    assert study().modalities_in_study == "CT"
    for ds in second:
        archive.ingest.store_file(to_part10(ds, ImplicitVRLittleEndian), SOURCE)
    archive.ingest.store_file(to_part10(dx), SOURCE)
    archive.ingest.store_file(to_part10(sr), SOURCE)
    row = study()
    assert row.number_of_series == 4
    assert row.number_of_instances == 6
    assert row.modalities_in_study == "CT\\DX\\SR"
    assert row.sop_classes_in_study.split("\\") == sorted(
        [CTImageStorage, DigitalXRayImageStorageForPresentation, BasicTextSRStorage]
    )
    assert row.received_bytes == sum(r.received_size for r in rows(archive, schema.instance))
    per_series = {r.series_number: r.number_of_instances for r in rows(archive, schema.series) if r.modality == "CT"}
    assert per_series == {1: 2, 2: 2}
    stats = archive.index.stats()
    assert (stats["patients"], stats["studies"], stats["series"], stats["instances"]) == (1, 1, 4, 6)
    assert stats["pending_compression"] == 5  # the SR has no pixels
    assert set(stats["by_modality"]) == {"CT", "DX", "SR"}


def test_modalities_in_study_follow_the_series_modality(archive: Archive) -> None:
    """Modality is a series attribute: an instance disagreeing with its series' first instance
    does not add a modality that no series has (C-FIND matches ModalitiesInStudy on series)."""
    first, odd = small_ct(2, size=16)
    odd.Modality = "OT"
    archive.ingest.store_file(to_part10(first), SOURCE)
    archive.ingest.store_file(to_part10(odd), SOURCE)
    (study,) = rows(archive, schema.study)
    assert study.modalities_in_study == "CT"
    assert {r.modality for r in rows(archive, schema.series)} == {"CT"}


def test_identical_resend_is_a_duplicate(archive: Archive) -> None:
    (data,) = _ct(1)
    archive.ingest.store_file(data, SOURCE)
    before = snapshot(archive)
    again = archive.ingest.store_file(data, Source(aet="OTHER", host="10.0.0.6"))
    assert again.outcome is Outcome.DUPLICATE
    after = snapshot(archive)
    assert after[1] == before[1]  # no new object, none changed
    assert {k: v for k, v in after[0].items() if k != "audit_event"} == {
        k: v for k, v in before[0].items() if k != "audit_event"
    }
    outcomes = [e.outcome for e in archive.index.audit_events()]
    assert outcomes[0] == "duplicate"


def test_an_object_kept_as_received_is_hashed_once(archive: Archive) -> None:
    """The received hash is that of the object as stored when kept as received, so one
    sha256 serves both; compressed later, only the stored hash changes."""
    (data,) = _ct(1)
    archive.ingest.store_received(_as_cstore(data))
    (row,) = rows(archive, schema.instance)
    stored = archive.store.read(row.object_key)
    assert row.received_sha256 == row.object_sha256 == hashlib.sha256(stored).hexdigest()
    assert stored.endswith(part10.split(data).dataset)
    archive.compressor().drain()
    (after,) = rows(archive, schema.instance)
    assert after.received_sha256 == row.received_sha256 and after.object_sha256 != row.object_sha256
    assert archive.ingest.store_file(data, SOURCE).outcome is Outcome.DUPLICATE


def test_changed_resend_becomes_version_2(archive: Archive) -> None:
    ds = small_ct(1, size=32)[0]
    first = archive.ingest.store_file(to_part10(ds), SOURCE)
    (v1,) = rows(archive, schema.instance)
    ds.SeriesDescription = "corrected description"
    ds.PatientSex = "F"
    second = archive.ingest.store_file(to_part10(ds), SOURCE)
    assert second.outcome is Outcome.REPLACED
    assert second.sop_instance_uid == first.sop_instance_uid
    (v2,) = rows(archive, schema.instance)
    assert v2.version == 2 and v2.pk == v1.pk
    assert v2.object_key != v1.object_key and v2.received_sha256 != v1.received_sha256
    (prior,) = rows(archive, schema.instance_version)
    assert (prior.sop_instance_uid, prior.version) == (first.sop_instance_uid, 1)
    assert prior.object_key == v1.object_key and prior.object_sha256 == v1.object_sha256
    assert object_keys(archive) == {v1.object_key, v2.object_key}  # both objects kept
    stats = archive.index.stats()
    assert (stats["instances"], stats["prior_versions"]) == (1, 1)
    (study,) = rows(archive, schema.study)
    assert study.number_of_instances == 1 and study.number_of_series == 1
    assert archive.index.pending_jobs() == 1  # only the current object is compressed
    assert verify(archive.index, archive.store).ok
    archive.compressor().drain()
    assert verify(archive.index, archive.store).ok
    assert v1.object_key in object_keys(archive)  # the prior version survives compression
    assert archive.ingest.store_file(to_part10(ds), SOURCE).outcome is Outcome.DUPLICATE


def test_a_resend_moving_the_instance_to_another_series(archive: Archive) -> None:
    a, b = small_ct(2, size=16)
    archive.ingest.store_file(to_part10(a), SOURCE)
    archive.ingest.store_file(to_part10(b), SOURCE)
    moved = small_ct(1, size=16, series_number=7)[0]
    moved.SOPInstanceUID = a.SOPInstanceUID
    assert archive.ingest.store_file(to_part10(moved), SOURCE).outcome is Outcome.REPLACED
    by_number = {r.series_number: r.number_of_instances for r in rows(archive, schema.series)}
    assert by_number == {1: 1, 7: 1}
    (study,) = rows(archive, schema.study)
    assert (study.number_of_series, study.number_of_instances) == (2, 2)


@pytest.mark.parametrize("drained", [False, True], ids=["as-received", "compressed"])
@pytest.mark.parametrize("resend_ts", [ImplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless])
def test_resend_in_another_transfer_syntax_is_a_duplicate(archive: Archive, drained: bool, resend_ts: str) -> None:
    ds = small_ct(1, size=32)[0]
    archive.ingest.store_file(to_part10(ds), SOURCE)
    if drained:
        archive.compressor().drain()
    before = snapshot(archive)[1]
    result = archive.ingest.store_file(to_part10(ds, resend_ts), SOURCE)
    assert result.outcome is Outcome.DUPLICATE
    assert snapshot(archive)[1] == before
    assert archive.index.stats()["prior_versions"] == 0


# --- refusals leave nothing behind ---------------------------------------------------------------
def _without(keyword: str) -> bytes:
    ds = small_ct(1, size=16, seed=9)[0]
    delattr(ds, keyword)
    return to_part10(ds)


def _cut(at: Callable[[bytes], int]) -> bytes:
    data = to_part10(small_ct(1, size=16, seed=9)[0])
    return data[: at(data)]


BAD_FILES: dict[str, tuple[Callable[[], bytes], type[RejectedInstance]]] = {
    "garbage": (lambda: b"MZ\x90\x00" + bytes(range(256)) * 8, NotDicom),
    "empty": (lambda: b"", NotDicom),
    "text": (lambda: "Bệnh nhân: Nguyễn Văn Đức\n".encode() * 20, NotDicom),
    "cut-in-meta": (lambda: _cut(lambda d: 150), MalformedDataset),
    "cut-after-meta": (lambda: _cut(lambda d: len(d) - len(part10.split(d).dataset) + 3), MalformedDataset),
    "cut-in-a-header": (lambda: _cut(lambda d: d.index(b"\x10\x00\x10\x00PN") + 5), MalformedDataset),
    "cut-in-a-sequence": (lambda: _cut(lambda d: d.index(b"VN-CCCD") + 2), MalformedDataset),
    "cut-in-pixel-data": (lambda: _cut(lambda d: len(d) - 100), MalformedDataset),
    "cut-one-byte-short": (lambda: _cut(lambda d: len(d) - 1), MalformedDataset),
    "no-study-uid": (lambda: _without("StudyInstanceUID"), MissingAttribute),
    "no-series-uid": (lambda: _without("SeriesInstanceUID"), MissingAttribute),
    "no-sop-instance-uid": (lambda: _without("SOPInstanceUID"), MissingAttribute),
    "no-sop-class-uid": (lambda: _without("SOPClassUID"), MissingAttribute),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_are_refused_and_leave_nothing(archive: Archive, case: str) -> None:
    archive.ingest.store_file(_ct(1)[0], SOURCE)  # something already stored
    make, expected = BAD_FILES[case]
    before = snapshot(archive)
    with pytest.raises(expected) as info:
        archive.ingest.store_file(make(), SOURCE)
    assert type(info.value) is expected
    assert info.value.reason
    assert snapshot(archive) == before


def _received(data: bytes, **kwargs: Any) -> Received:
    split = part10.split(data)
    return Received(split.dataset, split.transfer_syntax_uid, SOURCE, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"expected_sop_class_uid": MRImageStorage}, SOPClassMismatch),
        ({"expected_sop_instance_uid": "1.2.3.4"}, SOPClassMismatch),
        ({"transfer_syntax_uid": "1.2.3.4.5"}, MalformedDataset),
        ({"transfer_syntax_uid": "not a uid"}, MalformedDataset),
    ],
    ids=["sop-class", "sop-instance", "unknown-syntax", "invalid-syntax"],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")
def test_received_objects_not_matching_the_request(archive: Archive, kwargs: dict[str, str], expected: type) -> None:
    data = _ct(1)[0]
    received = _received(data)
    if "transfer_syntax_uid" in kwargs:
        received = Received(received.dataset, kwargs["transfer_syntax_uid"], SOURCE)
    else:
        received = _received(data, **kwargs)
    with pytest.raises(expected):
        archive.ingest.store_received(received)
    assert object_keys(archive) == set()
    assert counts(archive)["instance"] == 0


def test_matching_request_is_stored(archive: Archive) -> None:
    ds = small_ct(1, size=16)[0]
    received = _received(
        to_part10(ds), expected_sop_class_uid=CTImageStorage, expected_sop_instance_uid=ds.SOPInstanceUID
    )
    assert archive.ingest.store_received(received).outcome is Outcome.STORED


def test_over_the_size_limit(make_archive: Callable[..., Archive]) -> None:
    archive = make_archive(max_object_size=4096)
    small = to_part10(small_ct(1, size=8)[0])
    assert len(small) < 4096
    archive.ingest.store_file(small, SOURCE)
    before = snapshot(archive)
    big = to_part10(small_ct(1, size=64)[0])
    with pytest.raises(ObjectTooLarge):
        archive.ingest.store_file(big, SOURCE)
    with pytest.raises(ObjectTooLarge):
        archive.ingest.store_received(_received(big))
    assert snapshot(archive) == before


# --- failures of the store and of the index -----------------------------------------------------
def test_a_failing_object_store_leaves_no_row(archive: Archive) -> None:
    store = MemoryObjectStore()
    store.fail_puts = True
    ingest = Ingest(archive.index, store, CompressionPolicy())
    try:
        with pytest.raises(ObjectStoreError):
            ingest.store_file(_ct(1)[0], SOURCE)
        assert {k: v for k, v in counts(archive).items() if v} == {}
        assert list(store.keys()) == []
        store.fail_puts = False
        assert ingest.store_file(_ct(1)[0], SOURCE).outcome is Outcome.STORED  # and it recovers
        assert len(list(store.keys())) == 1
    finally:
        ingest.close()


@pytest.mark.parametrize("failing", ["enqueue_compression", "insert_instance", "audit"])
def test_an_index_failure_after_put_leaves_no_object(
    archive: Archive, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    archive.ingest.store_file(_ct(1, seed=2)[0], SOURCE)
    before = snapshot(archive)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("INSERT ...", {}, Exception("disk I/O error"))

    monkeypatch.setattr(archive.index, failing, broken)
    with pytest.raises(IndexUnavailable):
        archive.ingest.store_file(_ct(1)[0], SOURCE)
    assert snapshot(archive) == before  # the object was deleted, the transaction rolled back
    monkeypatch.undo()
    assert archive.ingest.store_file(_ct(1)[0], SOURCE).outcome is Outcome.STORED


# --- text ----------------------------------------------------------------------------------------
def test_decomposed_vietnamese_name_is_indexed_nfc_and_stored_as_sent(archive: Archive) -> None:
    ds = small_ct(1, size=16)[0]
    decomposed = unicodedata.normalize("NFD", "Nguyễn^Văn Đức")
    ds.PatientName = decomposed
    ds.ReferringPhysicianName = unicodedata.normalize("NFD", "Võ^Minh Tâm")
    data = to_part10(ds)
    raw_name = decomposed.encode("utf-8")
    assert raw_name in data and "Nguyễn".encode() not in data  # really sent decomposed
    archive.ingest.store_file(data, SOURCE)
    (patient,) = rows(archive, schema.patient)
    assert patient.patient_name == "Nguyễn^Văn Đức"
    assert unicodedata.is_normalized("NFC", patient.patient_name)
    assert patient.patient_name_folded == "nguyen^van duc"
    (study,) = rows(archive, schema.study)
    assert study.referring_physician_name == "Võ^Minh Tâm"
    assert study.referring_physician_name_folded == "vo^minh tam"
    # The stored object keeps the bytes as sent, also once compressed.
    (row,) = rows(archive, schema.instance)
    assert raw_name in archive.store.read(row.object_key)
    archive.compressor().drain()
    (row,) = rows(archive, schema.instance)
    assert row.stored_transfer_syntax == JPEGLSLossless
    assert raw_name in archive.store.read(row.object_key)
    found = rows(archive, schema.patient, schema.patient.c.patient_name_folded == "nguyen^van duc")
    assert len(found) == 1


def test_undecodable_text_is_stored_and_flagged(archive: Archive) -> None:
    ds = small_ct(1, size=16)[0]
    data = to_part10(ds)
    name = ds["PatientName"].value.encode("utf-8")
    bad = data.replace(name, b"Nguy\xff\xfen^V" + b" " * (len(name) - 9))
    assert len(bad) == len(data)
    result = archive.ingest.store_file(bad, SOURCE)
    assert result.outcome is Outcome.STORED and result.warnings
    (row,) = rows(archive, schema.instance)
    assert "charset-replaced" in row.flags.split(",")
    assert "(0010,0010)" in (row.warnings or "")
    (patient,) = rows(archive, schema.patient)
    assert "\ufffd" in patient.patient_name


def test_an_image_cut_just_before_its_pixel_data_is_refused(archive: Archive) -> None:
    """A cut between two elements leaves a well-formed but shorter dataset; an image whose
    pixel description survived without Pixel Data is refused, not stored without pixels."""
    original = _ct(1)[0]
    split = part10.split(original)
    cut = split.dataset.rfind(b"\xe0\x7f\x10\x00")
    before = snapshot(archive)
    with pytest.raises(MalformedDataset, match="Pixel Data is missing"):
        archive.ingest.store_received(Received(split.dataset[:cut], split.transfer_syntax_uid, SOURCE))
    assert snapshot(archive) == before


def test_implicit_vr_image_is_compressed_with_every_value_byte_kept(archive: Archive) -> None:
    from pydicom import dcmread
    from io import BytesIO

    from storage.codecs import compress_object, same_attributes

    ds = small_ct(1, size=32)[0]
    ds.StudyDescription = "CT ngực   "  # odd padding that a re-encoding library would trim
    original = to_part10(ds, ImplicitVRLittleEndian)
    result = compress_object(original, JPEGLSLossless)
    assert result.data is not None, result.note
    new = dcmread(BytesIO(result.data))
    old = dcmread(BytesIO(original))
    assert same_attributes(old, new) is None
    assert bytes(new.get_item(0x00081030).value).endswith(b"   ")
    assert (new.pixel_array == old.pixel_array).all()


# --- the C-STORE path: the object is written while the dataset is parsed ----------------------------
def _as_cstore(data: bytes, source: Source = SOURCE) -> Received:
    """What the C-STORE handler hands over: the request's UIDs come with the dataset."""
    split = part10.split(data)
    ds = dcmread(BytesIO(data), stop_before_pixels=True)
    return Received(
        split.dataset,
        split.transfer_syntax_uid,
        source,
        expected_sop_class_uid=str(ds.SOPClassUID),
        expected_sop_instance_uid=str(ds.SOPInstanceUID),
    )


def test_cstore_identical_resend_writes_nothing(archive: Archive) -> None:
    (data,) = _ct(1)
    assert archive.ingest.store_received(_as_cstore(data)).outcome is Outcome.STORED
    before = snapshot(archive)[1]
    again = archive.ingest.store_received(_as_cstore(data, Source(aet="OTHER", host="10.0.0.6")))
    assert again.outcome is Outcome.DUPLICATE
    assert snapshot(archive)[1] == before  # the object written meanwhile is gone again
    assert verify(archive.index, archive.store).ok


@pytest.mark.parametrize("drained", [False, True], ids=["as-received", "compressed"])
def test_cstore_resend_in_another_transfer_syntax_writes_nothing(archive: Archive, drained: bool) -> None:
    ds = small_ct(1, size=32)[0]
    archive.ingest.store_received(_as_cstore(to_part10(ds)))
    if drained:
        archive.compressor().drain()
    before = snapshot(archive)
    result = archive.ingest.store_received(_as_cstore(to_part10(ds, JPEGLSLossless)))
    assert result.outcome is Outcome.DUPLICATE
    after = snapshot(archive)
    assert after[1] == before[1]
    assert archive.index.stats()["prior_versions"] == 0


def test_cstore_changed_resend_becomes_version_2(archive: Archive) -> None:
    ds = small_ct(1, size=32)[0]
    archive.ingest.store_received(_as_cstore(to_part10(ds)))
    (v1,) = rows(archive, schema.instance)
    ds.SeriesDescription = "corrected description"
    assert archive.ingest.store_received(_as_cstore(to_part10(ds))).outcome is Outcome.REPLACED
    (v2,) = rows(archive, schema.instance)
    assert v2.version == 2 and object_keys(archive) == {v1.object_key, v2.object_key}
    assert verify(archive.index, archive.store).ok


def test_cstore_dataset_not_matching_the_request_leaves_nothing(archive: Archive) -> None:
    (data,) = _ct(1)
    received = _as_cstore(data)
    wrong = Received(
        received.dataset,
        received.transfer_syntax_uid,
        SOURCE,
        expected_sop_class_uid=received.expected_sop_class_uid,
        expected_sop_instance_uid="1.2.826.0.1.3680043.8.498.1",
    )
    with pytest.raises(SOPClassMismatch):
        archive.ingest.store_received(wrong)
    assert object_keys(archive) == set() and counts(archive)["instance"] == 0


@pytest.mark.parametrize("case", ["cut-in-a-header", "cut-in-a-sequence", "cut-in-pixel-data", "cut-one-byte-short"])
def test_cstore_truncated_datasets_leave_nothing(archive: Archive, case: str) -> None:
    whole = to_part10(small_ct(1, size=16, seed=9)[0])
    expected = _as_cstore(whole)
    cut = BAD_FILES[case][0]()
    dataset = cut[len(whole) - len(expected.dataset) :]
    received = Received(
        dataset,
        expected.transfer_syntax_uid,
        SOURCE,
        expected_sop_class_uid=expected.expected_sop_class_uid,
        expected_sop_instance_uid=expected.expected_sop_instance_uid,
    )
    with pytest.raises(MalformedDataset):
        archive.ingest.store_received(received)
    assert object_keys(archive) == set() and counts(archive)["instance"] == 0


@pytest.mark.parametrize("failing", ["enqueue_compression", "insert_instance", "audit"])
def test_cstore_index_failure_leaves_no_object(archive: Archive, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("INSERT ...", {}, Exception("disk I/O error"))

    monkeypatch.setattr(archive.index, failing, broken)
    with pytest.raises(IndexUnavailable):
        archive.ingest.store_received(_as_cstore(_ct(1)[0]))
    assert object_keys(archive) == set() and counts(archive)["instance"] == 0


# --- a C-STORE written as it arrives (Ingest.receiving) -------------------------------------
def _streamed(archive: Archive, received: Received, pieces: int = 4) -> Received:
    """``received`` with its object written fragment by fragment, as the fast path does."""
    assert received.expected_sop_class_uid and received.expected_sop_instance_uid
    stream = archive.ingest.receiving(
        received.transfer_syntax_uid,
        received.expected_sop_class_uid,
        received.expected_sop_instance_uid,
        received.source.aet or "",
    )
    assert stream is not None
    data = memoryview(received.dataset)
    step = max(1, len(data) // pieces)
    for start in range(0, len(data), step):
        stream.add(data[start : start + step])
    return dataclasses.replace(received, stream=stream)


def _temporaries(archive: Archive) -> list[str]:
    store = archive.store
    assert isinstance(store, LocalObjectStore)
    return store.temporaries()


def test_a_cstore_written_as_it_arrives_is_stored_as_if_written_whole(archive: Archive) -> None:
    (data,) = _ct(1)
    received = _as_cstore(data)
    assert archive.ingest.store_received(_streamed(archive, received)).outcome is Outcome.STORED
    (row,) = rows(archive, schema.instance)
    stored = archive.store.read(row.object_key)
    assert stored == part10.build_file(
        received.dataset,
        transfer_syntax_uid=received.transfer_syntax_uid,
        sop_class_uid=str(received.expected_sop_class_uid),
        sop_instance_uid=str(received.expected_sop_instance_uid),
        source_aet=SOURCE.aet,
    )
    assert row.received_sha256 == row.object_sha256 == hashlib.sha256(stored).hexdigest()
    assert row.stored_size == len(stored) and row.received_size == len(received.dataset)
    assert _temporaries(archive) == [] and verify(archive.index, archive.store).ok
    # Sent again the same way: a duplicate, and the second file is gone.
    assert archive.ingest.store_received(_streamed(archive, received)).outcome is Outcome.DUPLICATE
    assert object_keys(archive) == {row.object_key} and _temporaries(archive) == []


@pytest.mark.parametrize("case", ["other-instance", "truncated"])
def test_a_cstore_written_as_it_arrives_then_rejected_leaves_nothing(archive: Archive, case: str) -> None:
    whole = to_part10(small_ct(1, size=16, seed=9)[0])
    received = _as_cstore(whole)
    if case == "other-instance":
        received = dataclasses.replace(received, expected_sop_instance_uid="1.2.826.0.1.3680043.8.498.1")
        expected: type[Exception] = SOPClassMismatch
    else:
        received = dataclasses.replace(received, dataset=received.dataset[:-7])
        expected = MalformedDataset
    with pytest.raises(expected):
        archive.ingest.store_received(_streamed(archive, received))
    assert object_keys(archive) == set() and _temporaries(archive) == [] and counts(archive)["instance"] == 0


def test_a_cstore_given_up_while_it_arrives_leaves_nothing(archive: Archive) -> None:
    (data,) = _ct(1)
    streamed = _streamed(archive, _as_cstore(data))
    assert streamed.stream is not None and len(_temporaries(archive)) == 1
    streamed.stream.abandon()  # the association was aborted mid-data set
    streamed.stream.abandon()
    assert object_keys(archive) == set() and _temporaries(archive) == []


def test_a_write_failing_while_the_cstore_arrives_fails_it_and_leaves_nothing(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    (data,) = _ct(1)
    received = _as_cstore(data)
    real_write, writes = os.write, []

    def disk_full(fd: int, data: Any) -> int:
        writes.append(len(data))
        if len(writes) > 2:  # the file meta and the first fragment fit, the rest does not
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr("storage.objects.local.os.write", disk_full)
    streamed = _streamed(archive, received)
    monkeypatch.undo()
    with pytest.raises(ObjectStoreError, match="No space left"):
        archive.ingest.store_received(streamed)
    assert object_keys(archive) == set() and _temporaries(archive) == [] and counts(archive)["instance"] == 0
    # The next one is stored.
    assert archive.ingest.store_received(_streamed(archive, received)).outcome is Outcome.STORED


def test_objects_are_written_as_they_arrive_only_when_stored_as_received_on_a_local_store(archive: Archive) -> None:
    args = (ExplicitVRLittleEndian, CTImageStorage, "1.2.826.0.1.3680043.8.498.7", "CT01")
    assert archive.ingest.receiving(*args) is not None
    inline = Ingest(archive.index, archive.store, CompressionPolicy(), mode=CompressionMode.INLINE)
    assert inline.receiving(*args) is None  # it stores what it encodes
    assert Ingest(archive.index, MemoryObjectStore(), CompressionPolicy()).receiving(*args) is None
    assert archive.ingest.receiving("1.2.3.4", *args[1:]) is None  # refused later, written never
