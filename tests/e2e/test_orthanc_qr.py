"""Orthanc and filmless as Query/Retrieve peers (both real, on loopback).

- Orthanc as a C-MOVE destination: filmless moves a JPEG-LS-stored study into Orthanc; the
  study is then checked through Orthanc's REST API (instance count, pixels).
- Orthanc as a Q/R client: Orthanc queries filmless (C-FIND through POST
  /modalities/filmless/query) and retrieves the answer into itself (C-MOVE with Orthanc as
  the destination).
"""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove  # type: ignore[attr-defined]

from tests.e2e.support import StartFilmless, Synthetic, run_cli
from tests.peers import LOOPBACK, FilmlessServer, Orthanc, free_port, run_storescu

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def peers(start_filmless: StartFilmless, synthetic_data: Synthetic) -> Iterator[tuple[FilmlessServer, Orthanc, dict[str, list[Path]]]]:
    files = {"move": synthetic_data.ct(120, slices=4, size=96), "qr": synthetic_data.ct(121, slices=3, size=64)}
    dicom_port = free_port()
    with start_filmless(dicom_port=dicom_port) as filmless:
        for paths in files.values():
            run_storescu(paths, LOOPBACK, filmless.dicom_port, filmless.aet)
        filmless.wait_compressed(timeout=120)
        with Orthanc(
            "ORTHANC",
            modalities={"filmless": [filmless.aet, LOOPBACK, dicom_port]},
            extra_config={"DefaultEncoding": "Utf8"},
        ) as orthanc:
            result = run_cli("ae", "add", "ORTHANC", LOOPBACK, str(orthanc.dicom_port), "--data", str(filmless.data_dir))
            assert result.returncode == 0, result.stderr
            yield filmless, orthanc, files


def _orthanc_study(orthanc: Orthanc, study_uid: str) -> dict[str, object] | None:
    for study_id in orthanc.rest("/studies"):
        study = orthanc.rest(f"/studies/{study_id}")
        if study["MainDicomTags"]["StudyInstanceUID"] == study_uid:
            return study
    return None


def test_move_into_orthanc(peers: tuple[FilmlessServer, Orthanc, dict[str, list[Path]]]) -> None:
    filmless, orthanc, files = peers
    sent = {dcmread(p).SOPInstanceUID: dcmread(p) for p in files["move"]}
    study_uid = next(iter(sent.values())).StudyInstanceUID

    ae = AE(ae_title="WORKSTATION")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(LOOPBACK, filmless.dicom_port, ae_title=filmless.aet)
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    try:
        responses = list(assoc.send_c_move(identifier, "ORTHANC", StudyRootQueryRetrieveInformationModelMove))
    finally:
        assoc.release()
    final = responses[-1][0]
    assert final.Status == 0x0000, final
    assert final.NumberOfCompletedSuboperations == len(sent)

    study = _orthanc_study(orthanc, study_uid)
    assert study is not None, "the study did not arrive in Orthanc"
    instances = orthanc.rest(f"/studies/{study['ID']}/instances")
    assert len(instances) == len(sent)
    for instance in instances:
        raw = orthanc._client().get(f"/instances/{instance['ID']}/file").content
        received = dcmread(BytesIO(raw))
        original = sent[received.SOPInstanceUID]
        assert (received.pixel_array == original.pixel_array).all()
        assert str(received.PatientName) == str(original.PatientName)


def test_orthanc_queries_and_retrieves_from_filmless(peers: tuple[FilmlessServer, Orthanc, dict[str, list[Path]]]) -> None:
    filmless, orthanc, files = peers
    first = dcmread(files["qr"][0], stop_before_pixels=True)
    query = orthanc.rest(
        "/modalities/filmless/query",
        method="POST",
        json_body={"Level": "Study", "Query": {"PatientID": first.PatientID, "StudyDate": "", "PatientName": ""}},
    )
    answers = orthanc.rest(f"/queries/{query['ID']}/answers?expand")
    uids = {a["0020,000d"]["Value"] for a in answers}
    assert first.StudyInstanceUID in uids
    answer_index = next(i for i, a in enumerate(answers) if a["0020,000d"]["Value"] == first.StudyInstanceUID)
    assert answers[answer_index]["0010,0010"]["Value"] == str(first.PatientName)  # UTF-8 end to end

    orthanc.rest(
        f"/queries/{query['ID']}/answers/{answer_index}/retrieve",
        method="POST",
        json_body={"TargetAet": "ORTHANC", "Synchronous": True},
        timeout=120,
    )
    study = _orthanc_study(orthanc, first.StudyInstanceUID)
    assert study is not None, "Orthanc's retrieve brought nothing"
    assert len(orthanc.rest(f"/studies/{study['ID']}/instances")) == len(files["qr"])
