"""storage.retrieve and the C-FIND service on a real archive (SQLite index + local files):
locating instances, sending them as stored or decoded pixel-exact, refusing corrupt objects;
C-FIND cancellation, limits and ASCII answers; upgrading a version 1 index in place."""

from __future__ import annotations

import sqlite3
from io import BytesIO
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from dicom_node.access import Peer
from dicom_node.find import STUDY_ROOT_FIND, FindService
from filmless.bootstrap import Archive
from storage.codecs import compress_object
from storage.index import ApplicationEntity, Index, create_index_engine
from storage.index.repository import SERVICES
from storage.index.schema import SCHEMA_VERSION
from storage.retrieve import CorruptObject, NoAcceptableTransferSyntax, decode_to_native
from tests.fixtures import synthetic
from tests.integration.conftest import object_path

def _part10(ds: Dataset, ts: str = ExplicitVRLittleEndian) -> bytes:
    out = BytesIO()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(out, enforce_file_format=True, implicit_vr=ts == ImplicitVRLittleEndian, little_endian=True)
    return out.getvalue()


@pytest.fixture
def loaded(archive: Archive) -> tuple[Archive, list[Dataset]]:
    from storage.index import Source

    series = list(synthetic.ct_series(3, rows=64, cols=64, seed=7))
    for ds in series:
        archive.ingest.store_file(_part10(ds), Source(aet="CT1", host="127.0.0.1"))
    archive.compressor().drain()
    return archive, series


def _retriever(archive: Archive) -> Any:
    from storage.retrieve import Retriever

    return Retriever(archive.index, archive.store)


def test_locate_by_each_level(loaded: tuple[Archive, list[Dataset]]) -> None:
    archive, series = loaded
    retriever = _retriever(archive)
    first = series[0]
    assert len(retriever.locate(study_uids=[first.StudyInstanceUID])) == 3
    assert len(retriever.locate(series_uids=[first.SeriesInstanceUID])) == 3
    assert [i.sop_instance_uid for i in retriever.locate(sop_instance_uids=[first.SOPInstanceUID])] == [first.SOPInstanceUID]
    assert len(retriever.locate(patient_id=first.PatientID)) == 3
    assert retriever.locate(patient_id="someone else", study_uids=[first.StudyInstanceUID]) == []
    assert retriever.locate(study_uids=["1.2.3"]) == []
    with pytest.raises(ValueError):
        retriever.locate()


def test_outgoing_as_stored_or_decoded(loaded: tuple[Archive, list[Dataset]]) -> None:
    archive, series = loaded
    retriever = _retriever(archive)
    by_uid = {ds.SOPInstanceUID: ds for ds in series}
    for item in retriever.locate(study_uids=[series[0].StudyInstanceUID]):
        assert item.stored_transfer_syntax == JPEGLSLossless
        as_stored = retriever.outgoing(item, [JPEGLSLossless, ExplicitVRLittleEndian])
        assert not as_stored.transcoded and as_stored.transfer_syntax_uid == JPEGLSLossless
        decoded = retriever.outgoing(item, [ImplicitVRLittleEndian])
        assert decoded.transcoded and decoded.transfer_syntax_uid == ExplicitVRLittleEndian
        assert decoded.dataset.PixelData == by_uid[item.sop_instance_uid].PixelData
        with pytest.raises(NoAcceptableTransferSyntax):
            retriever.outgoing(item, [RLELossless])


def test_corrupt_object_is_never_sent(loaded: tuple[Archive, list[Dataset]]) -> None:
    archive, series = loaded
    retriever = _retriever(archive)
    item = retriever.locate(sop_instance_uids=[series[1].SOPInstanceUID])[0]
    path = object_path(archive, item.object_key)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptObject):
        retriever.outgoing(item, [JPEGLSLossless])


@pytest.mark.parametrize("codec", [JPEGLSLossless, JPEG2000Lossless])
@pytest.mark.parametrize("bits_stored", [12, 16])
def test_decode_restores_signed_pixels_exactly(codec: str, bits_stored: int) -> None:
    rng = np.random.default_rng(bits_stored)
    low, high = -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
    pixels = rng.integers(low, high, size=(2, 32, 48), dtype=np.int16)
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientName = "Nguyễn^Văn Đức"
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.Rows, ds.Columns = 32, 48
    ds.NumberOfFrames = 2
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 1
    ds.PixelData = pixels.astype("<i2").tobytes()
    original = _part10(ds, ImplicitVRLittleEndian)
    compressed = compress_object(original, codec)
    assert compressed.data is not None, compressed.note
    native = dcmread(BytesIO(decode_to_native(compressed.data)))
    assert native.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert native.PixelData == ds.PixelData
    assert str(native.PatientName) == "Nguyễn^Văn Đức" and int(native.PixelRepresentation) == 1


def test_decode_sender_compressed_rle_with_pydicom() -> None:
    ds = synthetic.encode(next(iter(synthetic.ct_series(1, rows=32, cols=32, seed=3))), RLELossless)
    original = _part10(ds, RLELossless)
    native = dcmread(BytesIO(decode_to_native(original)))
    reference = dcmread(BytesIO(original))
    assert (native.pixel_array == reference.pixel_array).all()


# ---------------------------------------------------------------------------- C-FIND service


