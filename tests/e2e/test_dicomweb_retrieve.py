"""WADO-RS through the dicomweb-client library against a real ``filmless serve``: a CT series
sent over DICOM, then fetched as instances, metadata and frames, pixel-exact."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from tests.e2e.support import StartFilmless, Synthetic, run_cli
from tests.peers import free_port

pytestmark = pytest.mark.e2e

PASSWORD = "e2e admin password"


def _client(base_url: str) -> DICOMwebClient:
    reply = requests.post(f"{base_url}/api/token", data={"username": "admin", "password": PASSWORD}, timeout=30)
    reply.raise_for_status()
    token = reply.json()["access_token"]
    return DICOMwebClient(url=f"{base_url}/dicom-web", headers={"Authorization": f"Bearer {token}"})


def test_dicomweb_client_retrieves_what_a_modality_sent(start_filmless: StartFilmless, synthetic_data: Synthetic) -> None:
    paths = synthetic_data.ct(41, slices=5, size=128)
    sent = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in paths)}
    first = next(iter(sent.values()))
    study, series = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    # dicomweb-client sends a Host header without the port, so the links in the answers come
    # from public_url (what a server behind a reverse proxy sets anyway).
    port = free_port()
    env = {"FILMLESS_INITIAL_ADMIN_PASSWORD": PASSWORD, "FILMLESS_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    with start_filmless(http_port=port, env=env) as server:
        result = run_cli("import", *map(str, paths), "--data", str(server.data_dir))
        assert result.returncode == 0, result.stderr
        client = _client(server.base_url)

        # Default transfer syntax: explicit VR little endian, decoded pixel-exact.
        instances = client.retrieve_series(study, series)
        assert sorted(str(ds.SOPInstanceUID) for ds in instances) == sorted(sent)
        for ds in instances:
            original = sent[str(ds.SOPInstanceUID)]
            assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
            assert bytes(ds.PixelData) == bytes(original.PixelData)
            assert ds.PatientName == original.PatientName  # Vietnamese, through UTF-8

        metadata = client.retrieve_series_metadata(study, series)
        assert len(metadata) == len(sent)
        uris = [m["7FE00010"]["BulkDataURI"] for m in metadata]
        assert all(u.startswith(server.base_url) for u in uris), (uris[0], server.base_url)

        uid = str(first.SOPInstanceUID)
        native = (("application/octet-stream", "1.2.840.10008.1.2.1"),)
        (frame,) = client.retrieve_instance_frames(study, series, uid, frame_numbers=[1], media_types=native)
        assert frame == bytes(first.PixelData)
        # The client's default (*/*) gets the frame as stored: the JPEG-LS bitstream.
        (stored,) = client.retrieve_instance_frames(study, series, uid, frame_numbers=[1])
        assert stored[:2] == b"\xff\xd8"

        # Whatever is stored (JPEG-LS once compressed, or as received): still the same pixels.
        as_stored = client.retrieve_instance(study, series, uid, media_types=(("application/dicom", "*"),))
        assert np.array_equal(as_stored.pixel_array, first.pixel_array)
