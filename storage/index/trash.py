"""The trash in the index (``trash_item``, schema version 4): the SQL of deleting through the
API, restoring and purging.

A delete takes every current instance under a study, series or instance out of the index in
one transaction: each gets a trash row (what it was, where its object is), its instance and
cached-metadata rows go, the series and study counts and ModalitiesInStudy/SOPClassesInStudy
are recomputed, and rows left empty (series, study, patient) are removed. The object stays
where it is. Rows are locked in the index's order (instance, patient, study, series; see
:mod:`storage.index.repository`), so a delete and a concurrent ingest into the same study wait
for each other instead of deadlocking.

A trash item *holds* its object while it is neither restored nor purged: verification, the
deletion outbox and the replication prune treat the object as referenced.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from storage.index.repository import Index, utcnow
from storage.index.schema import (
    compression_job,
    instance,
    instance_metadata,
    instance_version,
    object_gc,
    patient,
    series,
    study,
    trash_item,
)

LEVELS = ("STUDY", "SERIES", "IMAGE")
"""What a delete named (the Query/Retrieve levels of PS3.4 C.6.1.1)."""
STATES = ("trashed", "restored", "purged")
_CHUNK = 500
MAX_PAGE = 1000


def _aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time in the index is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


@dataclass(frozen=True)
class TrashItem:
    """One deleted instance: where its object is and what became of it."""

    pk: int
    trashed_at: datetime
    actor: str | None
    reason: str
    level: str
    patient_id: str | None
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str | None
    object_key: str
    object_sha256: str
    stored_size: int
    stored_transfer_syntax: str
    received_sha256: str
    restored_at: datetime | None
    purged_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> TrashItem:
        m = dict(row._mapping)
        for name in ("trashed_at", "restored_at", "purged_at"):
            m[name] = _aware(m[name])
        return cls(**{name: m[name] for name in cls.__dataclass_fields__})

    @property
    def state(self) -> str:
        return "purged" if self.purged_at else "restored" if self.restored_at else "trashed"

    def as_dict(self) -> dict[str, Any]:
        """The item for listings (no object key: the store's layout is nobody's business)."""
        return {
            "id": self.pk,
            "state": self.state,
            "trashed_at": _iso(self.trashed_at),
            "actor": self.actor,
            "reason": self.reason,
            "level": self.level,
            "patient_id": self.patient_id,
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "sop_instance_uid": self.sop_instance_uid,
            "sop_class_uid": self.sop_class_uid,
            "stored_size": self.stored_size,
            "stored_transfer_syntax": self.stored_transfer_syntax,
            "object_sha256": self.object_sha256,
            "restored_at": _iso(self.restored_at),
            "purged_at": _iso(self.purged_at),
        }


def _live() -> ColumnElement[bool]:
    return and_(trash_item.c.restored_at.is_(None), trash_item.c.purged_at.is_(None))


def _chunks(values: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def _schedule_delete(conn: Connection, key: str, reason: str) -> None:
    conn.execute(insert(object_gc).values(object_key=key, reason=reason, created_at=utcnow()))


# --- delete ------------------------------------------------------------------------------------
def move_to_trash(
    index: Index,
    *,
    study_uid: str,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    reason: str,
    actor: str | None,
) -> list[TrashItem]:
    """Move the current instances under a study (series, instance) to the trash, in one
    transaction; returns the new trash items (none: nothing matched, nothing changed)."""
    level = "IMAGE" if sop_instance_uid else "SERIES" if series_uid else "STUDY"
    where = [study.c.study_instance_uid == study_uid]
    if series_uid is not None:
        where.append(series.c.series_instance_uid == series_uid)
    if sop_instance_uid is not None:
        where.append(instance.c.sop_instance_uid == sop_instance_uid)
    now = utcnow()
    with index.write() as conn:
        rows = conn.execute(
            select(
                instance.c.pk,
                instance.c.series_pk,
                instance.c.sop_instance_uid,
                instance.c.sop_class_uid,
                instance.c.object_key,
                instance.c.object_sha256,
                instance.c.stored_size,
                instance.c.stored_transfer_syntax,
                instance.c.received_sha256,
                series.c.series_instance_uid,
                series.c.study_pk,
                study.c.patient_pk,
                patient.c.patient_id,
            )
            .select_from(instance.join(series).join(study).join(patient))
            .where(*where)
            .order_by(instance.c.pk)
            .with_for_update(of=instance)
        ).all()
        if not rows:
            return []
        study_pk, patient_pk = rows[0].study_pk, rows[0].patient_pk
        conn.execute(select(patient.c.pk).where(patient.c.pk == patient_pk).with_for_update())
        conn.execute(select(study.c.pk).where(study.c.pk == study_pk).with_for_update())
        values = [
            {
                "trashed_at": now,
                "actor": actor[:200] if actor else None,
                "reason": reason[:400],
                "level": level,
                "patient_id": r.patient_id,
                "study_instance_uid": study_uid,
                "series_instance_uid": r.series_instance_uid,
                "sop_instance_uid": r.sop_instance_uid,
                "sop_class_uid": r.sop_class_uid,
                "object_key": r.object_key,
                "object_sha256": r.object_sha256,
                "stored_size": r.stored_size,
                "stored_transfer_syntax": r.stored_transfer_syntax,
                "received_sha256": r.received_sha256,
            }
            for r in rows
        ]
        made = conn.execute(insert(trash_item).returning(trash_item, sort_by_parameter_order=True), values).all()
        items = [TrashItem.from_row(r) for r in made]
        pks = [int(r.pk) for r in rows]
        for chunk in _chunks(pks):
            # A compression worker's result noted write-ahead is nobody's object any more; a
            # worker still at work finds the instance gone and discards its result itself.
            results = select(compression_job.c.target_key).where(
                compression_job.c.instance_pk.in_(chunk), compression_job.c.target_key.is_not(None)
            )
            for key in conn.execute(results).scalars().all():
                _schedule_delete(conn, key, "abandoned compression result (instance deleted)")
            conn.execute(delete(compression_job).where(compression_job.c.instance_pk.in_(chunk)))
            conn.execute(delete(instance).where(instance.c.pk.in_(chunk)))
        for uids in _chunks([r.sop_instance_uid for r in rows]):
            conn.execute(delete(instance_metadata).where(instance_metadata.c.sop_instance_uid.in_(uids)))
        _refresh_after_removal(conn, study_pk, patient_pk, sorted({int(r.series_pk) for r in rows}), now)
        return items


def _refresh_after_removal(conn: Connection, study_pk: int, patient_pk: int, series_pks: list[int], now: datetime) -> None:
    """Recompute the derived values of the series and study instances left, and remove the
    series, study and patient rows left empty."""
    for series_pk in series_pks:
        Index._refresh_derived(conn, series_pk, study_pk, now)
    conn.execute(delete(series).where(series.c.pk.in_(series_pks), series.c.number_of_instances == 0))
    left = conn.execute(select(func.count()).select_from(series).where(series.c.study_pk == study_pk)).scalar_one()
    if left == 0:
        conn.execute(delete(study).where(study.c.pk == study_pk))
        studies = conn.execute(select(func.count()).select_from(study).where(study.c.patient_pk == patient_pk)).scalar_one()
        if studies == 0:
            conn.execute(delete(patient).where(patient.c.pk == patient_pk))


# --- reading -----------------------------------------------------------------------------------
def items(
    index: Index,
    *,
    pk: int | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    state: str | None = None,
    before: int | None = None,
    limit: int | None = None,
) -> list[TrashItem]:
    """Trash items, newest first, matching every given filter (``state``: one of
    :data:`STATES`; ``before``: ids below it, for keyset pages)."""
    stmt = select(trash_item).order_by(trash_item.c.pk.desc())
    if pk is not None:
        stmt = stmt.where(trash_item.c.pk == pk)
    if study_uid is not None:
        stmt = stmt.where(trash_item.c.study_instance_uid == study_uid)
    if series_uid is not None:
        stmt = stmt.where(trash_item.c.series_instance_uid == series_uid)
    if sop_instance_uid is not None:
        stmt = stmt.where(trash_item.c.sop_instance_uid == sop_instance_uid)
    if since is not None:
        stmt = stmt.where(trash_item.c.trashed_at >= since)
    if until is not None:
        stmt = stmt.where(trash_item.c.trashed_at < until)
    if state == "trashed":
        stmt = stmt.where(_live())
    elif state == "restored":
        stmt = stmt.where(trash_item.c.restored_at.is_not(None))
    elif state == "purged":
        stmt = stmt.where(trash_item.c.purged_at.is_not(None))
    elif state is not None:
        raise ValueError(f"unknown trash state {state!r} (one of {', '.join(STATES)})")
    if before is not None:
        stmt = stmt.where(trash_item.c.pk < before)
    if limit is not None:
        stmt = stmt.limit(limit)
    with index.read() as conn:
        return [TrashItem.from_row(r) for r in conn.execute(stmt)]


def held_objects(index: Index) -> Iterator[tuple[str, str, str]]:
    """(sop_instance_uid, object_key, sha256) of every object a trash item still holds."""
    with index.read() as conn:
        stmt = select(trash_item.c.sop_instance_uid, trash_item.c.object_key, trash_item.c.object_sha256).where(_live())
        for r in conn.execute(stmt.order_by(trash_item.c.pk)):
            yield str(r[0]), str(r[1]), str(r[2])


def holds(index: Index, key: str) -> bool:
    """Whether a trash item still holds the object ``key``."""
    with index.read() as conn:
        return conn.execute(select(trash_item.c.pk).where(trash_item.c.object_key == key, _live())).first() is not None


# --- restore and purge -------------------------------------------------------------------------
def mark_restored(index: Index, pk: int) -> bool:
    """Record that trash item ``pk`` is back in the archive (its instance was ingested again,
    as a new object, or is there with the same content) and schedule its own object for
    deletion; False if it is no longer in the trash."""
    now = utcnow()
    with index.write() as conn:
        row = conn.execute(select(trash_item).where(trash_item.c.pk == pk, _live()).with_for_update()).first()
        if row is None:
            return False
        conn.execute(update(trash_item).where(trash_item.c.pk == pk).values(restored_at=now))
        if not _referenced(conn, row.object_key):
            _schedule_delete(conn, row.object_key, "restored from the trash (ingested again)")
        return True


@dataclass(frozen=True)
class Purged:
    item: TrashItem
    prior_versions: int


def purge(index: Index, chosen: Sequence[TrashItem]) -> list[Purged]:
    """Remove ``chosen`` trash items for good, in one transaction: their objects, and those of
    the prior versions their instances had when deleted (``instance_version`` rows), go to the
    deletion outbox, the item is marked purged. Items restored or purged meanwhile are skipped."""
    done: list[Purged] = []
    now = utcnow()
    with index.write() as conn:
        for item in chosen:
            row = conn.execute(select(trash_item).where(trash_item.c.pk == item.pk, _live()).with_for_update()).first()
            if row is None:
                continue
            if not _referenced(conn, row.object_key):
                _schedule_delete(conn, row.object_key, "purged from the trash")
            prior = conn.execute(
                select(instance_version.c.pk, instance_version.c.object_key).where(
                    instance_version.c.sop_instance_uid == row.sop_instance_uid,
                    instance_version.c.superseded_at <= row.trashed_at,
                )
            ).all()
            for version_pk, key in prior:
                conn.execute(delete(instance_version).where(instance_version.c.pk == version_pk))
                _schedule_delete(conn, key, "prior version of an instance purged from the trash")
            conn.execute(update(trash_item).where(trash_item.c.pk == item.pk).values(purged_at=now))
            done.append(Purged(TrashItem.from_row(row), len(prior)))
    return done


def _referenced(conn: Connection, key: str) -> bool:
    """Whether a current instance or a prior version points at ``key`` (never, for a trash
    item's object; checked all the same before it is scheduled for deletion)."""
    return (
        conn.execute(select(instance.c.pk).where(instance.c.object_key == key)).first() is not None
        or conn.execute(select(instance_version.c.pk).where(instance_version.c.object_key == key)).first() is not None
    )
