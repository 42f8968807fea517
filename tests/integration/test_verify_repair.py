"""`verify --repair` on a real archive: it removes orphan objects and temporary files a crash
left behind once they are old enough, and never an object that an index row, a pending
deletion or a compression job names."""

from __future__ import annotations

import os
import time
from pathlib import Path

from filmless.bootstrap import Archive
from storage.index import Source, schema
from storage.verify import verify
from tests.integration.conftest import object_path, rows
from tests.unit.support import small_ct, to_part10

SOURCE = Source(aet="CT01", host="10.0.0.5")
OLD = 2 * 3600.0


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _write(archive: Archive, key: str, data: bytes, *, age: float = 0.0) -> Path:
    path: Path = object_path(archive, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if age:
        _age(path, age)
    return path


def test_repair_removes_old_leftovers_and_nothing_referenced(archive: Archive) -> None:
    datasets = small_ct(3, size=32)
    for ds in datasets:
        archive.ingest.store_file(to_part10(ds), SOURCE)
    datasets[0].StudyDescription = "second version"
    archive.ingest.store_file(to_part10(datasets[0]), SOURCE)
    archive.compressor().drain()
    referenced = {r.object_key for r in rows(archive, schema.instance)} | {
        r.object_key for r in rows(archive, schema.instance_version)
    }
    assert len(referenced) == 4
    for key in referenced:  # as old as the leftovers: age alone never condemns an object
        _age(object_path(archive, key), OLD)

    old_orphan = _write(archive, "aa/aa/aaaa-old-orphan", b"left by a crash", age=OLD)
    young_orphan = _write(archive, "bb/bb/bbbb-young-orphan", b"maybe an ingest under way")
    old_tmp = _write(archive, "cc/cc/cccc.1.2.tmp", b"half written", age=OLD)
    young_tmp = _write(archive, "cc/cc/cccc.3.4.tmp", b"being written")
    scheduled = _write(archive, "dd/dd/dddd-scheduled", b"the garbage collector's", age=OLD)
    archive.index.schedule_delete("dd/dd/dddd-scheduled", "test")

    before = verify(archive.index, archive.store)
    assert sorted(before.orphans) == [
        "object aa/aa/aaaa-old-orphan has no index row",
        "object bb/bb/bbbb-young-orphan has no index row",
    ]
    assert len(before.temporaries) == 2 and before.removed == []
    assert old_orphan.exists() and old_tmp.exists()  # verify alone changes nothing

    repaired = verify(archive.index, archive.store, repair=True)
    assert sorted(repaired.removed) == [
        "orphan object aa/aa/aaaa-old-orphan",
        f"temporary file {old_tmp}",
    ]
    assert not old_orphan.exists() and not old_tmp.exists()
    assert young_orphan.exists() and young_tmp.exists() and scheduled.exists()
    assert len(repaired.orphans) == 1 and "bbbb-young-orphan" in repaired.orphans[0]
    assert "not removed" in repaired.orphans[0]
    assert not repaired.ok and repaired.missing == [] and repaired.corrupt == []

    # With nothing being stored, any age will do.
    now = verify(archive.index, archive.store, repair=True, min_age=0)
    assert sorted(now.removed) == ["orphan object bb/bb/bbbb-young-orphan", f"temporary file {young_tmp}"]
    assert now.ok and now.temporaries == []
    assert scheduled.exists()  # left to the garbage collector
    for key in referenced:
        assert object_path(archive, key).is_file()
    final = verify(archive.index, archive.store)
    assert final.ok and final.checked == 4
