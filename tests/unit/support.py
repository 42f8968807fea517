"""Helpers shared by the unit and integration tests: where pydicom's sample files live, turning
datasets into Part 10 bytes, and a few byte-level probes used to check what the code under test
did (element boundaries, encapsulated fragments, raw attribute values).

Only local files are used: pydicom's ``get_testdata_file`` would try the network for files that
are not installed.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from pydicom.uid import ExplicitVRLittleEndian

from storage import part10
from tests.fixtures import synthetic

PYDICOM_DATA = Path(pydicom.__file__).parent / "data"
TEST_FILES = PYDICOM_DATA / "test_files"
CHARSET_FILES = PYDICOM_DATA / "charset_files"
DICOMDIR_TESTS = TEST_FILES / "dicomdirtests"


def data_store() -> Path | None:
    """The pydicom-data package's folder of larger samples, if installed."""
    try:
        import data_store as package  # the pydicom-data distribution

        return Path(next(iter(package.__path__))) / "data"
    except (ImportError, StopIteration):
        return None


def sample(name: str) -> Path:
    """A pydicom sample file by name (test_files, charset_files, then pydicom-data); skip the
    test when it is not installed."""
    candidates = [TEST_FILES / name, CHARSET_FILES / name]
    store = data_store()
    if store is not None:
        candidates.append(store / name)
    for path in candidates:
        if path.is_file():
            return path
    pytest.skip(f"pydicom sample {name} is not installed")


def sample_bytes(name: str) -> bytes:
    return sample(name).read_bytes()


def to_part10(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """A synthetic dataset as Part 10 file bytes in ``transfer_syntax``."""
    buf = io.BytesIO()
    synthetic.encode(ds, transfer_syntax).save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def small_ct(n: int = 2, *, size: int = 64, seed: int = 0, **kwargs: object) -> list[Dataset]:
    """A few small synthetic CT slices (fast to generate and to encode)."""
    return list(synthetic.ct_series(n, rows=size, cols=size, seed=seed, **kwargs))  # type: ignore[arg-type]


def top_level_elements(dataset: bytes, transfer_syntax: str) -> list[tuple[int, int]]:
    """(start offset, tag) of every top-level element, then (end, -1). Cutting a dataset
    exactly at a start offset leaves a shorter but well-formed dataset; pydicom's reader is
    the independent oracle for where elements start."""
    implicit, little = part10.encoding_of(transfer_syntax)
    fp = io.BytesIO(dataset)
    elements: list[tuple[int, int]] = []
    start = 0
    for elem in data_element_generator(fp, implicit, little):
        elements.append((start, int(elem.tag)))
        start = fp.tell()
    elements.append((start, -1))
    return elements


def top_level_boundaries(dataset: bytes, transfer_syntax: str) -> list[int]:
    return [start for start, _tag in top_level_elements(dataset, transfer_syntax)]


def encapsulated_fragments(file_bytes: bytes) -> list[tuple[int, int]]:
    """(offset, length) of every item of the top-level encapsulated Pixel Data, the Basic
    Offset Table first (explicit VR little endian files only)."""
    start = -1
    for vr in (b"OB", b"OW"):
        start = max(start, file_bytes.rfind(b"\xe0\x7f\x10\x00" + vr + b"\x00\x00\xff\xff\xff\xff"))
    assert start > 0, "no encapsulated Pixel Data found"
    pos = start + 12
    items: list[tuple[int, int]] = []
    while True:
        group, elem, length = struct.unpack_from("<HHI", file_bytes, pos)
        pos += 8
        if (group, elem) == (0xFFFE, 0xE0DD):
            return items
        assert (group, elem) == (0xFFFE, 0xE000)
        items.append((pos, length))
        pos += length


def raw_values(ds: Dataset, *, skip: frozenset[int] = frozenset()) -> Iterator[tuple[str, bytes | None]]:
    """(path, raw value bytes) of every element, descending into sequences; sequences
    themselves contribute their item counts. File meta and group lengths are left out."""
    for tag in ds.keys():
        if tag.group == 0x0002 or tag.element == 0 or int(tag) in skip:
            continue
        raw = ds.get_item(tag)
        elem = ds[tag]
        if elem.VR == "SQ":
            yield f"{tag}", str(len(elem.value)).encode()
            for i, item in enumerate(elem.value):
                for path, value in raw_values(item, skip=skip):
                    yield f"{tag}[{i}]{path}", value
        elif isinstance(raw, RawDataElement):
            yield f"{tag}", bytes(raw.value or b"")
        elif elem.is_empty:  # pydicom decodes empty values while reading
            yield f"{tag}", b""
        else:
            yield f"{tag}", repr(elem.value).encode()


def read(file_bytes: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(file_bytes))
