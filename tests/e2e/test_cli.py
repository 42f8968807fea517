"""`filmless import` (folder, .zip, DICOMDIR), `filmless verify` finding damage, and
`filmless stats --json`, each run as a real process on a data directory."""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.e2e.support import (
    IndexView,
    JPEG_LS_LOSSLESS,
    Synthetic,
    assert_verify_ok,
    check_stored_instance,
    run_cli,
    stats,
    verify,
)
from tests.peers import DCMTK_BIN, peer_env

pytestmark = pytest.mark.e2e

DCMMKDIR = DCMTK_BIN / "dcmmkdir"
STATS_KEYS = {"patients", "studies", "series", "instances", "received_bytes", "stored_bytes", "pending_compression"}


def _import(data: Path, *paths: Path) -> tuple[int, str]:
    result = run_cli("import", "--data", str(data), *(str(p) for p in paths))
    return result.returncode, result.stdout + result.stderr


def _summary(output: str) -> dict[str, int]:
    """The counts of the import summary table."""
    counts = {}
    for label in ("stored", "replaced", "duplicate", "rejected"):
        for line in output.splitlines():
            cells = [c.strip() for c in line.strip("│┃| ").replace("┃", "│").split("│")]
            if len(cells) == 2 and cells[0].startswith(label):
                counts[label] = int(cells[1])
    return counts


def test_import_folder_with_a_non_dicom_file(tmp_path: Path, synthetic_data: Synthetic) -> None:
    data = tmp_path / "data"
    folder = tmp_path / "incoming folder"
    (folder / "series").mkdir(parents=True)
    files = []
    for path in synthetic_data.ct(800, slices=5):
        target = folder / "series" / path.name
        target.write_bytes(path.read_bytes())
        files.append(target)
    junk = folder / "series" / "ghi chú bác sĩ.txt"  # a non-DICOM file with a Vietnamese name
    junk.write_text("không phải DICOM\n", encoding="utf-8")

    code, output = _import(data, folder)
    assert code != 0, output
    assert _summary(output) == {"stored": 5, "replaced": 0, "duplicate": 0, "rejected": 1}, output
    rejected = [line for line in output.splitlines() if line.startswith("rejected ")]
    assert len(rejected) == 1, output
    assert str(junk) in rejected[0], output  # named in full, on one line
    assert "not a DICOM file" in rejected[0]

    data_stats = stats(data)
    assert STATS_KEYS <= set(data_stats)
    assert (data_stats["instances"], data_stats["pending_compression"]) == (5, 0)
    index = IndexView(data)
    for path in files:
        row = check_stored_instance(index, path, expected_stored_ts=JPEG_LS_LOSSLESS)
        assert row.version == 1
    assert_verify_ok(data)

    # Importing again stores nothing new.
    code, output = _import(data, folder / "series" / files[0].name, folder / "series" / files[1].name)
    assert code == 0, output
    assert _summary(output) == {"stored": 0, "replaced": 0, "duplicate": 2, "rejected": 0}, output
    assert stats(data)["instances"] == 5


def test_import_zip(tmp_path: Path, synthetic_data: Synthetic) -> None:
    data = tmp_path / "data"
    files = synthetic_data.ct(801, "jpegls", slices=5)
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            zf.write(path, f"DICOM/{path.name}")
        zf.writestr("DICOM/", "")
        zf.writestr("__MACOSX/.DS_Store", b"\x00\x01")  # ignored silently
    code, output = _import(data, archive)
    assert code == 0, output
    assert _summary(output)["stored"] == 5, output
    index = IndexView(data)
    for path in files:
        check_stored_instance(index, path, file_bytes_sent=True)  # JPEG-LS input: kept byte for byte
    assert_verify_ok(data)


