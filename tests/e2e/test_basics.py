"""C-ECHO with DCMTK's echoscu; the HTTP health and version endpoints."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

import filmless
from tests.e2e.support import StartFilmless
from tests.peers import ECHOSCU, LOOPBACK, FilmlessServer, peer_env

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(start_filmless: StartFilmless) -> Iterator[FilmlessServer]:
    with start_filmless() as srv:
        yield srv


def _echoscu(server: FilmlessServer, *extra: str, called: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ECHOSCU), "-v", "-aet", "ECHOTEST", "-aec", called or server.aet, "-to", "10", "-ta", "10", "-td", "10",
         *extra, LOOPBACK, str(server.dicom_port)],
        capture_output=True, text=True, env=peer_env(), timeout=60, stdin=subprocess.DEVNULL,
    )


def test_c_echo_with_echoscu(server: FilmlessServer) -> None:
    result = _echoscu(server)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Received Echo Response (Success)" in output


def test_c_echo_repeated_on_one_association(server: FilmlessServer) -> None:
    result = _echoscu(server, "--repeat", "5")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("Received Echo Response (Success)") == 5


def test_wrong_called_ae_title_is_rejected(server: FilmlessServer) -> None:
    result = _echoscu(server, called="NOT-FILMLESS")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Association Rejected" in output
    assert server.running


def test_healthz(server: FilmlessServer) -> None:
    with server.http() as client:
        response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["index"] == "ok" and body["checks"]["storage"] == "ok"
    assert set(body["checks"].values()) == {"ok"}


def test_version(server: FilmlessServer) -> None:
    with server.http() as client:
        response = client.get("/version")
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "filmless"
    assert body["version"] == filmless.__version__
    assert body["ae_title"] == "FILMLESS"
    assert body["dicom_port"] == server.dicom_port
