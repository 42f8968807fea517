"""Helpers for the end-to-end tests: run the CLI, read what filmless stored, compare it with
what was sent.

Everything that reads the archive here goes around filmless on purpose: the SQLite index is
opened read-only with the standard library, stored objects are read as files under
``<data>/objects/<object_key>`` and decoded with pydicom. None of it imports ``storage``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    generate_uid,
)

from tests.fixtures import synthetic
from tests.fixtures.synthetic import PRIVATE_CREATOR, VIETNAMESE_PATIENTS
from tests.peers import LOOPBACK, FilmlessServer, filmless_command, peer_env

UNCOMPRESSED = {
    str(ImplicitVRLittleEndian),
    str(ExplicitVRLittleEndian),
    str(DeflatedExplicitVRLittleEndian),
    str(ExplicitVRBigEndian),
}
JPEG_LS_LOSSLESS = str(JPEGLSLossless)
SERVE_ARGS = ("--dicom-host", LOOPBACK, "--http-host", LOOPBACK)
"""Options every e2e ``filmless serve`` gets: listen on loopback only."""

PIXEL_DATA = Tag(0x7FE0, 0x0010)
PLANAR_CONFIGURATION = Tag(0x0028, 0x0006)


# ------------------------------------------------------------------- inputs and servers


StartFilmless = Callable[..., contextlib.AbstractContextManager[FilmlessServer]]
"""The type of the ``start_filmless`` fixture."""

PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _pydicom_data_store() -> Path | None:
    try:
        import data_store  # the pydicom-data package

        return Path(next(iter(data_store.__path__))) / "data"
    except (ImportError, StopIteration):
        return None


# Sample files in the syntaxes the generator cannot write (it has no lossy/lossless JPEG
# encoder but Pillow's baseline): name -> candidate locations, first found wins. Only local
# files: pydicom's get_testdata_file would try the network for missing ones.
PYDICOM_JPEG_FILES = {
    "jpeg-baseline": ["SC_rgb_jpeg_dcmtk.dcm"],  # 1.2.840.10008.1.2.4.50, RGB 8 bit
    "jpeg-extended": ["JPGExtended.dcm"],  # 1.2.840.10008.1.2.4.51, 12 bit
    "jpeg-lossless": ["JPEG-LL.dcm", "SC_rgb_jpeg_gdcm.dcm"],  # 1.2.840.10008.1.2.4.70
}


def pydicom_sample(name: str) -> Path | None:
    store = _pydicom_data_store()
    for candidate in PYDICOM_JPEG_FILES[name]:
        for root in (PYDICOM_TEST_FILES, store):
            if root is not None and (root / candidate).is_file():
                return root / candidate
    return None


class Synthetic:
    """Synthetic studies written once per session and cached by their parameters."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[tuple[object, ...], list[Path]] = {}

    def _write(self, key: tuple[object, ...], make: Callable[[], list[pydicom.Dataset]], syntax: str) -> list[Path]:
        if key not in self._cache:
            out = self.root / "-".join(str(k) for k in key)
            shutil.rmtree(out, ignore_errors=True)
            self._cache[key] = synthetic.write_datasets(make(), out, synthetic.TRANSFER_SYNTAXES[syntax])
        return self._cache[key]

    def ct(self, seed: int, syntax: str = "explicit", *, slices: int = 20, size: int = 512) -> list[Path]:
        """A CT series (one study per seed, patient ``seed % 6``)."""
        return self._write(
            ("ct", seed, syntax, slices, size),
            lambda: list(synthetic.ct_series(slices, rows=size, cols=size, seed=seed)),
            syntax,
        )

    def dx(self, seed: int, syntax: str = "explicit") -> list[Path]:
        return self._write(("dx", seed, syntax), lambda: [synthetic.dx_image(seed=seed)], syntax)

    def us(self, seed: int, syntax: str = "explicit", frames: int = 10) -> list[Path]:
        return self._write(("us", seed, syntax, frames), lambda: [synthetic.us_multiframe(frames, seed=seed)], syntax)

    def sr(self, seed: int) -> list[Path]:
        return self._write(("sr", seed), lambda: [synthetic.sr_document(seed=seed)], "explicit")


def copy_with_new_uids(src: Path, dst: Path) -> Path:
    """A copy of a Part 10 file with a new SOP Instance UID (file meta too); every other
    element, the encapsulated pixel data included, keeps its bytes."""
    ds = dcmread(src)
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst, enforce_file_format=True)
    return dst


