"""The AE registry: `filmless ae add/list/remove`, and a node that refuses unknown AEs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.support import IndexView, StartFilmless, Synthetic, run_cli
from tests.peers import LOOPBACK, FilmlessServer, echo, run_storescu

pytestmark = pytest.mark.e2e


def _ae_list(data: Path) -> list[dict[str, object]]:
    result = run_cli("ae", "list", "--json", "--data", str(data))
    assert result.returncode == 0, result.stderr
    listed: list[dict[str, object]] = json.loads(result.stdout)
    return listed


def test_ae_cli_add_list_update_remove(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert _ae_list(data) == []
    added = run_cli("ae", "add", "CT_ROOM1", "127.0.0.1", "104", "--description", "Phòng CT 1", "--data", str(data))
    assert added.returncode == 0, added.stderr
    assert "CT_ROOM1" in added.stdout
    assert run_cli("ae", "add", "US_ROOM2", "127.0.0.2", "11112", "--data", str(data)).returncode == 0
    listed = {a["ae_title"]: a for a in _ae_list(data)}
    assert set(listed) == {"CT_ROOM1", "US_ROOM2"}
    assert listed["CT_ROOM1"]["host"] == "127.0.0.1"
    assert listed["CT_ROOM1"]["port"] == 104
    assert listed["CT_ROOM1"]["description"] == "Phòng CT 1"

    # Adding again updates.
    assert run_cli("ae", "add", "CT_ROOM1", "127.0.0.3", "105", "--data", str(data)).returncode == 0
    listed = {a["ae_title"]: a for a in _ae_list(data)}
    assert (listed["CT_ROOM1"]["host"], listed["CT_ROOM1"]["port"]) == ("127.0.0.3", 105)

    # The table form lists them too.
    table = run_cli("ae", "list", "--data", str(data))
    assert table.returncode == 0 and "CT_ROOM1" in table.stdout and "US_ROOM2" in table.stdout

    removed = run_cli("ae", "remove", "CT_ROOM1", "--data", str(data))
    assert removed.returncode == 0, removed.stderr
    assert [a["ae_title"] for a in _ae_list(data)] == ["US_ROOM2"]
    again = run_cli("ae", "remove", "CT_ROOM1", "--data", str(data))
    assert again.returncode != 0
    assert "CT_ROOM1" in again.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("ae", "add", "A" * 17, "127.0.0.1", "104"),  # AE title longer than 16
        ("ae", "add", "BAD\\AE", "127.0.0.1", "104"),  # backslash
        ("ae", "add", "CT1", "127.0.0.1", "70000"),  # port out of range
        ("ae", "add", "CT1", "127.0.0.1", "0"),
    ],
)
def test_ae_cli_refuses_invalid_entries(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = run_cli(*args, "--data", str(tmp_path / "data"))
    assert result.returncode != 0
    assert _ae_list(tmp_path / "data") == []


@pytest.fixture(scope="module")
def closed_server(start_filmless: StartFilmless, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FilmlessServer]:
    data = tmp_path_factory.mktemp("ae-registry") / "data"
    for args in (("MODALITY1", "127.0.0.1", "104"), ("ELSEWHERE", "192.0.2.10", "104")):
        result = run_cli("ae", "add", *args, "--data", str(data))
        assert result.returncode == 0, result.stderr
    with start_filmless("--no-accept-unknown-aes", data_dir=data) as srv:
        yield srv


def _store(server: FilmlessServer, files: list[Path], calling: str) -> tuple[int, str]:
    result = run_storescu(files, LOOPBACK, server.dicom_port, server.aet, calling, extra_args=["-v"], timeout=120)
    return result.returncode, result.stdout + result.stderr


def test_unknown_ae_is_rejected(closed_server: FilmlessServer, synthetic_data: Synthetic) -> None:
    files = synthetic_data.ct(500, slices=2)
    code, output = _store(closed_server, files, "STRANGER")
    assert code != 0, output
    assert "Association Rejected" in output
    assert "Calling AE Title Not Recognized" in output
    assert not echo(LOOPBACK, closed_server.dicom_port, closed_server.aet, "STRANGER")
    assert IndexView(closed_server.data_dir).count() == 0
    assert "association from unknown AE 'STRANGER'" in closed_server.log_text()


def test_registered_ae_from_another_host_is_rejected(closed_server: FilmlessServer, synthetic_data: Synthetic) -> None:
    code, output = _store(closed_server, synthetic_data.ct(500, slices=2), "ELSEWHERE")
    assert code != 0, output
    assert "Association Rejected" in output
    assert "registered for host 192.0.2.10" in closed_server.log_text()
    assert IndexView(closed_server.data_dir).count() == 0


def test_registered_ae_is_accepted(closed_server: FilmlessServer, synthetic_data: Synthetic) -> None:
    files = synthetic_data.ct(500, slices=2)
    code, output = _store(closed_server, files, "MODALITY1")
    assert code == 0, output
    assert echo(LOOPBACK, closed_server.dicom_port, closed_server.aet, "MODALITY1")
    assert IndexView(closed_server.data_dir).count() == len(files)


def test_registry_changes_apply_to_the_running_node(closed_server: FilmlessServer, synthetic_data: Synthetic) -> None:
    data = closed_server.data_dir
    assert run_cli("ae", "add", "LATECOMER", "127.0.0.1", "104", "--data", str(data)).returncode == 0
    assert echo(LOOPBACK, closed_server.dicom_port, closed_server.aet, "LATECOMER")
    assert run_cli("ae", "remove", "MODALITY1", "--data", str(data)).returncode == 0
    assert not echo(LOOPBACK, closed_server.dicom_port, closed_server.aet, "MODALITY1")
