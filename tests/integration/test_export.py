"""storage.export on real archives: a round trip (export, restore into a new archive) keeps every
row of every table and every object byte for byte and verifies clean; exporting again copies
only new objects; exports go to a folder or an S3 bucket (MinIO); encrypted archives export
ciphertext; restore refuses a target that holds data."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from filmless.bootstrap import Archive
from storage import export as exporting
from storage.index import ApplicationEntity, Source
from storage.objects import ObjectStore
from storage.objects.s3 import S3ObjectStore
from storage.verify import verify
from tests.object_stores import MinioServer
from tests.unit.support import small_ct, to_part10

SOURCE = Source(aet="CT01", host="10.0.0.5")


def _populate(archive: Archive, seed: int = 0, n: int = 3) -> None:
    """A few compressed CT slices, one replaced by a second version, an AE, audit events."""
    datasets = small_ct(n, size=32, seed=seed)
    for ds in datasets:
        archive.ingest.store_file(to_part10(ds), SOURCE)
    datasets[0].StudyDescription = "second version"
    archive.ingest.store_file(to_part10(datasets[0]), SOURCE)
    archive.compressor().drain()
    archive.index.add_ae(ApplicationEntity(f"CT{seed:02d}", "10.0.0.5", 104, "CT room, Khoa Chẩn đoán", may_find=False))
    archive.index.record_audit("TEST", "success", actor="tester", detail={"note": "bệnh nhân"})


def _normal(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    return value


def table_rows(archive: Archive) -> dict[str, list[dict[str, Any]]]:
    """Every row of every index table (datetimes in UTC), in primary key order."""
    found: dict[str, list[dict[str, Any]]] = {}
    with archive.index.read() as conn:
        for table in exporting.tables():
            result = conn.execute(select(table).order_by(*table.primary_key.columns))
            found[table.name] = [{k: _normal(v) for k, v in row._mapping.items()} for row in result]
    return found


def objects(archive: Archive) -> dict[str, bytes]:
    return {key: archive.store.read(key) for key in archive.store.keys()}


def _restore_ok(source: ObjectStore, target: Archive) -> exporting.RestoreReport:
    report = exporting.restore(source, target.index, target.store)
    assert report.ok, (report.errors, report.verify)
    return report


def test_round_trip_through_a_folder(make_archive: Callable[..., Archive], tmp_path: Path) -> None:
    source = make_archive()
    _populate(source)
    before_rows, before_objects = table_rows(source), objects(source)
    assert before_rows["instance_version"] and before_rows["application_entity"] and before_rows["audit_event"]

    dest = tmp_path / "export"
    report = exporting.export(source.index, source.store, exporting.folder(dest), filmless_version="test")
    assert report.ok, report.errors
    assert report.copied == report.objects == len(before_objects) == 4 and report.skipped == 0

    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["format"] == "filmless-export" and manifest["alembic_revision"]
    assert manifest["counts"]["instance"] == 3 and manifest["counts"]["objects"] == 4
    assert manifest["encryption"] == {"encrypted": False, "key_ids": []}
    assert (dest / "README.txt").is_file() and (dest / "index" / "audit_event.jsonl").is_file()
    for key, data in before_objects.items():
        assert (dest / "objects" / key).read_bytes() == data  # byte for byte, as stored
    first = json.loads((dest / "index" / "instance.jsonl").read_text().splitlines()[0])
    assert list(first) == [c.name for c in exporting.metadata.tables["instance"].columns]

    target = make_archive()
    restored = _restore_ok(exporting.folder(dest), target)
    assert restored.objects == 4 and restored.verify is not None and restored.verify.checked == 4
    assert table_rows(target) == before_rows
    assert objects(target) == before_objects
    assert verify(target.index, target.store).ok
    # The restored archive goes on working (on PostgreSQL: sequences moved past the restored keys).
    target.ingest.store_file(to_part10(small_ct(1, size=32, seed=9)[0]), SOURCE)
    target.index.record_audit("TEST", "success")
    target.index.add_ae(ApplicationEntity("NEW", "10.0.0.6", 104))


def test_restore_from_sqlite_onto_the_test_backend(make_archive: Callable[..., Archive], tmp_path: Path) -> None:
    source = make_archive(index=None)  # SQLite, whatever the backend of the target
    _populate(source)
    dest = exporting.folder(tmp_path / "export")
    assert exporting.export(source.index, source.store, dest).ok
    target = make_archive()
    _restore_ok(dest, target)
    assert table_rows(target) == table_rows(source)
    assert objects(target) == objects(source)


def test_a_second_export_copies_only_new_objects(make_archive: Callable[..., Archive], tmp_path: Path) -> None:
    source = make_archive()
    _populate(source)
    dest = exporting.folder(tmp_path / "export")
    first = exporting.export(source.index, source.store, dest)
    assert first.ok and first.copied == 4
    again = exporting.export(source.index, source.store, dest)
    assert again.ok and again.copied == 0 and again.skipped == 4

    _populate(source, seed=1, n=2)  # two instances, one replaced: three new objects
    third = exporting.export(source.index, source.store, dest)
    assert third.ok and third.copied == 3 and third.skipped == 4 and third.objects == 7
    # An object removed at the destination is copied again.
    victim = next(iter(objects(source)))
    (tmp_path / "export" / "objects" / victim).unlink()
    fourth = exporting.export(source.index, source.store, dest)
    assert fourth.ok and fourth.copied == 1

    target = make_archive()
    _restore_ok(dest, target)
    assert table_rows(target) == table_rows(source)
    assert objects(target) == objects(source)


def test_an_incomplete_or_altered_export_is_refused(make_archive: Callable[..., Archive], tmp_path: Path) -> None:
    source = make_archive()
    _populate(source)
    folder = tmp_path / "export"
    assert exporting.export(source.index, source.store, exporting.folder(folder)).ok
    # Into an archive that holds data: refused, nothing changed.
    with pytest.raises(exporting.ExportError, match="not empty"):
        exporting.restore(exporting.folder(folder), source.index, source.store)
    # An altered dump.
    dump = folder / "index" / "patient.jsonl"
    dump.write_text(dump.read_text().replace("second version", "tampered"))
    (folder / "index" / "study.jsonl").write_bytes((folder / "index" / "study.jsonl").read_bytes() + b"\n")
    with pytest.raises(exporting.ExportError, match="sha256"):
        exporting.restore(exporting.folder(folder), make_archive().index, make_archive().store)
    # No manifest: an interrupted export.
    (folder / "manifest.json").unlink()
    with pytest.raises(exporting.ExportError, match="no manifest"):
        exporting.restore(exporting.folder(folder), make_archive().index, make_archive().store)


def test_a_missing_object_fails_the_export_without_a_manifest(make_archive: Callable[..., Archive], tmp_path: Path) -> None:
    source = make_archive()
    _populate(source)
    key = next(iter(objects(source)))
    source.store.delete(key)
    report = exporting.export(source.index, source.store, exporting.folder(tmp_path / "export"))
    assert not report.ok and key in report.errors[0]
    assert not (tmp_path / "export" / "manifest.json").exists()


def test_an_encrypted_archive_exports_ciphertext(make_archive: Callable[..., Archive], tmp_path: Path) -> None:
    keys = f"site-a:{base64.b64encode(os.urandom(32)).decode()}"
    source = make_archive(storage_encryption_keys=keys)
    _populate(source)
    folder = tmp_path / "export"
    report = exporting.export(source.index, source.store, exporting.folder(folder))
    assert report.ok and report.manifest["encryption"] == {"encrypted": True, "key_ids": ["site-a"]}
    exported = [p for p in (folder / "objects").rglob("*") if p.is_file()]
    assert len(exported) == 4 and all(p.read_bytes().startswith(b"FLEN") for p in exported)
    with pytest.raises(exporting.ExportError, match="site-a"):
        exporting.restore(exporting.folder(folder), make_archive().index, make_archive().store)
    target = make_archive(storage_encryption_keys=keys)
    _restore_ok(exporting.folder(folder), target)
    assert objects(target) == objects(source)  # decrypted with the same key
    assert table_rows(target) == table_rows(source)


@pytest.fixture(scope="module")
def minio() -> Iterator[MinioServer]:
    with MinioServer() as server:
        yield server


@pytest.mark.parametrize("index_backend", ["sqlite"], indirect=True)
def test_round_trip_through_an_s3_bucket(make_archive: Callable[..., Archive], minio: MinioServer) -> None:
    source = make_archive()
    _populate(source)
    bucket = minio.create_bucket("filmless-export")
    dest = S3ObjectStore(minio.s3_config(bucket, "site-a/2026/"))
    first = exporting.export(source.index, source.store, dest)
    assert first.ok and first.copied == 4
    _populate(source, seed=2, n=1)  # one instance and its second version: two new objects
    second = exporting.export(source.index, source.store, dest)
    assert second.ok and second.copied == 2 and second.skipped == 4
    names = {o.object_name for o in minio.client().list_objects(bucket, prefix="site-a/2026/", recursive=True)}
    assert "site-a/2026/manifest.json" in names and "site-a/2026/index/instance.jsonl" in names

    target = make_archive()
    _restore_ok(S3ObjectStore(minio.s3_config(bucket, "site-a/2026/")), target)
    assert table_rows(target) == table_rows(source)
    assert objects(target) == objects(source)
