"""C-STORE from DCMTK (storescu and dcmsend) in every transfer syntax we can produce, read back
from the archive: index row, stored transfer syntax, pixels bit for bit, attributes byte for byte.

storescu proposes only uncompressed syntaxes unless told otherwise, and would then decompress
(or fail on) compressed files: each compressed case passes the option that proposes the
file's own syntax, so that it travels as it is. dcmsend proposes each file's own syntax.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from tests.e2e.support import (
    IndexView,
    JPEG_LS_LOSSLESS,
    SENT_SYNTAX,
    StartFilmless,
    Synthetic,
    assert_verify_ok,
    check_stored_instance,
    copy_with_new_uids,
    pydicom_sample,
    stats,
    transfer_syntax,
)
from tests.peers import LOOPBACK, FilmlessServer, run_dcmsend, run_storescu

pytestmark = pytest.mark.e2e

# What each generator syntax is on the wire, and the storescu option proposing it.
SYNTAX_UID = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "big": ExplicitVRBigEndian,
    "deflated": DeflatedExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpegls": JPEGLSLossless,
    "j2k": JPEG2000Lossless,
    "jpeg": JPEGBaseline8Bit,
}
STORESCU_PROPOSE = {
    # storescu proposes all uncompressed syntaxes by default, but sends big endian files as
    # little endian unless big endian comes first (-xb).
    "explicit": [], "implicit": [], "big": ["-xb"],
    "deflated": ["-xd"], "rle": ["-xr"], "jpegls": ["-xt"], "j2k": ["-xv"], "jpeg": ["-xy"],
}
# (tool, kind, syntax, seed): every seed is its own study (and patient seed % 6).
CASES = [
    *[("storescu", "ct", syntax, 10 + n) for n, syntax in enumerate(
        ["explicit", "implicit", "big", "deflated", "rle", "jpegls", "j2k"])],
    *[("dcmsend", "ct", syntax, 30 + n) for n, syntax in enumerate(
        ["explicit", "implicit", "big", "deflated", "rle", "jpegls", "j2k"])],
    ("dcmsend", "dx", "explicit", 50),
    ("storescu", "us", "explicit", 51),
    ("dcmsend", "us", "jpegls", 52),
    ("storescu", "us", "jpeg", 53),
    ("dcmsend", "us", "jpeg", 54),
    ("storescu", "sr", "explicit", 55),
    ("dcmsend", "sr", "explicit", 56),
]


@pytest.fixture(scope="module")
def server(start_filmless: StartFilmless) -> Iterator[FilmlessServer]:
    with start_filmless() as srv:
        yield srv


def send(tool: str, files: list[Path], server: FilmlessServer, args: list[str]) -> subprocess.CompletedProcess[str]:
    sender = run_storescu if tool == "storescu" else run_dcmsend
    result = sender(files, LOOPBACK, server.dicom_port, server.aet, "E2E", extra_args=["-v", *args], timeout=300)
    assert result.returncode == 0, f"{tool} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _files(data: Synthetic, kind: str, syntax: str, seed: int) -> list[Path]:
    if kind == "ct":
        return data.ct(seed, syntax)
    if kind == "dx":
        return data.dx(seed, syntax)
    if kind == "us":
        return data.us(seed, syntax)
    return data.sr(seed)


@pytest.mark.parametrize(("tool", "kind", "syntax", "seed"), CASES, ids=[f"{t}-{k}-{s}" for t, k, s, _ in CASES])
def test_store_synthetic(
    server: FilmlessServer, synthetic_data: Synthetic, tool: str, kind: str, syntax: str, seed: int
) -> None:
    """Stored, then (native little endian) re-encoded as JPEG-LS Lossless or (compressed, big
    endian, SR) kept as received; pixels and attributes as sent.

    storescu proposes one presentation context per transfer syntax, so the file's own syntax
    is negotiated and checked. dcmsend proposes all its syntaxes in one context and filmless
    picks among them (see test_dcmsend_negotiates_the_files_own_syntax), so for dcmsend the
    received syntax is whatever was negotiated and the expected stored one follows from it.
    """
    files = _files(synthetic_data, kind, syntax, seed)
    assert all(transfer_syntax(f) == SYNTAX_UID[syntax] for f in files)
    send(tool, files, server, STORESCU_PROPOSE[syntax] if tool == "storescu" else [])
    server.wait_compressed(timeout=300)
    index = IndexView(server.data_dir)
    for path in files:
        # For an implicit VR file storescu also offers explicit VR, which filmless prefers
        # (private tags keep their VRs); every other storescu send is pinned to the file's syntax.
        pinned = tool == "storescu" and syntax != "implicit"
        row = check_stored_instance(index, path, received_as=SENT_SYNTAX if pinned else None)
        if tool == "storescu" and kind != "sr" and syntax in ("explicit", "implicit", "deflated"):
            assert row.stored_transfer_syntax == JPEG_LS_LOSSLESS
        assert "corrupt" not in row.flags and "not-compressed" not in row.flags, row.flags


@pytest.mark.parametrize("syntax", ["explicit", "jpegls"])
def test_dcmsend_negotiates_the_files_own_syntax(
    server: FilmlessServer, synthetic_data: Synthetic, syntax: str
) -> None:
    files = synthetic_data.ct(70 + len(syntax), syntax, slices=2)
    send("dcmsend", files, server, [])
    server.wait_compressed(timeout=120)
    index = IndexView(server.data_dir)
    for path in files:
        check_stored_instance(index, path, received_as=SENT_SYNTAX)


JPEG_SAMPLES = [
    ("jpeg-baseline", JPEGBaseline8Bit, ["-xy"]),
    ("jpeg-extended", JPEGExtended12Bit, ["-xx"]),
    ("jpeg-lossless", JPEGLosslessSV1, ["-xs"]),
]


@pytest.mark.parametrize("tool", ["storescu", "dcmsend"])
@pytest.mark.parametrize(("name", "syntax", "propose"), JPEG_SAMPLES, ids=[s[0] for s in JPEG_SAMPLES])
def test_store_pydicom_jpeg_sample(
    server: FilmlessServer, tmp_path: Path, tool: str, name: str, syntax: str, propose: list[str]
) -> None:
    """pydicom's bundled JPEG files (the generator has no encoder for these syntaxes), each
    sent under a fresh SOP Instance UID so both senders store their own copy."""
    source = pydicom_sample(name)
    if source is None:
        pytest.skip(f"no local pydicom sample for {name}")
    path = copy_with_new_uids(source, tmp_path / f"{name}.dcm")
    assert transfer_syntax(path) == syntax
    send(tool, [path], server, propose if tool == "storescu" else [])
    server.wait_compressed(timeout=120)
    # Compressed input is kept as it arrived (dcmsend: as negotiated, see the test above).
    check_stored_instance(IndexView(server.data_dir), path, received_as=SENT_SYNTAX if tool == "storescu" else None)


def test_archive_consistent_after_all_sends(server: FilmlessServer) -> None:
    """Runs last in this module: stats agree with the index, verify passes."""
    data = stats(server.data_dir)
    for key in ("patients", "studies", "series", "instances", "received_bytes", "stored_bytes", "pending_compression"):
        assert key in data
    index = IndexView(server.data_dir)
    assert data["instances"] == index.count() > 0
    assert data["pending_compression"] == 0
    assert data["prior_versions"] == 0
    assert data["stored_bytes"] < data["received_bytes"]
    assert_verify_ok(server.data_dir)
