"""Query/Retrieve end to end: DCMTK findscu/movescu/getscu, pynetdicom and DCMTK storescp
against a running ``filmless serve`` (all on loopback).

One server for the module holds:
- study A: a 6-slice CT of patient 0 (Nguyễn^Văn Đức), compressed to JPEG-LS in the background;
- study B: a 3-slice CT of patient 1 (Trần^Thị Hương), compressed;
- study C: an ultrasound multi-frame (RGB) of patient 2, kept as received (US policy).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    CTImageStorage,
    UltrasoundMultiFrameImageStorage,
)

from tests.e2e.support import IndexView, StartFilmless, Synthetic, run_cli
from tests.peers import LOOPBACK, FilmlessServer, StoreSCP, free_port, run_storescu

pytestmark = pytest.mark.e2e

FINDSCU = "/usr/bin/findscu"
MOVESCU = "/usr/bin/movescu"
GETSCU = "/usr/bin/getscu"
MAX_MATCHES = 4


class Loaded:
    def __init__(self, server: FilmlessServer, files: dict[str, list[Path]]) -> None:
        self.server = server
        self.files = files
        self.uids = {name: dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID for name, paths in files.items()}

    def sent(self) -> dict[str, Dataset]:
        return {dcmread(p).SOPInstanceUID: dcmread(p) for paths in self.files.values() for p in paths}


@pytest.fixture(scope="module")
def loaded(start_filmless: StartFilmless, synthetic_data: Synthetic) -> Iterator[Loaded]:
    files = {
        "A": synthetic_data.ct(96, slices=6, size=128),
        "B": synthetic_data.ct(97, slices=3, size=64),
        "C": synthetic_data.us(98, frames=3),
    }
    with start_filmless(
        "--max-find-matches",
        str(MAX_MATCHES),
        env={"FILMLESS_COMPRESSION__BY_MODALITY": '{"US": "as-received"}'},
    ) as server:
        for paths in files.values():
            run_storescu(paths, LOOPBACK, server.dicom_port, server.aet)
        server.wait_compressed(timeout=120)
        yield Loaded(server, files)


def _ae(aet: str = "QRSCU") -> AE:
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


def _find(server: FilmlessServer, identifier: Dataset, model: str = StudyRootQueryRetrieveInformationModelFind, aet: str = "QRSCU") -> tuple[list[Dataset], Dataset]:
    ae = _ae(aet)
    ae.add_requested_context(model)
    assoc = ae.associate(LOOPBACK, server.dicom_port, ae_title=server.aet)
    assert assoc.is_established
    try:
        matches: list[Dataset] = []
        final = Dataset()
        for status, ds in assoc.send_c_find(identifier, model):
            assert status is not None and "Status" in status, "no response"
            if status.Status in (0xFF00, 0xFF01):
                matches.append(ds)
            else:
                final = status
        return matches, final
    finally:
        assoc.release()


def _identifier(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


# --------------------------------------------------------------------------------- C-FIND


def test_findscu_study_level_accent_insensitive_utf8(loaded: Loaded, tmp_path: Path) -> None:
    server = loaded.server
    result = subprocess.run(
        [FINDSCU, "-S", "-aet", "FINDSCU", "-aec", server.aet, LOOPBACK, str(server.dicom_port),
         "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=nguyen*", "-k", "StudyInstanceUID",
         "-k", "ModalitiesInStudy", "-k", "NumberOfStudyRelatedInstances", "-k", "NumberOfStudyRelatedSeries",
         "-k", "PatientID", "-k", "StudyDate", "-X", "-od", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    responses = [dcmread(p) for p in sorted(tmp_path.glob("rsp*.dcm"))]
    assert len(responses) == 1
    rsp = responses[0]
    assert rsp.SpecificCharacterSet == "ISO_IR 192"
    assert str(rsp.PatientName) == "Nguyễn^Văn Đức"
    assert rsp.StudyInstanceUID == loaded.uids["A"]
    assert rsp.ModalitiesInStudy == "CT"
    assert int(rsp.NumberOfStudyRelatedInstances) == 6
    assert int(rsp.NumberOfStudyRelatedSeries) == 1


def test_find_every_level_both_models(loaded: Loaded) -> None:
    server = loaded.server
    study_a = loaded.uids["A"]
    studies, final = _find(server, _identifier("STUDY", StudyInstanceUID="", PatientID=""))
    assert final.Status == 0x0000
    assert {d.StudyInstanceUID for d in studies} == set(loaded.uids.values())

    patients, final = _find(
        server, _identifier("PATIENT", PatientID="", PatientName=""), PatientRootQueryRetrieveInformationModelFind
    )
    assert final.Status == 0x0000 and len(patients) == 3

    series, final = _find(server, _identifier("SERIES", StudyInstanceUID=study_a, SeriesInstanceUID="", Modality=""))
    assert final.Status == 0x0000 and [d.Modality for d in series] == ["CT"]

    images, final = _find(
        server,
        _identifier(
            "IMAGE",
            PatientID="BN00012346",
            StudyInstanceUID=loaded.uids["B"],
            SeriesInstanceUID=dcmread(loaded.files["B"][0]).SeriesInstanceUID,
            SOPInstanceUID="",
            InstanceNumber="",
        ),
        PatientRootQueryRetrieveInformationModelFind,
    )
    assert final.Status == 0x0000
    assert sorted(int(d.InstanceNumber) for d in images) == [1, 2, 3]


def test_find_date_range_and_wildcards(loaded: Loaded) -> None:
    date_a = dcmread(loaded.files["A"][0], stop_before_pixels=True).StudyDate
    matches, final = _find(loaded.server, _identifier("STUDY", StudyDate=f"{date_a}-{date_a}", StudyInstanceUID=""))
    assert final.Status == 0x0000
    assert loaded.uids["A"] in {d.StudyInstanceUID for d in matches}
    matches, _ = _find(loaded.server, _identifier("STUDY", PatientID="BN0001234?", StudyInstanceUID=""))
    assert {d.StudyInstanceUID for d in matches} == set(loaded.uids.values())
    matches, _ = _find(loaded.server, _identifier("STUDY", PatientID="BN0001234[56]", StudyInstanceUID=""))
    assert not matches  # no regular expressions: "[" is an ordinary character
    # Typed with accents, the exact spelling still matches.
    matches, _ = _find(loaded.server, _identifier("STUDY", PatientName="Trần*", StudyInstanceUID=""))
    assert [d.StudyInstanceUID for d in matches] == [loaded.uids["B"]]


def test_find_identifier_errors_are_named(loaded: Loaded) -> None:
    matches, final = _find(loaded.server, _identifier("SERIES", SeriesInstanceUID=""))
    assert not matches
    assert final.Status == 0xA900
    assert "StudyInstanceUID" in final.ErrorComment
    bad_date = _identifier("STUDY", StudyInstanceUID="")
    bad_date[0x00080020] = RawDataElement(Tag(0x00080020), "DA", 10, b"2024-13-45", 0, False, True)
    matches, final = _find(loaded.server, bad_date)
    assert final.Status & 0xF000 == 0xC000 and final.ErrorComment
    matches, final = _find(loaded.server, _identifier("NOPE"))
    assert final.Status == 0xA900


def test_find_max_matches_cuts_with_out_of_resources(loaded: Loaded) -> None:
    study_a = loaded.uids["A"]
    series_a = dcmread(loaded.files["A"][0], stop_before_pixels=True).SeriesInstanceUID
    matches, final = _find(
        loaded.server, _identifier("IMAGE", StudyInstanceUID=study_a, SeriesInstanceUID=series_a, SOPInstanceUID="")
    )
    assert len(matches) == MAX_MATCHES
    assert final.Status == 0xA700
    assert "narrow" in final.ErrorComment


# ------------------------------------------------------------------------------ C-MOVE


@pytest.fixture(scope="module")
def destination(loaded: Loaded) -> Iterator[StoreSCP]:
    with StoreSCP("DEST") as scp:
        result = run_cli("ae", "add", "DEST", LOOPBACK, str(scp.port), "--data", str(loaded.server.data_dir))
        assert result.returncode == 0, result.stderr
        yield scp


@pytest.fixture(scope="module")
def plain_destination(loaded: Loaded) -> Iterator[StoreSCP]:
    """A storescp accepting only uncompressed syntaxes (its `+xe`, given after `+xa`, wins)."""
    with StoreSCP("PLAIN", extra_args=["+xe"]) as scp:
        result = run_cli("ae", "add", "PLAIN", LOOPBACK, str(scp.port), "--data", str(loaded.server.data_dir))
        assert result.returncode == 0, result.stderr
        yield scp


def _received(directory: Path) -> dict[str, Dataset]:
    return {ds.SOPInstanceUID: ds for ds in (dcmread(p) for p in directory.rglob("*") if p.is_file())}


def test_movescu_study_to_storescp_transcodes_pixel_exact(loaded: Loaded, plain_destination: StoreSCP) -> None:
    server = loaded.server
    result = subprocess.run(
        [MOVESCU, "-S", "-aet", "MOVESCU", "-aec", server.aet, "-aem", "PLAIN", LOOPBACK, str(server.dicom_port),
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={loaded.uids['A']}"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    received = _received(plain_destination.output_dir)
    sent = loaded.sent()
    a_uids = {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in loaded.files["A"]}
    assert a_uids <= set(received)
    stored = IndexView(server.data_dir)
    for uid in a_uids:
        assert stored.instance(uid).stored_transfer_syntax == str(JPEGLSLossless)  # really transcoded
        # storescp (default) accepts only uncompressed syntaxes: the pixels were decoded
        assert received[uid].file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
        assert received[uid].PixelData == sent[uid].PixelData
        assert str(received[uid].PatientName) == str(sent[uid].PatientName)


def _move(server: FilmlessServer, identifier: Dataset, destination: str) -> tuple[list[Dataset], Dataset, Dataset | None]:
    ae = _ae("MOVER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(LOOPBACK, server.dicom_port, ae_title=server.aet)
    assert assoc.is_established
    try:
        pending: list[Dataset] = []
        for status, ds in assoc.send_c_move(identifier, destination, StudyRootQueryRetrieveInformationModelMove):
            if status.Status == 0xFF00:
                pending.append(status)
            else:
                return pending, status, ds
        raise AssertionError("no final response")
    finally:
        assoc.release()


def test_move_counts_and_series_level(loaded: Loaded, destination: StoreSCP) -> None:
    series_b = dcmread(loaded.files["B"][0], stop_before_pixels=True).SeriesInstanceUID
    pending, final, _ = _move(
        loaded.server, _identifier("SERIES", StudyInstanceUID=loaded.uids["B"], SeriesInstanceUID=series_b), "DEST"
    )
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == 3
    assert final.NumberOfFailedSuboperations == 0
    assert [p.NumberOfRemainingSuboperations for p in pending] == [2, 1]
    # This storescp accepts JPEG-LS: the objects went as stored, and decode to the same pixels.
    received = _received(destination.output_dir)
    sent = loaded.sent()
    b_uids = [dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in loaded.files["B"]]
    for uid in b_uids:
        assert received[uid].file_meta.TransferSyntaxUID == JPEGLSLossless
        assert (received[uid].pixel_array == sent[uid].pixel_array).all()


def test_move_unknown_destination_and_nothing(loaded: Loaded, destination: StoreSCP) -> None:
    _, final, _ = _move(loaded.server, _identifier("STUDY", StudyInstanceUID=loaded.uids["A"]), "NOWHERE")
    assert final.Status == 0xA801
    assert "NOWHERE" in final.ErrorComment
    _, final, _ = _move(loaded.server, _identifier("STUDY", StudyInstanceUID="1.2.3.4.5"), "DEST")
    assert final.Status == 0xC000
    assert "no stored instance" in final.ErrorComment
    _, final, _ = _move(loaded.server, _identifier("STUDY", StudyInstanceUID=""), "DEST")
    assert final.Status == 0xA900


def test_move_to_destination_that_refuses_reports_failed_uids(loaded: Loaded) -> None:
    """A destination that answers every C-STORE with "Out of resources": all sub-operations
    fail, the final status says none could be performed and lists the instances."""
    refusing = AE(ae_title="REFUSER")
    refusing.add_supported_context(CTImageStorage, [str(ExplicitVRLittleEndian), str(JPEGLSLossless)])
    port = free_port()
    server = refusing.start_server(
        (LOOPBACK, port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0xA700)]
    )
    try:
        assert run_cli("ae", "add", "REFUSER", LOOPBACK, str(port), "--data", str(loaded.server.data_dir)).returncode == 0
        _, final, ds = _move(loaded.server, _identifier("STUDY", StudyInstanceUID=loaded.uids["B"]), "REFUSER")
    finally:
        server.shutdown()
    assert final.Status == 0xA702
    assert final.NumberOfFailedSuboperations == 3
    assert final.NumberOfCompletedSuboperations == 0
    assert ds is not None and len(ds.FailedSOPInstanceUIDList) == 3


# ------------------------------------------------------------------------------- C-GET


def test_getscu_study_pixel_exact(loaded: Loaded, tmp_path: Path) -> None:
    server = loaded.server
    result = subprocess.run(
        [GETSCU, "-S", "-aet", "GETSCU", "-aec", server.aet, LOOPBACK, str(server.dicom_port),
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={loaded.uids['C']}", "-od", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    received = _received(tmp_path)
    sent = loaded.sent()
    assert len(received) == 1
    for uid, ds in received.items():
        assert ds.PixelData == sent[uid].PixelData
        assert ds.SOPClassUID == UltrasoundMultiFrameImageStorage


def test_pynetdicom_get_jpegls_as_stored(loaded: Loaded) -> None:
    received: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0x0000

    ae = _ae("GETTER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, [str(JPEGLSLossless)])
    roles = [build_role(CTImageStorage, scp_role=True)]
    assoc = ae.associate(
        LOOPBACK, loaded.server.dicom_port, ae_title=loaded.server.aet, ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    try:
        statuses = list(assoc.send_c_get(_identifier("STUDY", StudyInstanceUID=loaded.uids["B"]), StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    final = statuses[-1][0]
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 3
    sent = loaded.sent()
    for ds in received:
        assert ds.file_meta.TransferSyntaxUID == JPEGLSLossless  # sent as stored, no transcoding
        assert (ds.pixel_array == sent[ds.SOPInstanceUID].pixel_array).all()


def test_get_without_storage_context_fails_each_instance(loaded: Loaded) -> None:
    ae = _ae("GETTER")
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelGet)
    assoc = ae.associate(LOOPBACK, loaded.server.dicom_port, ae_title=loaded.server.aet)
    assert assoc.is_established
    try:
        statuses = list(
            assoc.send_c_get(
                _identifier("STUDY", PatientID="BN00012346", StudyInstanceUID=loaded.uids["B"]),
                PatientRootQueryRetrieveInformationModelGet,
            )
        )
    finally:
        assoc.release()
    final, ds = statuses[-1]
    assert final.Status == 0xA702
    assert final.NumberOfFailedSuboperations == 3
    assert ds is not None and len(ds.FailedSOPInstanceUIDList) == 3


# ------------------------------------------------------------------- access and audit


def test_per_ae_permissions_and_ascii_fallback(loaded: Loaded, tmp_path: Path) -> None:
    server = loaded.server
    data = str(server.data_dir)
    assert run_cli("ae", "add", "SENDONLY", LOOPBACK, "104", "--services", "echo,store", "--data", data).returncode == 0
    assert run_cli("ae", "add", "OLDCONSOLE", LOOPBACK, "104", "--services", "find", "--ascii-only", "--data", data).returncode == 0

    # SENDONLY: the FIND context is not accepted at all.
    ae = _ae("SENDONLY")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(LOOPBACK, server.dicom_port, ae_title=server.aet)
    assert assoc.is_established
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        assert str(StudyRootQueryRetrieveInformationModelFind) not in accepted
        assert str(CTImageStorage) in accepted
    finally:
        assoc.release()

    # OLDCONSOLE: may find, answers in ASCII; may not store.
    matches, final = _find(server, _identifier("STUDY", PatientName="nguyen*", StudyInstanceUID=""), aet="OLDCONSOLE")
    assert final.Status == 0x0000 and len(matches) == 1
    assert "SpecificCharacterSet" not in matches[0]
    assert str(matches[0].PatientName) == "Nguyen^Van Duc"
    ae = _ae("OLDCONSOLE")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(LOOPBACK, server.dicom_port, ae_title=server.aet)
    try:
        status = assoc.send_c_store(loaded.files["A"][0])
    finally:
        assoc.release()
    assert status.Status == 0x0124

    events = IndexView(server.data_dir).query(
        "SELECT action, outcome, actor, detail FROM audit_event WHERE actor IN ('OLDCONSOLE', 'SENDONLY') ORDER BY pk"
    )
    actions = [(a, o) for a, o, _actor, _d in events]
    assert ("dicom.association", "accepted") in actions
    assert ("dicom.find", "success") in actions
    find_detail = next(d for a, o, _actor, d in events if a == "dicom.find")
    assert "nguyen*" in find_detail and '"matches": 1' in find_detail


def test_audit_records_queries_and_retrieves(loaded: Loaded, destination: StoreSCP) -> None:
    _move(loaded.server, _identifier("STUDY", StudyInstanceUID=loaded.uids["B"]), "DEST")
    rows = IndexView(loaded.server.data_dir).query(
        "SELECT outcome, study_instance_uid, detail FROM audit_event WHERE action = 'dicom.move' AND actor = 'MOVER'"
    )
    assert any(o == "success" and s == loaded.uids["B"] and '"completed": 3' in d and "DEST" in d for o, s, d in rows)


def test_unknown_ae_refused_when_registry_is_closed(start_filmless: StartFilmless) -> None:
    with start_filmless("--no-accept-unknown-aes") as server:
        ae = _ae("STRANGER")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate(LOOPBACK, server.dicom_port, ae_title=server.aet)
        assert assoc.is_rejected
        # and the called AE title is checked
        ae = _ae("STRANGER")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate(LOOPBACK, server.dicom_port, ae_title="SOMEONEELSE")
        assert assoc.is_rejected
        time.sleep(0.2)
        rows = IndexView(server.data_dir).query(
            "SELECT outcome, detail FROM audit_event WHERE action = 'dicom.association' AND actor = 'STRANGER'"
        )
        assert [o for o, _ in rows] == ["rejected", "rejected"]
