"""The dicomweb-client command line against a real ``filmless serve``: store, search,
retrieve full, metadata and frames; and rendered through the same library."""

from __future__ import annotations

import json
import subprocess
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image

from tests.e2e.support import StartFilmless, Synthetic
from tests.peers import free_port

pytestmark = pytest.mark.e2e

PASSWORD = "e2e admin password"
CLI = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "dicomweb_client")


def _cli(base: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [CLI, "--url", f"{base}/dicom-web", "--bearer-token", token, *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(args)}: {result.stderr[-2000:]}"
    return result


def test_dicomweb_client_cli(start_filmless: StartFilmless, synthetic_data: Synthetic, tmp_path: Path) -> None:
    paths = synthetic_data.ct(43, slices=3, size=128)
    first = pydicom.dcmread(paths[0])
    study, series, uid = str(first.StudyInstanceUID), str(first.SeriesInstanceUID), str(first.SOPInstanceUID)
    port = free_port()
    env = {"FILMLESS_INITIAL_ADMIN_PASSWORD": PASSWORD, "FILMLESS_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    with start_filmless(http_port=port, env=env) as server:
        reply = requests.post(f"{server.base_url}/api/token", data={"username": "admin", "password": PASSWORD}, timeout=30)
        token = reply.json()["access_token"]
        base = server.base_url

        _cli(base, token, "store", "instances", *map(str, paths))

        found = json.loads(_cli(base, token, "search", "studies", "--filter", f"PatientID={first.PatientID}").stdout)
        assert [s["0020000D"]["Value"][0] for s in found] == [study]
        fuzzy = json.loads(_cli(base, token, "search", "studies", "--filter", "PatientName=" + str(first.PatientName).split("^")[0].lower() + "*", "--fuzzy").stdout)
        assert study in [s["0020000D"]["Value"][0] for s in fuzzy]

        out = tmp_path / "full"
        out.mkdir()
        _cli(base, token, "retrieve", "instances", "--study", study, "--series", series, "--instance", uid, "full", "--save", "--output-dir", str(out))
        (saved,) = list(out.iterdir())
        # Whatever syntax the CLI accepted (it takes what is stored: JPEG-LS), the same pixels.
        assert (pydicom.dcmread(saved).pixel_array == first.pixel_array).all()

        metadata = _cli(base, token, "retrieve", "instances", "--study", study, "--series", series, "--instance", uid, "metadata")
        assert uid in metadata.stdout

        frames = tmp_path / "frames"
        frames.mkdir()
        _cli(
            base, token, "retrieve", "instances", "--study", study, "--series", series, "--instance", uid,
            "frames", "--numbers", "1", "--media-type", "application/octet-stream", "--save", "--output-dir", str(frames),
        )
        (frame,) = list(frames.iterdir())
        assert frame.read_bytes() == bytes(first.PixelData)

        client = DICOMwebClient(url=f"{base}/dicom-web", headers={"Authorization": f"Bearer {token}"})
        rendered = client.retrieve_instance_rendered(study, series, uid, media_types=("image/png",))
        image = Image.open(BytesIO(rendered))
        assert image.format == "PNG" and image.size == (128, 128)
