"""Orthanc as the sender: a study uploaded to Orthanc over REST, then C-STOREd by Orthanc to
filmless (POST /modalities/filmless/store)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.support import (
    IndexView,
    StartFilmless,
    Synthetic,
    as_dict,
    assert_verify_ok,
    check_stored_instance,
    sop_instance_uid,
)
from tests.peers import LOOPBACK, FilmlessServer, Orthanc, free_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def servers(start_filmless: StartFilmless) -> Iterator[tuple[FilmlessServer, Orthanc]]:
    dicom_port = free_port()
    with start_filmless(dicom_port=dicom_port) as filmless:
        with Orthanc("ORTHANC", modalities={"filmless": [filmless.aet, LOOPBACK, dicom_port]}) as orthanc:
            yield filmless, orthanc


def _upload(orthanc: Orthanc, files: list[Path]) -> set[str]:
    studies = set()
    with httpx.Client(base_url=orthanc.base_url, timeout=60, trust_env=False) as client:
        for path in files:
            response = client.post("/instances", content=path.read_bytes())
            response.raise_for_status()
            answer = response.json()
            assert answer["Status"] in ("Success", "AlreadyStored"), answer
            studies.add(answer["ParentStudy"])
    return studies


def test_orthanc_stores_a_study_to_filmless(servers: tuple[FilmlessServer, Orthanc], synthetic_data: Synthetic) -> None:
    filmless, orthanc = servers
    ct = synthetic_data.ct(400, "explicit")
    sr = synthetic_data.sr(400)  # the report of the same study
    compressed = synthetic_data.ct(401, "jpegls")  # another study, compressed
    files = [*ct, *sr, *compressed]
    studies = _upload(orthanc, files)
    assert len(studies) == 2
    assert orthanc.instance_count() == len(files)

    before = IndexView(filmless.data_dir).count()
    answer = orthanc.rest(
        "/modalities/filmless/store",
        method="POST",
        json_body={"Resources": sorted(studies), "Synchronous": True},
        timeout=300,
    )
    assert answer["InstancesCount"] == len(files), answer
    assert int(answer["FailedInstancesCount"]) == 0, answer

    filmless.wait_compressed(timeout=300)
    index = IndexView(filmless.data_dir)
    assert index.count() == before + len(files)
    rows = index.instances()
    for path in files:
        assert sop_instance_uid(path) in rows
        # Orthanc 1.10 proposes each file's own syntax: explicit -> JPEG-LS, JPEG-LS kept.
        row = check_stored_instance(index, path)
        assert row.flags == "", row.flags
    assert "ORTHANC" in {r[0] for r in index.query("SELECT DISTINCT source_aet FROM instance")}
    assert_verify_ok(filmless.data_dir)


def test_orthanc_store_again_is_a_duplicate(servers: tuple[FilmlessServer, Orthanc], synthetic_data: Synthetic) -> None:
    filmless, orthanc = servers
    ct = synthetic_data.ct(400, "explicit")
    before = as_dict(filmless.stats())
    studies = _upload(orthanc, ct)
    answer = orthanc.rest(
        "/modalities/filmless/store", method="POST", json_body={"Resources": sorted(studies), "Synchronous": True},
        timeout=300,
    )
    assert int(answer["FailedInstancesCount"]) == 0, answer
    after = as_dict(filmless.wait_compressed(timeout=120))
    for key in ("instances", "received_bytes", "stored_bytes", "prior_versions"):
        assert after[key] == before[key], key