def test_import_dicomdir(tmp_path: Path, synthetic_data: Synthetic) -> None:
    """A media tree as a CD burner writes it: DICOM/ST1/IM00000n and a DICOMDIR made by
    DCMTK's dcmmkdir; the DICOMDIR itself is passed to import."""
    data = tmp_path / "data"
    sources = synthetic_data.ct(802, slices=4) + synthetic_data.sr(802)
    media = tmp_path / "cd"
    (media / "DICOM" / "ST1").mkdir(parents=True)
    copies = []
    for n, path in enumerate(sources, 1):
        copies.append(media / "DICOM" / "ST1" / f"IM{n:06d}")
        copies[-1].write_bytes(path.read_bytes())
    made = subprocess.run(
        [str(DCMMKDIR), "+r", "-Pgp", "--invent", "DICOM"],
        cwd=media, capture_output=True, text=True, env=peer_env(), timeout=120, stdin=subprocess.DEVNULL,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    dicomdir = media / "DICOMDIR"
    assert dicomdir.is_file()
    (media / "AUTORUN.INF").write_text("[autorun]\n")  # not referenced by the DICOMDIR: not imported

    code, output = _import(data, dicomdir)
    assert code == 0, output
    assert _summary(output) == {"stored": 5, "replaced": 0, "duplicate": 0, "rejected": 0}, output
    index = IndexView(data)
    assert index.count() == 5
    for path in copies:
        check_stored_instance(index, path, file_bytes_sent=True)
    assert stats(data)["studies"] == 1
    assert_verify_ok(data)


def test_import_of_a_missing_path_fails(tmp_path: Path) -> None:
    code, output = _import(tmp_path / "data", tmp_path / "nowhere")
    assert code != 0
    assert "nowhere" in output


@pytest.fixture
def imported(tmp_path: Path, synthetic_data: Synthetic) -> Path:
    data = tmp_path / "data"
    code, output = _import(data, *synthetic_data.ct(803, slices=3))
    assert code == 0, output
    assert_verify_ok(data)
    return data


def test_verify_detects_a_corrupted_object(imported: Path) -> None:
    index = IndexView(imported)
    row = next(iter(index.instances().values()))
    path = index.object_path(row)
    original = path.read_bytes()
    damaged = bytearray(original)
    for offset in (len(damaged) // 2, len(damaged) - 10):
        damaged[offset] ^= 0xFF
    path.write_bytes(bytes(damaged))

    result = verify(imported)
    assert result.returncode != 0, result.stdout
    assert "corrupt" in result.stdout
    assert row.object_key in result.stdout
    assert "1 corrupt" in result.stdout

    path.write_bytes(original)
    assert_verify_ok(imported)


def test_verify_detects_a_missing_object(imported: Path) -> None:
    index = IndexView(imported)
    row = next(iter(index.instances().values()))
    path = index.object_path(row)
    moved = path.with_name("moved-away")
    os.replace(path, moved.with_suffix(".tmp"))  # *.tmp files are ignored by the store
    result = verify(imported)
    assert result.returncode != 0, result.stdout
    assert "missing" in result.stdout and row.object_key in result.stdout
    os.replace(moved.with_suffix(".tmp"), path)
    assert_verify_ok(imported)


def test_verify_detects_an_orphan_object(imported: Path) -> None:
    orphan = imported / "objects" / "ff" / "ff" / "ffffffffffffffffffffffffffffffff"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"DICM")
    result = verify(imported)
    assert result.returncode != 0, result.stdout
    assert "orphan" in result.stdout and "ff/ff/ffffffffffffffffffffffffffffffff" in result.stdout
    orphan.unlink()
    assert_verify_ok(imported)


def test_stats_json(imported: Path) -> None:
    result = run_cli("stats", "--data", str(imported), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert STATS_KEYS <= set(data)
    assert (data["patients"], data["studies"], data["series"], data["instances"]) == (1, 1, 1, 3)
    assert data["pending_compression"] == 0
    assert 0 < data["stored_bytes"] < data["received_bytes"]
    assert data["by_modality"]["CT"]["instances"] == 3
    table = run_cli("stats", "--data", str(imported))
    assert table.returncode == 0 and "instances" in table.stdout