class _FakeAssoc:
    def __init__(self, peer: Peer) -> None:
        self.filmless_peer = peer
        self.requestor = SimpleNamespace(ae_title=peer.ae_title, address=peer.host)
        self.acceptor = SimpleNamespace(sop_class_extended={})


def _event(identifier: Dataset, peer: Peer, cancel_after: int | None = None) -> Any:
    calls = {"n": 0}

    class _Event:
        request = SimpleNamespace(AffectedSOPClassUID=STUDY_ROOT_FIND)
        assoc = _FakeAssoc(peer)

        @property
        def identifier(self) -> Dataset:
            return identifier

        @property
        def is_cancelled(self) -> bool:
            calls["n"] += 1
            return cancel_after is not None and calls["n"] > cancel_after

    return _Event()


def _peer(**kw: Any) -> Peer:
    registered = ApplicationEntity("WS", "127.0.0.1", 104, **kw)
    return Peer("WS", "127.0.0.1", registered, frozenset(registered.services))


def _image_query(series: list[Dataset]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = series[0].StudyInstanceUID
    ds.SeriesInstanceUID = series[0].SeriesInstanceUID
    ds.SOPInstanceUID = ""
    return ds


def test_find_cancel_stops_between_matches(loaded: tuple[Archive, list[Dataset]]) -> None:
    archive, series = loaded
    service = FindService(archive.index, ae_title="FILMLESS", max_matches=0)
    responses = list(service.handle(_event(_image_query(series), _peer(), cancel_after=1)))
    assert [r[0] for r in responses] == [0xFF00, 0xFE00]
    audit = archive.index.audit_events(limit=1)[0]
    assert (audit.action, audit.outcome) == ("dicom.find", "cancelled")


def test_find_limit_and_refusals(loaded: tuple[Archive, list[Dataset]]) -> None:
    archive, series = loaded
    service = FindService(archive.index, ae_title="FILMLESS", max_matches=2)
    responses = list(service.handle(_event(_image_query(series), _peer())))
    assert [r[0] for r in responses[:2]] == [0xFF00, 0xFF00]
    assert responses[2][0].Status == 0xA700
    refused = list(service.handle(_event(_image_query(series), _peer(may_find=False))))
    assert refused[0][0].Status == 0x0124


def test_find_ascii_only_peer(loaded: tuple[Archive, list[Dataset]]) -> None:
    archive, series = loaded
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    query.PatientName = ""
    query.InstitutionName = ""
    service = FindService(archive.index, ae_title="FILMLESS", max_matches=0)
    (status, response), (final, _) = list(service.handle(_event(query, _peer(ascii_only=True))))
    assert status == 0xFF00 and final == 0x0000
    assert "SpecificCharacterSet" not in response
    assert str(response.PatientName).isascii() and str(response.PatientName)
    assert all(str(elem.value).isascii() for elem in response if elem.value)


# ------------------------------------------------------------------------------ schema upgrade


def test_version_1_index_is_upgraded_in_place(tmp_path: Any) -> None:
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.executescript(
        """
        CREATE TABLE filmless_meta (key VARCHAR(64) PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO filmless_meta VALUES ('schema_version', '1');
        CREATE TABLE application_entity (
            ae_title VARCHAR(16) PRIMARY KEY, host VARCHAR(200) NOT NULL, port INTEGER NOT NULL,
            description VARCHAR(400) NOT NULL, created_at DATETIME NOT NULL);
        INSERT INTO application_entity VALUES ('CT1', '10.0.0.21', 104, 'CT room 1', '2026-01-01 00:00:00');
        """
    )
    con.commit()
    con.close()
    index = Index(create_index_engine(f"sqlite:///{path}"))
    try:
        index.create()
        ae = index.get_ae("CT1")
        assert ae is not None and ae.services == SERVICES and not ae.ascii_only
        index.add_ae(ApplicationEntity("WS", "10.0.0.5", 104, may_store=False))
        assert index.get_ae("WS").services == ("echo", "find", "move", "get")  # type: ignore[union-attr]
        index.create()  # idempotent
    finally:
        index.dispose()
    con = sqlite3.connect(path)
    assert con.execute("SELECT value FROM filmless_meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    con.close()


def test_newer_index_is_refused(tmp_path: Any) -> None:
    from storage.errors import IndexUnavailable

    path = tmp_path / "new.sqlite"
    index = Index(create_index_engine(f"sqlite:///{path}"))
    index.create()
    index.dispose()
    con = sqlite3.connect(path)
    con.execute("UPDATE filmless_meta SET value = '999' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    index = Index(create_index_engine(f"sqlite:///{path}"))
    try:
        with pytest.raises(IndexUnavailable, match="newer"):
            index.create()
    finally:
        index.dispose()



def test_decoding_a_sender_compressed_object_keeps_its_instance_uid() -> None:
    """pydicom's decompress() makes a new SOP Instance UID unless told not to; a retrieve
    must send the instance the index names."""
    from io import BytesIO

    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    from storage.retrieve import decode_to_native

    path = get_testdata_file("SC_rgb_rle.dcm")
    assert path is not None
    original = dcmread(path)
    with open(path, "rb") as fh:
        decoded = dcmread(BytesIO(decode_to_native(fh.read())))
    assert decoded.SOPInstanceUID == original.SOPInstanceUID
    assert decoded.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
    assert not decoded.file_meta.TransferSyntaxUID.is_compressed
