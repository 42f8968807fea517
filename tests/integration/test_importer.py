"""storage.importer: folders, .zip archives, DICOMDIR trees and single files, each object
through the same Ingest.store_file as C-STORE."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pydicom
import pytest

from filmless.bootstrap import Archive
from storage.importer import Candidate, ImportSummary, find, import_one
from storage.index import schema
from tests.fixtures import synthetic
from tests.integration.conftest import rows
from tests.unit.support import DICOMDIR_TESTS, small_ct, to_part10


def _import(archive: Archive, paths: list[Path]) -> tuple[ImportSummary, list[Candidate], list[str]]:
    summary, skipped = ImportSummary(), list[str]()
    candidates = list(find(paths, skipped.append))
    for candidate in candidates:
        import_one(archive.ingest, candidate, summary)
    summary.skipped = len(skipped)
    return summary, candidates, skipped


def _dicomdir_references(path: Path) -> list[Path]:
    ds = pydicom.dcmread(path)
    refs = [r.ReferencedFileID for r in ds.DirectoryRecordSequence if "ReferencedFileID" in r]
    return [path.parent.joinpath(*([ref] if isinstance(ref, str) else list(ref))) for ref in refs]


def test_a_folder_with_nested_folders(archive: Archive, tmp_path: Path) -> None:
    root = tmp_path / "cd"
    ct = synthetic.write_datasets(small_ct(3, size=16), root / "PATIENT" / "STUDY1" / "SERIES1")
    dx = synthetic.write_datasets(
        [synthetic.dx_image(rows=24, cols=20)], root / "PATIENT" / "STUDY2", prefix="x", transfer_syntax="1.2.840.10008.1.2"
    )
    (root / "PATIENT" / "notes.txt").write_text("Kết quả: bình thường\n", encoding="utf-8")
    (root / "PATIENT" / "report.pdf").write_bytes(b"%PDF-1.4\n" + b"x" * 200)
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / ".hidden.dcm").write_bytes(ct[0].read_bytes())
    summary, candidates, skipped = _import(archive, [root])
    assert summary.stored == 4 and summary.duplicate == 0 and summary.replaced == 0
    assert len(candidates) == 6
    rejected = dict(summary.rejected)
    assert set(rejected) == {str(root / "PATIENT" / "notes.txt"), str(root / "PATIENT" / "report.pdf")}
    assert all("not a DICOM file" in reason for reason in rejected.values())
    assert len(skipped) == 2 and summary.skipped == 2  # .DS_Store and the hidden file
    assert summary.total == 6
    assert archive.index.stats()["instances"] == 4
    assert {c.name for c in candidates} >= {str(p) for p in ct + dx}
    # Importing again stores nothing new.
    again, _candidates, _skipped = _import(archive, [root])
    assert (again.stored, again.duplicate, len(again.rejected)) == (0, 4, 2)


def test_a_zip_archive(archive: Archive, tmp_path: Path) -> None:
    files = synthetic.write_datasets(small_ct(2, size=16, seed=3), tmp_path / "src")
    zipped = tmp_path / "study.zip"
    with zipfile.ZipFile(zipped, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.write(files[0], "IMAGES/IM0001")
        zf.write(files[1], "IMAGES/SUB/IM0002")
        zf.writestr("IMAGES/", b"")
        zf.writestr("README.TXT", b"This CD contains images.")
        zf.writestr("DICOMDIR", b"ignored: the files are found anyway")
        zf.writestr("__MACOSX/.DS_Store", b"\x00")
    summary, candidates, _skipped = _import(archive, [zipped])
    assert summary.stored == 2
    assert [reason for _name, reason in summary.rejected] == [
        "not a DICOM file (no DICM prefix and no recognisable dataset start)"
    ]
    assert summary.rejected[0][0] == f"{zipped}!README.TXT"
    assert {c.name for c in candidates} == {f"{zipped}!IMAGES/IM0001", f"{zipped}!IMAGES/SUB/IM0002", f"{zipped}!README.TXT"}
    # A zip inside a folder is opened too.
    folder = tmp_path / "incoming"
    folder.mkdir()
    shutil.copy(zipped, folder / "again.zip")
    again, _c, _s = _import(archive, [folder])
    assert (again.stored, again.duplicate) == (0, 2)


def test_a_dicomdir_tree(archive: Archive) -> None:
    dicomdir = DICOMDIR_TESTS / "DICOMDIR"
    expected = _dicomdir_references(dicomdir)
    summary, candidates, _skipped = _import(archive, [dicomdir])
    assert [Path(c.name) for c in candidates] == [p for p in expected if p.is_file()]
    assert summary.stored == len(expected) == 31
    assert summary.rejected == []
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in expected]
    stats = archive.index.stats()
    assert stats["instances"] == 31
    assert stats["patients"] == len({(h.PatientID, h.get("IssuerOfPatientID", "")) for h in headers})
    assert stats["studies"] == len({h.StudyInstanceUID for h in headers})
    assert stats["series"] == len({h.SeriesInstanceUID for h in headers})
    assert set(stats["by_modality"]) == {h.Modality for h in headers} == {"CR", "CT", "MR"}


def test_a_dicomdir_tree_without_pixel_data(archive: Archive) -> None:
    summary, _candidates, _skipped = _import(archive, [DICOMDIR_TESTS / "TINY_ALPHA" / "DICOMDIR"])
    assert summary.stored == 50 and summary.rejected == []
    assert archive.index.stats()["pending_compression"] == 0


def test_a_folder_holding_a_dicomdir_imports_each_file_once(archive: Archive, tmp_path: Path) -> None:
    tree = tmp_path / "cdrom"
    shutil.copytree(DICOMDIR_TESTS / "TINY_ALPHA", tree)
    summary, candidates, _skipped = _import(archive, [tree, tree / "DICOMDIR", tree])
    assert summary.stored == 50
    assert len(candidates) == 51  # the images, once each, and the README
    assert [name for name, _reason in summary.rejected] == [str(tree / "README")]


def test_a_single_file(archive: Archive, tmp_path: Path) -> None:
    (path,) = synthetic.write_datasets([synthetic.sr_document()], tmp_path)
    summary, candidates, _skipped = _import(archive, [path])
    assert summary.stored == 1 and len(candidates) == 1
    (row,) = rows(archive, schema.instance)
    assert row.source_host == "import" and row.source_aet is None


def test_a_single_non_dicom_file_is_rejected_with_its_reason(archive: Archive, tmp_path: Path) -> None:
    path = tmp_path / "scan.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 300)
    truncated = tmp_path / "cut.dcm"
    truncated.write_bytes(to_part10(small_ct(1, size=16)[0])[:-10])
    summary, _candidates, _skipped = _import(archive, [path, truncated])
    assert summary.stored == 0
    reasons = dict(summary.rejected)
    assert reasons[str(path)].startswith("not a DICOM file")
    assert "cut short" in reasons[str(truncated)]
    assert archive.index.stats()["instances"] == 0
    assert list(archive.store.keys()) == []


def test_a_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(find([tmp_path / "nowhere"]))
