"""STOW-RS through the dicomweb-client library against a real ``filmless serve``: instances
stored over HTTP (a chunked body), found by QIDO-RS, retrieved pixel-exact by WADO-RS; a
wrong-study instance refused alone; DELETE to the trash and ``filmless trash restore``."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from tests.e2e.support import StartFilmless, Synthetic, assert_verify_ok, run_cli
from tests.peers import free_port

pytestmark = pytest.mark.e2e

PASSWORD = "e2e stow admin password"


def _token(base_url: str) -> str:
    reply = requests.post(f"{base_url}/api/token", data={"username": "admin", "password": PASSWORD}, timeout=30)
    reply.raise_for_status()
    return str(reply.json()["access_token"])


def test_store_instances_with_dicomweb_client(start_filmless: StartFilmless, synthetic_data: Synthetic) -> None:
    datasets = [pydicom.dcmread(p) for p in synthetic_data.ct(51, slices=6, size=128)]
    other = pydicom.dcmread(synthetic_data.ct(52, slices=1, size=64)[0])
    study, series = str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID)
    port = free_port()
    # dicomweb-client sends a Host header without the port: links come from public_url.
    env = {"FILMLESS_INITIAL_ADMIN_PASSWORD": PASSWORD, "FILMLESS_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    with start_filmless(http_port=port, env=env) as server:
        base = f"{server.base_url}/dicom-web"
        token = _token(server.base_url)
        # A small chunk size makes the client send the body with chunked transfer encoding
        # (no Content-Length): the server counts and parses it as it streams.
        client = DICOMwebClient(url=base, headers={"Authorization": f"Bearer {token}"}, chunk_size=64 * 1024)

        answer = client.store_instances(datasets[:5])
        assert answer.RetrieveURL == f"{base}/studies/{study}"
        assert "FailedSOPSequence" not in answer
        assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == [
            str(ds.SOPInstanceUID) for ds in datasets[:5]
        ]
        assert answer.ReferencedSOPSequence[0].RetrieveURL.startswith(f"{base}/studies/{study}/series/{series}/instances/")

        # To the study's own resource: the instance of another study fails alone (A900).
        answer = client.store_instances([datasets[5], other], study_instance_uid=study)
        assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == [str(datasets[5].SOPInstanceUID)]
        assert [(i.ReferencedSOPInstanceUID, i.FailureReason) for i in answer.FailedSOPSequence] == [
            (str(other.SOPInstanceUID), 0xA900)
        ]

        found = client.search_for_instances(study_instance_uid=study)
        assert len(found) == 6
        for ds in client.retrieve_series(study, series):
            sent = next(d for d in datasets if d.SOPInstanceUID == ds.SOPInstanceUID)
            assert np.array_equal(ds.pixel_array, sent.pixel_array)
            assert ds.PatientName == sent.PatientName

        # Without a token: refused.
        with pytest.raises(requests.HTTPError) as refused:
            DICOMwebClient(url=base).store_instances(datasets[:1])
        assert refused.value.response.status_code == 401

        # DELETE to the trash (the reason as a query parameter), then restore from the CLI.
        uid = str(datasets[0].SOPInstanceUID)
        client.delete_instance(study, series, uid, additional_params={"reason": "e2e: sent by mistake"})
        assert len(client.search_for_instances(study_instance_uid=study)) == 5
        listed = run_cli("trash", "list", "--json", "--data", str(server.data_dir))
        assert listed.returncode == 0, listed.stderr
        (item,) = json.loads(listed.stdout)
        assert (item["sop_instance_uid"], item["actor"], item["reason"]) == (uid, "admin", "e2e: sent by mistake")
        restored = run_cli("trash", "restore", "--instance", uid, "--data", str(server.data_dir))
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert len(client.search_for_instances(study_instance_uid=study)) == 6
        back = client.retrieve_instance(study, series, uid)
        assert np.array_equal(back.pixel_array, datasets[0].pixel_array)
    assert_verify_ok(server.data_dir)
