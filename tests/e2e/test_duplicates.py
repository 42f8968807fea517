"""Duplicates over the wire: a series sent again (same syntax, another syntax, another sender)
stores nothing new; changed content under the same UID becomes a new version, the old one
kept."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from tests.e2e.support import (
    IndexView,
    StartFilmless,
    Synthetic,
    as_dict,
    assert_verify_ok,
    check_stored_instance,
    object_files,
    sop_instance_uid,
)
from tests.peers import LOOPBACK, FilmlessServer, run_dcmsend, run_storescu

pytestmark = pytest.mark.e2e

SEED = 700
COUNTED = ("patients", "studies", "series", "instances", "prior_versions", "received_bytes", "stored_bytes")


@pytest.fixture(scope="module")
def server(start_filmless: StartFilmless) -> Iterator[FilmlessServer]:
    with start_filmless() as srv:
        yield srv


def _storescu(server: FilmlessServer, files: list[Path], *args: str) -> None:
    result = run_storescu(files, LOOPBACK, server.dicom_port, server.aet, "DUPTEST", extra_args=args, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def first_send(server: FilmlessServer, synthetic_data: Synthetic) -> dict[str, int]:
    files = synthetic_data.ct(SEED, "explicit")
    _storescu(server, files)
    after = server.wait_compressed(timeout=300)
    assert after["instances"] == len(files)
    return {key: int(as_dict(after)[key]) for key in COUNTED}


def _assert_nothing_new(server: FilmlessServer, first: dict[str, int], objects: list[Path]) -> None:
    now = server.wait_compressed(timeout=300)
    assert {key: int(as_dict(now)[key]) for key in COUNTED} == first
    assert as_dict(now)["prior_versions"] == 0
    assert object_files(server.data_dir) == objects
    assert all(row.version == 1 for row in IndexView(server.data_dir).instances().values())


@pytest.mark.parametrize(
    ("sender", "syntax", "args"),
    [
        ("storescu", "explicit", ()),  # the very same bytes
        ("storescu", "implicit", ()),  # same content, another transfer syntax
        ("storescu", "jpegls", ("-xt",)),  # same content, compressed by the sender
        ("dcmsend", "explicit", ()),
    ],
)
def test_resending_stores_nothing_new(
    server: FilmlessServer,
    synthetic_data: Synthetic,
    first_send: dict[str, int],
    sender: str,
    syntax: str,
    args: tuple[str, ...],
) -> None:
    objects = object_files(server.data_dir)
    files = synthetic_data.ct(SEED, syntax)  # same seed: same UIDs, same pixels
    assert {sop_instance_uid(p) for p in files} == set(IndexView(server.data_dir).instances())
    if sender == "storescu":
        _storescu(server, files, *args)
    else:
        result = run_dcmsend(files, LOOPBACK, server.dicom_port, server.aet, "DUPTEST", timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
    _assert_nothing_new(server, first_send, objects)
    index = IndexView(server.data_dir)
    for path in synthetic_data.ct(SEED, "explicit"):
        check_stored_instance(index, path)


def test_changed_content_is_a_new_version(
    server: FilmlessServer, synthetic_data: Synthetic, first_send: dict[str, int], tmp_path: Path
) -> None:
    """Runs last: the same SOP Instance UID with another Series Description is stored as
    version 2, version 1 kept as a prior version."""
    original = synthetic_data.ct(SEED, "explicit")[0]
    ds = dcmread(original)
    ds.SeriesDescription = "Ngực bụng 1.25mm (sửa)"
    changed = tmp_path / "changed.dcm"
    ds.save_as(changed, enforce_file_format=True)
    before_objects = len(object_files(server.data_dir))
    _storescu(server, [changed])
    now = as_dict(server.wait_compressed(timeout=120))
    assert now["instances"] == first_send["instances"]
    assert now["prior_versions"] == 1
    row = IndexView(server.data_dir).instance(sop_instance_uid(changed))
    assert row.version == 2
    check_stored_instance(IndexView(server.data_dir), changed)
    assert len(object_files(server.data_dir)) == before_objects + 1  # the old object is kept
    assert_verify_ok(server.data_dir)
