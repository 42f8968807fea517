"""storage.verify on a real archive: every indexed object present and intact, nothing stray."""

from __future__ import annotations

import os
import time

from filmless.bootstrap import Archive
from storage.index import Source, schema
from storage.verify import verify
from tests.integration.conftest import object_path, rows
from tests.unit.support import small_ct, to_part10

SOURCE = Source(aet="CT01", host="10.0.0.5")


def _populated(archive: Archive) -> None:
    """Three instances, one of them with a prior version, compressed."""
    datasets = small_ct(3, size=32)
    for ds in datasets:
        archive.ingest.store_file(to_part10(ds), SOURCE)
    datasets[0].StudyDescription = "second version"
    archive.ingest.store_file(to_part10(datasets[0]), SOURCE)
    archive.compressor().drain()


def test_a_clean_archive_verifies(archive: Archive) -> None:
    assert verify(archive.index, archive.store).ok  # empty
    _populated(archive)
    seen: list[int] = []
    report = verify(archive.index, archive.store, progress=seen.append)
    assert report.ok, report
    assert report.checked == 4  # three current objects and one prior version
    assert seen == [1, 2, 3, 4]


def test_a_deleted_object_is_missing(archive: Archive) -> None:
    _populated(archive)
    current = rows(archive, schema.instance)[1]
    prior = rows(archive, schema.instance_version)[0]
    object_path(archive, current.object_key).unlink()
    object_path(archive, prior.object_key).unlink()
    report = verify(archive.index, archive.store)
    assert not report.ok
    assert len(report.missing) == 2
    assert any(current.sop_instance_uid in m and m.startswith("current") for m in report.missing)
    assert any(prior.object_key in m and m.startswith("prior version") for m in report.missing)
    assert report.corrupt == [] and report.orphans == []


def test_a_flipped_byte_is_corrupt(archive: Archive) -> None:
    _populated(archive)
    row = rows(archive, schema.instance)[2]
    path = object_path(archive, row.object_key)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    report = verify(archive.index, archive.store)
    assert len(report.corrupt) == 1 and row.object_key in report.corrupt[0]
    assert report.missing == [] and report.orphans == []


def test_a_stray_file_is_an_orphan(archive: Archive) -> None:
    _populated(archive)
    row = rows(archive, schema.instance)[0]
    stray = object_path(archive, row.object_key).parent / "stray-copy.dcm"
    stray.write_bytes(archive.store.read(row.object_key))
    elsewhere = object_path(archive, "zz/zz/0123456789abcdef")
    elsewhere.parent.mkdir(parents=True)
    elsewhere.write_bytes(b"left over")
    report = verify(archive.index, archive.store)
    assert len(report.orphans) == 2
    assert any("zz/zz/0123456789abcdef" in o for o in report.orphans)
    assert report.missing == [] and report.corrupt == []


def test_a_crash_temporary_is_not_an_orphan(archive: Archive) -> None:
    _populated(archive)
    row = rows(archive, schema.instance)[0]
    tmp = object_path(archive, row.object_key).with_name("abc.123.456.tmp")
    tmp.write_bytes(b"half written")
    assert verify(archive.index, archive.store).ok
    assert archive.store.sweep_temporaries() == 0  # type: ignore[attr-defined]  # may be in progress
    old = time.time() - 7200
    os.utime(tmp, (old, old))
    assert archive.store.sweep_temporaries() == 1  # type: ignore[attr-defined]
    assert not tmp.exists()