# ----------------------------------------------------------------------------- the CLI


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300.0
) -> subprocess.CompletedProcess[str]:
    """Run ``filmless ARGS...`` (with ``env`` added to the environment, e.g. the S3 settings)
    and capture its output (never raises on a non-zero exit)."""
    full = peer_env({"PYTHONUNBUFFERED": "1", **(env or {})})
    full.pop("COLUMNS", None)  # as in scripts: output is not a terminal, rich assumes 80 columns
    return subprocess.run(
        [*filmless_command(), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        env=full,
        timeout=timeout,
    )


def verify(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("verify", "--data", str(data_dir))


def as_dict(stats: Any) -> dict[str, Any]:
    """A ``FilmlessStats`` (a TypedDict naming only some keys) as a plain dict."""
    return dict(stats)


def stats(data_dir: Path) -> dict[str, Any]:
    result = run_cli("stats", "--data", str(data_dir), "--json")
    assert result.returncode == 0, result.stderr
    decoded: dict[str, Any] = json.loads(result.stdout)
    return decoded


def assert_verify_ok(data_dir: Path) -> subprocess.CompletedProcess[str]:
    result = verify(data_dir)
    assert result.returncode == 0, f"filmless verify failed:\n{result.stdout}\n{result.stderr}"
    return result


# ------------------------------------------------------------------- the stored archive


@dataclass(frozen=True)
class InstanceRow:
    sop_instance_uid: str
    sop_class_uid: str
    object_key: str
    stored_transfer_syntax: str
    received_transfer_syntax: str
    pending_compression: bool
    flags: str
    version: int


class IndexView:
    """The SQLite index, opened read-only (``mode=ro``) for each query."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / "index.sqlite"

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        try:
            yield conn
        finally:
            conn.close()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._connect() as conn:
            return list(conn.execute(sql, params).fetchall())

    def instances(self) -> dict[str, InstanceRow]:
        rows = self.query(
            "SELECT sop_instance_uid, sop_class_uid, object_key, stored_transfer_syntax,"
            " received_transfer_syntax, pending_compression, flags, version FROM instance"
        )
        return {
            r[0]: InstanceRow(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6] or "", int(r[7])) for r in rows
        }

    def instance(self, sop_instance_uid: str) -> InstanceRow:
        rows = self.instances()
        assert sop_instance_uid in rows, f"instance {sop_instance_uid} is not indexed"
        return rows[sop_instance_uid]

    def count(self) -> int:
        return int(self.query("SELECT count(*) FROM instance")[0][0])

    def object_path(self, row: InstanceRow) -> Path:
        return self.data_dir / "objects" / row.object_key

    def stored_path(self, sop_instance_uid: str) -> Path:
        return self.object_path(self.instance(sop_instance_uid))


def object_files(data_dir: Path) -> list[Path]:
    """Every file under ``<data>/objects`` (temporary files included)."""
    root = Path(data_dir) / "objects"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# ------------------------------------------------------------------------- comparisons


def sop_instance_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


def transfer_syntax(path: Path) -> str:
    return str(read_file_meta_info(path).TransferSyntaxUID)


def dataset_bytes(path: Path) -> bytes:
    """The bytes after the File Meta Information (the encoded dataset, as sent on the wire)."""
    data = Path(path).read_bytes()
    assert data[128:132] == b"DICM", f"{path} is not a Part 10 file"
    pos = 132
    while pos + 8 <= len(data):
        group = int.from_bytes(data[pos : pos + 2], "little")
        if group != 0x0002:
            break
        vr = data[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length = int.from_bytes(data[pos + 8 : pos + 12], "little")
            pos += 12 + length
        else:
            length = int.from_bytes(data[pos + 6 : pos + 8], "little")
            pos += 8 + length
    return data[pos:]


def assert_same_pixels(sent: Path, stored: Path) -> None:
    """Decoded pixel data of the stored object equals the sent one, bit for bit."""
    a, b = dcmread(sent), dcmread(stored)
    assert ("PixelData" in a) == ("PixelData" in b), f"{stored}: pixel data presence changed"
    if "PixelData" not in a:
        return
    pa, pb = a.pixel_array, b.pixel_array
    # Same kind and width; byte order may differ (a big endian file's array is '>u2').
    assert (pa.dtype.kind, pa.dtype.itemsize) == (pb.dtype.kind, pb.dtype.itemsize), (
        f"{stored}: dtype {pb.dtype} != {pa.dtype}"
    )
    assert pa.shape == pb.shape, f"{stored}: shape {pb.shape} != {pa.shape}"
    assert np.array_equal(pa, pb), f"{stored}: decoded pixels differ from {sent}"


# Binary VRs and the width of the units a byte-order change swaps.
_SWAP_WIDTH = {"US": 2, "SS": 2, "OW": 2, "AT": 2, "UL": 4, "SL": 4, "FL": 4, "OF": 4, "OL": 4,
               "FD": 8, "OD": 8, "SV": 8, "UV": 8, "OV": 8}


def _vr_of(ds: Dataset, tag: Any) -> str | None:
    """The element's VR without decoding it: explicit VR, else the dictionary's."""
    raw = ds.get_item(tag)
    vr = getattr(raw, "VR", None)
    if vr not in (None, "UN"):
        return str(vr)
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None  # private, implicit VR


def _raw_value(ds: Dataset, tag: Any) -> tuple[str, Any]:
    """('bytes', value bytes) for a plain element, ('seq', [items]) for a sequence."""
    raw = ds.get_item(tag)
    vr = _vr_of(ds, tag)
    if isinstance(raw, RawDataElement):
        if vr == "SQ" or (vr is None and bytes(raw.value or b"")[:4] == b"\xfe\xff\x00\xe0"):
            return "seq", list(ds[tag].value)
        return "bytes", bytes(raw.value or b"")
    elem = ds[tag]
    if elem.VR == "SQ":
        return "seq", list(elem.value)
    return "value", elem.value


def _swapped(value: bytes, width: int) -> bytes:
    return b"".join(value[i : i + width][::-1] for i in range(0, len(value), width))


def compare_attributes(sent: Dataset, stored: Dataset, path: str = "", *, swap: bool = False) -> list[str]:
    """Differences between two datasets' attributes (value bytes, recursively), except Pixel
    Data, Planar Configuration (re-encoding colour-by-pixel may change it) and group 0002.

    ``swap``: the two are in different byte orders (a big endian file that a sender converted),
    so binary values are compared unit by unit swapped.
    """
    skip = {PIXEL_DATA, PLANAR_CONFIGURATION}
    tags_a = [t for t in sent.keys() if t not in skip and t.group != 0x0002]
    tags_b = [t for t in stored.keys() if t not in skip and t.group != 0x0002]
    problems: list[str] = []
    if tags_a != tags_b:
        gone = sorted(set(tags_a) - set(tags_b))
        added = sorted(set(tags_b) - set(tags_a))
        return [f"{path or 'top'}: attributes removed {gone[:5]} added {added[:5]}"]
    for tag in tags_a:
        vr = _vr_of(sent, tag) or _vr_of(stored, tag)
        kind_a, va = _raw_value(sent, tag)
        kind_b, vb = _raw_value(stored, tag)
        where = f"{path}{tag}"
        if kind_a == "seq" or kind_b == "seq":
            if kind_a != kind_b or len(va) != len(vb):
                problems.append(f"{where}: sequence changed")
                continue
            for i, (ia, ib) in enumerate(zip(va, vb, strict=True)):
                problems += compare_attributes(ia, ib, f"{where}[{i}].", swap=swap)
        elif kind_a == kind_b == "bytes":
            if swap and vr in _SWAP_WIDTH:
                va = _swapped(va, _SWAP_WIDTH[vr])
            if va != vb:
                problems.append(f"{where}: value bytes {vb[:40]!r} != sent {va[:40]!r}")
        elif sent[tag].value != stored[tag].value:
            problems.append(f"{where}: value {stored[tag].value!r} != sent {sent[tag].value!r}")
    return problems


def _big_endian(path: Path) -> bool:
    return transfer_syntax(path) == str(ExplicitVRBigEndian)


def assert_attributes_preserved(sent: Path, stored: Path) -> None:
    """Every attribute but the pixel data keeps its value bytes; the synthetic generator's
    Vietnamese name, character set and private block are checked by name too."""
    swap = _big_endian(sent) != _big_endian(stored)
    a = dcmread(sent, force=True)
    b = dcmread(stored, force=True)
    problems = compare_attributes(a, b, swap=swap)
    assert not problems, f"{stored} differs from {sent}:\n" + "\n".join(problems[:20])
    if getattr(a, "Manufacturer", None) == "filmless-synthetic":
        assert_synthetic_identity(
            dcmread(sent, stop_before_pixels=True), dcmread(stored, stop_before_pixels=True)
        )


def assert_synthetic_identity(sent: Dataset, stored: Dataset) -> None:
    """The Vietnamese patient name in UTF-8 (ISO_IR 192) and the private block."""
    raw_sent = dataset_raw_bytes(sent, 0x00100010)  # read before pydicom decodes the element
    raw_stored = dataset_raw_bytes(stored, 0x00100010)
    assert raw_stored == raw_sent
    names = {p.name for p in VIETNAMESE_PATIENTS}
    assert stored.SpecificCharacterSet == "ISO_IR 192"
    assert str(stored.PatientName) == str(sent.PatientName)
    assert str(stored.PatientName) in names, stored.PatientName
    assert raw_stored.rstrip(b" ").decode("utf-8") == str(sent.PatientName)
    assert any(ord(ch) > 0x7F for ch in str(stored.PatientName)), "the name lost its diacritics"
    creator = Tag(0x0009, 0x0010)
    assert dataset_raw_bytes(stored, creator) == dataset_raw_bytes(sent, creator)
    assert dataset_raw_bytes(stored, creator).rstrip(b" ").decode() == PRIVATE_CREATOR
    assert dataset_raw_bytes(stored, Tag(0x0009, 0x1001)).rstrip(b" ") == b"synthetic phantom - not patient data"
    assert dataset_raw_bytes(stored, Tag(0x0009, 0x1003)) == dataset_raw_bytes(sent, Tag(0x0009, 0x1003))


def dataset_raw_bytes(ds: Dataset, tag: int) -> bytes:
    """Value bytes of a top-level element, which must not have been decoded yet."""
    raw = ds.get_item(tag)
    assert isinstance(raw, RawDataElement), f"{Tag(tag)} was decoded already"
    return bytes(raw.value or b"")


SENT_SYNTAX = "sent"
"""``received_as`` value meaning: the transfer syntax of the file that was sent."""


def check_stored_instance(
    index: IndexView,
    sent: Path,
    *,
    received_as: str | None = SENT_SYNTAX,
    expected_stored_ts: str | None = None,
    file_bytes_sent: bool = False,
) -> InstanceRow:
    """The one check every test uses: indexed, readable, received and stored in the expected
    transfer syntaxes, pixels equal bit for bit, attributes' value bytes preserved.

    ``file_bytes_sent``: the sender put the file's dataset bytes on the wire unchanged
    (pynetdicom with ``raw_c_store``); an object kept as received must then hold exactly those
    bytes. DCMTK senders re-encode (e.g. sequences get explicit lengths), Orthanc too, so for
    them only the attribute values are compared.

    ``received_as``: the syntax it must have travelled in (default: the file's own; ``None``
    accepts whatever the association negotiated). ``expected_stored_ts``: default is the
    storage policy applied to the syntax it was received in (:func:`policy_stored_syntax`).
    """
    uid = sop_instance_uid(sent)
    row = index.instance(uid)
    sent_ts = transfer_syntax(sent)
    stored = index.object_path(row)
    assert stored.is_file(), f"object {row.object_key} of {uid} is missing"
    if received_as is not None:
        wanted = sent_ts if received_as == SENT_SYNTAX else received_as
        assert row.received_transfer_syntax == wanted, (
            f"{sent.name}: received as {row.received_transfer_syntax}, expected {wanted} (file: {sent_ts})"
        )
    assert not row.pending_compression, f"{sent.name}: still pending compression"
    if expected_stored_ts is None:
        expected_stored_ts = policy_stored_syntax(row.received_transfer_syntax, has_pixels(sent))
    assert row.stored_transfer_syntax == expected_stored_ts, (
        f"{sent.name}: stored as {row.stored_transfer_syntax}, expected {expected_stored_ts}"
        f" (received as {row.received_transfer_syntax})"
    )
    assert transfer_syntax(stored) == row.stored_transfer_syntax
    if file_bytes_sent and row.stored_transfer_syntax == sent_ts:
        assert dataset_bytes(stored) == dataset_bytes(sent), f"{sent.name}: kept as sent but the bytes differ"
    assert_same_pixels(sent, stored)
    assert_attributes_preserved(sent, stored)
    return row


def has_pixels(path: Path) -> bool:
    return "PixelData" in dcmread(path, specific_tags=["PixelData"])


def policy_stored_syntax(received_ts: str, pixels: bool) -> str:
    """What filmless's default policy stores: JPEG-LS Lossless for native little-endian
    images; everything else (compressed, no pixel data, and the retired Explicit VR Big
    Endian, which storage.codecs.CompressionPolicy does not re-encode) as received."""
    if pixels and received_ts in UNCOMPRESSED and received_ts != str(ExplicitVRBigEndian):
        return JPEG_LS_LOSSLESS
    return received_ts


# ------------------------------------------------------------------------- DCMTK output


def storescu_results(output: str) -> tuple[list[str], list[str]]:
    """Parse ``storescu -v`` output: (files acknowledged with Success, files that failed)."""
    ok: list[str] = []
    failed: list[str] = []
    current: str | None = None
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("I: Sending file: "):
            current = line[len("I: Sending file: ") :]
        elif line.startswith("I: Received Store Response") and current is not None:
            (ok if "(Success)" in line else failed).append(current)
            current = None
        elif line.startswith("E: Store Failed, file: "):
            failed.append(line[len("E: Store Failed, file: ") :].rstrip(":"))
            current = None
    return ok, failed
