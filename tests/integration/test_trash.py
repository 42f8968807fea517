"""The trash on a real archive (index on SQLite and PostgreSQL, objects on local files):
delete -> gone from the index, object kept, verify clean; restore -> back, identical; purge
after the retention period -> gone for good, verify clean. And the CLI over it."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import func, select, update

from filmless.bootstrap import Archive
from filmless.cli import main as cli
from storage.index import Source, schema
from storage.index import trash as trash_index
from storage.index.repository import utcnow
from storage.ingest import Outcome
from storage.trash import RestoreOutcome, Trash
from storage.verify import verify
from tests.fixtures import synthetic
from tests.integration.conftest import rows
from tests.unit.support import small_ct, to_part10

SOURCE = Source(aet="CT01", host="10.0.0.5")


def _trash(archive: Archive) -> Trash:
    return Trash(archive.index, archive.store, archive.ingest)


def _study_with_two_series(archive: Archive) -> tuple[list[Dataset], Dataset]:
    """Three CT slices and an SR report in one study."""
    cts = small_ct(3, size=32, seed=7)
    sr = synthetic.sr_document(seed=7, study_uid=str(cts[0].StudyInstanceUID))
    sr.PatientID, sr.PatientName = cts[0].PatientID, cts[0].PatientName
    for ds in [*cts, sr]:
        assert archive.ingest.store_file(to_part10(ds), SOURCE).outcome is Outcome.STORED
    return cts, sr


def assert_derived_consistent(archive: Archive) -> None:
    """Every series and study count, byte sum and ModalitiesInStudy / SOPClassesInStudy matches
    the instances that are there; no empty series, study or patient row is left."""
    i, s, st, p = schema.instance, schema.series, schema.study, schema.patient
    with archive.index.read() as conn:
        for series_row in conn.execute(select(s)):
            n = conn.execute(select(func.count()).where(i.c.series_pk == series_row.pk)).scalar_one()
            assert n > 0 and series_row.number_of_instances == n
        for study_row in conn.execute(select(st)):
            members = conn.execute(
                select(i.c.sop_class_uid, i.c.received_size, i.c.stored_size, s.c.modality, s.c.pk)
                .select_from(i.join(s))
                .where(s.c.study_pk == study_row.pk)
            ).all()
            assert members, "an empty study row is left"
            assert study_row.number_of_instances == len(members)
            assert study_row.number_of_series == len({m.pk for m in members})
            assert study_row.received_bytes == sum(m.received_size for m in members)
            assert study_row.stored_bytes == sum(m.stored_size for m in members)
            assert study_row.modalities_in_study == "\\".join(sorted({m.modality for m in members if m.modality}))
            assert study_row.sop_classes_in_study == "\\".join(sorted({m.sop_class_uid for m in members}))
        for patient_row in conn.execute(select(p)):
            assert conn.execute(select(func.count()).where(st.c.patient_pk == patient_row.pk)).scalar_one() > 0


def _age(archive: Archive, days: float) -> None:
    """Move the deletions (and the replacements before them) ``days`` into the past: the
    retention period, without waiting for it."""
    with archive.index.write() as conn:
        conn.execute(update(schema.trash_item).values(trashed_at=utcnow() - timedelta(days=days)))
        conn.execute(update(schema.instance_version).values(superseded_at=utcnow() - timedelta(days=days + 1)))


def test_delete_a_study_keeps_its_objects_and_restore_brings_it_back_identical(archive: Archive) -> None:
    cts, sr = _study_with_two_series(archive)
    study_uid = str(cts[0].StudyInstanceUID)
    before = {r.sop_instance_uid: r for r in rows(archive, schema.instance)}
    objects = set(archive.store.keys())
    stats = archive.index.stats()

    items = _trash(archive).delete(study_uid, reason="wrong patient", actor="admin1")
    assert len(items) == 4 and {i.level for i in items} == {"STUDY"}
    assert all(i.reason == "wrong patient" and i.actor == "admin1" and i.state == "trashed" for i in items)
    assert archive.index.retrievable(study_uids=[study_uid]) == []
    assert archive.index.stats()["instances"] == stats["instances"] - 4
    assert rows(archive, schema.study) == [] and rows(archive, schema.patient) == []
    assert set(archive.store.keys()) == objects  # the objects stay
    report = verify(archive.index, archive.store)
    assert report.ok and report.checked == 4, report

    results = _trash(archive).restore(items)
    assert [r.outcome for r in results] == [RestoreOutcome.RESTORED] * 4
    back = {r.sop_instance_uid: r for r in rows(archive, schema.instance)}
    assert set(back) == set(before)
    for uid, row in back.items():
        assert row.object_sha256 == before[uid].object_sha256  # the same bytes
        assert hashlib.sha256(archive.store.read(row.object_key)).hexdigest() == row.object_sha256
    assert archive.index.retrievable(study_uids=[study_uid]) != []
    assert all(i.state == "restored" for i in trash_index.items(archive.index))
    assert_derived_consistent(archive)
    assert _trash(archive).collect_garbage() == 4  # the trashed copies
    assert verify(archive.index, archive.store).ok
    assert len(list(archive.store.keys())) == 4


def test_delete_one_instance_keeps_its_series_consistent(archive: Archive) -> None:
    cts, sr = _study_with_two_series(archive)
    study_uid, series_uid = str(cts[0].StudyInstanceUID), str(cts[0].SeriesInstanceUID)
    items = _trash(archive).delete(study_uid, series_uid, str(cts[1].SOPInstanceUID), reason="duplicate slice", actor="a")
    assert [i.level for i in items] == ["IMAGE"]
    assert {r.sop_instance_uid for r in archive.index.retrievable(series_uids=[series_uid])} == {
        str(cts[0].SOPInstanceUID), str(cts[2].SOPInstanceUID)
    }
    assert_derived_consistent(archive)
    # The SR series goes: the study is CT only again.
    _trash(archive).delete(study_uid, str(sr.SeriesInstanceUID), reason="report sent to the wrong study", actor="a")
    assert_derived_consistent(archive)
    (study_row,) = rows(archive, schema.study)
    assert study_row.modalities_in_study == "CT" and study_row.number_of_series == 1
    assert study_row.sop_classes_in_study == str(cts[0].SOPClassUID)
    assert verify(archive.index, archive.store).ok


def test_nothing_matching_changes_nothing(archive: Archive) -> None:
    cts, _sr = _study_with_two_series(archive)
    study_uid = str(cts[0].StudyInstanceUID)
    assert _trash(archive).delete("1.2.3.4", reason="x", actor="a") == []
    # The instance exists but not under that series: not matched.
    assert _trash(archive).delete(study_uid, "1.2.3", str(cts[0].SOPInstanceUID), reason="x", actor="a") == []
    assert trash_index.items(archive.index) == []
    assert archive.index.stats()["instances"] == 4
    with pytest.raises(ValueError):
        _trash(archive).delete(study_uid, reason="  ", actor="a")


def test_delete_drops_compression_jobs_and_cached_metadata(archive: Archive) -> None:
    cts = small_ct(2, size=32, seed=8)
    for ds in cts:
        archive.ingest.store_file(to_part10(ds), SOURCE)
    assert rows(archive, schema.compression_job)  # background compression queued
    uid = str(cts[0].SOPInstanceUID)
    with archive.index.write() as conn:
        conn.execute(
            schema.instance_metadata.insert().values(sop_instance_uid=uid, received_sha256="0" * 64, body=b"x", created_at=utcnow())
        )
    _trash(archive).delete(str(cts[0].StudyInstanceUID), reason="test", actor="a")
    assert rows(archive, schema.compression_job) == []
    with archive.index.read() as conn:
        assert conn.execute(select(func.count()).select_from(schema.instance_metadata)).scalar_one() == 0
    archive.compressor().drain()  # nothing left to do, nothing broken
    assert verify(archive.index, archive.store).ok


def test_the_deletion_outbox_never_deletes_a_trashed_object(archive: Archive) -> None:
    cts = small_ct(1, size=32, seed=9)
    archive.ingest.store_file(to_part10(cts[0]), SOURCE)
    (item,) = _trash(archive).delete(str(cts[0].StudyInstanceUID), reason="test", actor="a")
    archive.index.schedule_delete(item.object_key, "a stray deletion")
    assert archive.index.is_referenced(item.object_key)
    _trash(archive).collect_garbage()
    assert archive.store.exists(item.object_key)
    assert verify(archive.index, archive.store, repair=True, min_age=0).ok
    assert archive.store.exists(item.object_key)  # repair leaves it alone too


def test_restore_does_not_overwrite_an_instance_sent_again(archive: Archive) -> None:
    cts = small_ct(2, size=32, seed=10)
    for ds in cts:
        archive.ingest.store_file(to_part10(ds), SOURCE)
    items = _trash(archive).delete(str(cts[0].StudyInstanceUID), reason="test", actor="a")
    # One comes back with other content, the other with the same.
    changed = cts[0].copy()
    changed.StudyDescription = "corrected"
    archive.ingest.store_file(to_part10(changed), SOURCE)
    archive.ingest.store_file(to_part10(cts[1]), SOURCE)
    by_uid = {i.sop_instance_uid: i for i in items}
    results = {r.item.sop_instance_uid: r for r in _trash(archive).restore(items)}
    assert results[str(cts[0].SOPInstanceUID)].outcome is RestoreOutcome.CONFLICT
    assert results[str(cts[1].SOPInstanceUID)].outcome is RestoreOutcome.ALREADY_THERE
    current = archive.index.get_instance(str(cts[0].SOPInstanceUID))
    assert current is not None and current.version == 1
    assert current.received_sha256 != by_uid[str(cts[0].SOPInstanceUID)].received_sha256
    states = {i.sop_instance_uid: i.state for i in trash_index.items(archive.index)}
    assert states == {str(cts[0].SOPInstanceUID): "trashed", str(cts[1].SOPInstanceUID): "restored"}
    assert verify(archive.index, archive.store).ok


def test_purge_after_retention_removes_objects_and_prior_versions(archive: Archive) -> None:
    cts = small_ct(2, size=32, seed=11)
    for ds in cts:
        archive.ingest.store_file(to_part10(ds), SOURCE)
    newer = cts[0].copy()
    newer.StudyDescription = "second version"
    assert archive.ingest.store_file(to_part10(newer), SOURCE).outcome is Outcome.REPLACED
    (prior,) = rows(archive, schema.instance_version)
    items = _trash(archive).delete(str(cts[0].StudyInstanceUID), reason="test", actor="a")
    trash = _trash(archive)
    assert trash.due(timedelta(days=30)) == []  # not old enough
    _age(archive, 31)
    due = trash.due(timedelta(days=30))
    assert {i.pk for i in due} == {i.pk for i in items}
    report = trash.purge(due)
    assert len(report.purged) == 2 and report.prior_versions == 1
    assert report.objects_deleted == 3
    for key in [i.object_key for i in items] + [prior.object_key]:
        assert not archive.store.exists(key)
    assert rows(archive, schema.instance_version) == []
    assert all(i.state == "purged" for i in trash_index.items(archive.index))
    assert list(archive.store.keys()) == []
    report_v = verify(archive.index, archive.store)
    assert report_v.ok and report_v.checked == 0
    assert trash.purge(due).purged == []  # twice is nothing
    assert [r.outcome for r in trash.restore(trash_index.items(archive.index))] == [RestoreOutcome.NOT_IN_TRASH] * 2


def _cli(archive: Archive, *args: str) -> int:
    settings = archive.settings
    extra = ["--data", str(settings.data)]
    if settings.index is not None:
        extra += ["--index", settings.index]
    return cli([*args, *extra])


def test_the_cli_lists_restores_and_purges(archive: Archive, capsys: pytest.CaptureFixture[str]) -> None:
    cts = small_ct(2, size=32, seed=12)
    for ds in cts:
        archive.ingest.store_file(to_part10(ds), SOURCE)
    study_uid = str(cts[0].StudyInstanceUID)
    items = _trash(archive).delete(study_uid, reason="wrong patient", actor="admin1")
    capsys.readouterr()

    assert _cli(archive, "trash", "list", "--json") == 0
    listed: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    assert {i["sop_instance_uid"] for i in listed} == {str(ds.SOPInstanceUID) for ds in cts}
    assert all(i["reason"] == "wrong patient" and i["state"] == "trashed" and "object_key" not in i for i in listed)

    assert _cli(archive, "trash", "restore", "--id", str(items[0].pk)) == 0
    assert "1 of 1 restored" in capsys.readouterr().out
    assert archive.index.get_instance(items[0].sop_instance_uid) is not None
    assert _cli(archive, "trash", "restore", "--id", str(items[0].pk)) == 1  # not in the trash any more
    capsys.readouterr()

    assert _cli(archive, "purge", "--older-than", "0") == 0  # without --yes: only a list
    assert "run again with --yes" in capsys.readouterr().out
    assert archive.store.exists(items[1].object_key)
    assert _cli(archive, "purge", "--yes") == 0  # default retention: too young
    assert "nothing to purge" in capsys.readouterr().out
    assert _cli(archive, "purge", "--older-than", "0", "--yes") == 0
    assert "purged 1 instances" in capsys.readouterr().out
    assert not archive.store.exists(items[1].object_key)
    actions = [(e.action, e.outcome) for e in archive.index.audit_events(50)]
    assert ("trash.restore", "success") in actions and ("trash.purge", "success") in actions
    assert verify(archive.index, archive.store).ok


def test_an_export_keeps_the_trash_restorable(make_archive: Any, tmp_path: Any) -> None:
    from storage import export as exporting

    source = make_archive()
    cts = small_ct(2, size=32, seed=13)
    for ds in cts:
        source.ingest.store_file(to_part10(ds), SOURCE)
    (item,) = _trash(source).delete(str(cts[0].StudyInstanceUID), str(cts[0].SeriesInstanceUID), str(cts[0].SOPInstanceUID), reason="test", actor="a")
    dest = exporting.folder(tmp_path / "export")
    report = exporting.export(source.index, source.store, dest)
    assert report.ok and report.objects == 2, report.errors
    target = make_archive()
    restored = exporting.restore(dest, target.index, target.store)
    assert restored.ok and restored.verify is not None and restored.verify.checked == 2, restored
    (copy,) = trash_index.items(target.index)
    assert copy.object_sha256 == item.object_sha256
    assert [r.outcome for r in _trash(target).restore([copy])] == [RestoreOutcome.RESTORED]
    assert target.index.get_instance(item.sop_instance_uid) is not None


def test_an_instance_sent_again_after_its_deletion_can_be_replaced_again(archive: Archive) -> None:
    """The trashed lineage keeps its prior versions (1) until purged; the instance sent again
    starts a new lineage, whose own replacements must not collide with them."""
    (ds,) = small_ct(1, size=32, seed=14)
    archive.ingest.store_file(to_part10(ds), SOURCE)
    second = ds.copy()
    second.StudyDescription = "second"
    assert archive.ingest.store_file(to_part10(second), SOURCE).outcome is Outcome.REPLACED
    _trash(archive).delete(str(ds.StudyInstanceUID), reason="wrong patient", actor="a")
    third = ds.copy()
    third.StudyDescription = "third"
    assert archive.ingest.store_file(to_part10(third), SOURCE).outcome is Outcome.STORED
    fourth = ds.copy()
    fourth.StudyDescription = "fourth"
    assert archive.ingest.store_file(to_part10(fourth), SOURCE).outcome is Outcome.REPLACED
    versions = sorted(r.version for r in rows(archive, schema.instance_version))
    assert len(versions) == len(set(versions)) == 2
    assert verify(archive.index, archive.store).ok
    # Purging the trashed lineage removes its prior version, not the new lineage's.
    _age(archive, 31)
    with archive.index.write() as conn:  # the new lineage's replacement happened just now
        conn.execute(update(schema.instance_version).where(schema.instance_version.c.version == max(versions)).values(superseded_at=utcnow()))
    trash = _trash(archive)
    report = trash.purge(trash.due(timedelta(days=30)))
    assert report.prior_versions == 1
    (left,) = rows(archive, schema.instance_version)
    assert left.version == max(versions)
    assert verify(archive.index, archive.store).ok


def test_deletes_during_ingest_into_the_same_study_lose_nothing(archive: Archive) -> None:
    """An ingest and deletes of the same study at once (on PostgreSQL truly in parallel): each
    instance ends up either current or in the trash, never both or neither, and the counts
    are right."""
    import threading

    cts = small_ct(12, size=32, seed=15)
    study_uid = str(cts[0].StudyInstanceUID)
    errors: list[BaseException] = []
    done = threading.Event()

    def send() -> None:
        try:
            for ds in cts:
                archive.ingest.store_file(to_part10(ds), SOURCE)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            done.set()

    sender = threading.Thread(target=send)
    sender.start()
    deletes = 0
    while not done.is_set() or deletes == 0:
        deletes += bool(_trash(archive).delete(study_uid, reason="race", actor="a"))
    sender.join()
    assert not errors, errors
    current = {r.sop_instance_uid for r in rows(archive, schema.instance)}
    trashed = [i.sop_instance_uid for i in trash_index.items(archive.index)]
    assert len(trashed) == len(set(trashed))
    assert current | set(trashed) == {str(ds.SOPInstanceUID) for ds in cts}
    assert not current & set(trashed)
    assert_derived_consistent(archive)
    assert verify(archive.index, archive.store).ok
