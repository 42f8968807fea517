"""Finding DICOM objects to import: folders (recursively), single files, DICOMDIR trees and
.zip archives. Every object found goes through the same ``Ingest.store_file`` as C-STORE."""

from __future__ import annotations

import functools
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread

from storage.errors import ArchiveError, RejectedInstance
from storage.index import Source
from storage.ingest import Ingest, Outcome

# Files that are never images: skipped silently, not counted as rejected.
_IGNORED_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


@dataclass(frozen=True)
class Candidate:
    """One object to import: a display name and how to read its bytes."""

    name: str
    read: Callable[[], bytes]
    size: int


@dataclass
class ImportSummary:
    stored: int = 0
    duplicate: int = 0
    replaced: int = 0
    skipped: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.stored + self.duplicate + self.replaced + len(self.rejected)


def _is_dicomdir(path: Path) -> bool:
    if path.name.upper() == "DICOMDIR":
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(1024)
    except OSError:
        return False
    return MEDIA_STORAGE_DIRECTORY.encode() in head


def _dicomdir_files(path: Path) -> Iterator[Path]:
    """Files a DICOMDIR references (PS3.10 8.6, Referenced File ID)."""
    ds = dcmread(path)
    root = path.parent
    for record in ds.get("DirectoryRecordSequence", []):
        ref = record.get("ReferencedFileID")
        if not ref:
            continue
        parts = [ref] if isinstance(ref, str) else list(ref)
        yield root.joinpath(*parts)


def _file(path: Path) -> Candidate:
    return Candidate(str(path), path.read_bytes, path.stat().st_size)


def _zip_members(path: Path) -> Iterator[Candidate]:
    archive = zipfile.ZipFile(path)
    for info in archive.infolist():
        if info.is_dir() or Path(info.filename).name.lower() in _IGNORED_NAMES:
            continue
        if Path(info.filename).name.upper() == "DICOMDIR":
            continue
        yield Candidate(f"{path}!{info.filename}", functools.partial(archive.read, info), info.file_size)


def find(paths: list[Path], skipped: Callable[[str], None] | None = None) -> Iterator[Candidate]:
    """Every candidate object under ``paths``, each once."""
    seen: set[Path] = set()

    def once(p: Path) -> bool:
        resolved = p.resolve()
        if resolved in seen:
            return False
        seen.add(resolved)
        return True

    for root in paths:
        if root.is_dir():
            for p in sorted(root.rglob("*")):
                if not p.is_file() or p.name.lower() in _IGNORED_NAMES or p.name.startswith("."):
                    if p.is_file() and skipped:
                        skipped(str(p))
                    continue
                if p.name.upper() == "DICOMDIR":
                    continue  # the tree walk finds the referenced files anyway
                if p.suffix.lower() == ".zip":
                    yield from _zip_members(p)
                elif once(p):
                    yield _file(p)
        elif root.is_file() and root.suffix.lower() == ".zip":
            yield from _zip_members(root)
        elif root.is_file() and _is_dicomdir(root):
            for p in _dicomdir_files(root):
                if p.is_file() and once(p):
                    yield _file(p)
        elif root.is_file():
            if once(root):
                yield _file(root)
        else:
            raise FileNotFoundError(f"no such file or folder: {root}")


def import_one(ingest: Ingest, candidate: Candidate, summary: ImportSummary) -> None:
    try:
        result = ingest.store_file(candidate.read(), Source(aet=None, host="import"))
    except RejectedInstance as exc:
        summary.rejected.append((candidate.name, exc.reason))
        return
    except (ArchiveError, OSError, zipfile.BadZipFile) as exc:
        summary.rejected.append((candidate.name, f"not stored: {exc}"))
        return
    if result.outcome is Outcome.STORED:
        summary.stored += 1
    elif result.outcome is Outcome.DUPLICATE:
        summary.duplicate += 1
    else:
        summary.replaced += 1
