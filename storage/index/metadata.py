"""SQL of the DICOMweb metadata cache (``instance_metadata``, see storage/metadata.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from storage.index.repository import RETRIEVABLE_COLUMNS, Index, RetrievableInstance, utcnow
from storage.index.schema import instance, instance_metadata, patient, series, study

_CHUNK = 500  # UIDs per IN list (SQLite's default limit of bound parameters is far above)


@dataclass(frozen=True)
class CachedMetadata:
    sop_instance_uid: str
    received_sha256: str
    body: bytes


def metadata_of(index: Index, uids: Sequence[str]) -> dict[str, CachedMetadata]:
    """The cached bodies of these instances (current or stale: compare received_sha256)."""
    out: dict[str, CachedMetadata] = {}
    with index.read() as conn:
        for start in range(0, len(uids), _CHUNK):
            chunk = list(uids[start : start + _CHUNK])
            rows = conn.execute(
                select(
                    instance_metadata.c.sop_instance_uid,
                    instance_metadata.c.received_sha256,
                    instance_metadata.c.body,
                ).where(instance_metadata.c.sop_instance_uid.in_(chunk))
            )
            for uid, sha, body in rows:
                out[uid] = CachedMetadata(uid, sha, bytes(body))
    return out


def save_metadata(index: Index, items: Sequence[CachedMetadata]) -> None:
    """Keep these bodies (replacing what the same instances had)."""
    if not items:
        return
    now = utcnow()
    rows = [
        {"sop_instance_uid": m.sop_instance_uid, "received_sha256": m.received_sha256, "body": m.body, "created_at": now}
        for m in items
    ]
    with index.write() as conn:
        make: Any = postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert
        stmt = make(instance_metadata)
        # Two requests may make the same body at once: the last one wins (they are equal).
        stmt = stmt.on_conflict_do_update(
            index_elements=[instance_metadata.c.sop_instance_uid],
            set_={"received_sha256": stmt.excluded.received_sha256, "body": stmt.excluded.body, "created_at": now},
        )
        conn.execute(stmt, rows)


@dataclass(frozen=True)
class WadoInstance:
    """A current instance as WADO-RS serves it."""

    item: RetrievableInstance
    received_sha256: str
    number_of_frames: int | None
    rows: int | None

    @property
    def sop_instance_uid(self) -> str:
        return self.item.sop_instance_uid


def wado_instances(
    index: Index, study_uid: str, series_uid: str | None = None, sop_instance_uid: str | None = None
) -> list[WadoInstance]:
    """The current instances of a study (of a series, or one instance), in series and
    instance order."""
    stmt = (
        select(
            *RETRIEVABLE_COLUMNS,
            instance.c.received_sha256,
            instance.c.number_of_frames,
            instance.c.rows,
        )
        .select_from(instance.join(series).join(study).join(patient))
        .where(study.c.study_instance_uid == study_uid)
        .order_by(series.c.series_number, series.c.pk, instance.c.instance_number, instance.c.pk)
    )
    if series_uid is not None:
        stmt = stmt.where(series.c.series_instance_uid == series_uid)
    if sop_instance_uid is not None:
        stmt = stmt.where(instance.c.sop_instance_uid == sop_instance_uid)
    with index.read() as conn:
        return [WadoInstance(RetrievableInstance(*row[:8]), row[8], row[9], row[10]) for row in conn.execute(stmt)]


def instances_without_metadata(index: Index, after_pk: int, limit: int) -> list[tuple[int, WadoInstance]]:
    """Current instances (pk above ``after_pk``, in pk order) whose metadata is missing or was
    made from other content."""
    stmt = (
        select(
            instance.c.pk,
            *RETRIEVABLE_COLUMNS,
            instance.c.received_sha256,
            instance.c.number_of_frames,
            instance.c.rows,
        )
        .select_from(
            instance.join(series)
            .join(study)
            .outerjoin(instance_metadata, instance_metadata.c.sop_instance_uid == instance.c.sop_instance_uid)
        )
        .where(
            instance.c.pk > after_pk,
            (instance_metadata.c.sop_instance_uid.is_(None))
            | (instance_metadata.c.received_sha256 != instance.c.received_sha256),
        )
        .order_by(instance.c.pk)
        .limit(limit)
    )
    with index.read() as conn:
        return [
            (row[0], WadoInstance(RetrievableInstance(*row[1:9]), row[9], row[10], row[11])) for row in conn.execute(stmt)
        ]
