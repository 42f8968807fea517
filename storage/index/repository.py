"""The index: every SQL statement of the archive lives in this package.

Writes happen in short transactions opened with :meth:`Index.write`; SQLAlchemy and driver
errors are translated here into the domain tree (:mod:`storage.errors`).

Concurrent writers. On SQLite one write transaction runs at a time (``BEGIN IMMEDIATE`` and
the write lock of :mod:`storage.index.engine`). On PostgreSQL (READ COMMITTED) they run side
by side and are kept apart by the database:

* unique constraints on every entity key: patient, study and series rows are inserted with
  ``ON CONFLICT DO NOTHING`` (a second ingest of a new study waits for the first to commit,
  then reads its rows), an instance inserted twice fails and the ingest looks again;
* row locks, always taken in the same order (instance, patient, study, series): the study row
  is locked (``FOR UPDATE``) before its derived counts are changed, an instance row before it
  is replaced or its object swapped by the compression worker;
* compression jobs are claimed with ``FOR UPDATE SKIP LOCKED``, so two workers never take the
  same job;
* a deadlock or serialization failure the database breaks anyway is :class:`IndexConflict`,
  which the ingest retries like a lost insert race.

Values are fitted to the columns on both backends alike (text cut to the column's length, NUL
characters dropped, integers outside 32 bits left out): PostgreSQL refuses what SQLite would
keep, and a C-STORE must not fail on an over-long description.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Integer, String, and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import DBAPIError, IntegrityError

from storage.attributes import InstanceAttributes
from storage.errors import IndexCommitUncertain, IndexConflict, IndexUnavailable, InstanceAlreadyExists
from storage.index import migrate
from storage.index.engine import WRITE_OPTION, write_lock_for
from storage.index.migrate import SchemaState
from storage.index.prepared import prepared
from storage.index.schema import (
    application_entity,
    audit_event,
    compression_job,
    instance,
    instance_version,
    object_gc,
    patient,
    series,
    study,
    trash_item,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _reason(exc: DBAPIError) -> str:
    return str(exc.orig).strip()[:200]


def _unavailable(exc: DBAPIError) -> IndexUnavailable:
    if getattr(exc.orig, "sqlstate", None) in _CONFLICT_STATES:
        return IndexConflict(f"index conflict: {_reason(exc)}")
    return IndexUnavailable(f"index unavailable: {_reason(exc)}")


# Statements of the ingest hot path, built once: executing a prebuilt construct with a
# parameter dict skips SQLAlchemy's per-call construction and hits its compiled cache.
_FIND_INSTANCE = select(instance).where(instance.c.sop_instance_uid == bindparam("uid"))
_FIND_INSTANCE_LOCKED = _FIND_INSTANCE.with_for_update()
_INSTANCE_EXISTS = select(instance.c.pk).where(instance.c.sop_instance_uid == bindparam("uid"))
_INSERT = {t.name: insert(t) for t in (compression_job, audit_event)}
# The columns of a RetrievableInstance, in its field order (labels = field names).
RETRIEVABLE_COLUMNS = (
    study.c.study_instance_uid,
    series.c.series_instance_uid,
    instance.c.sop_instance_uid,
    instance.c.sop_class_uid,
    instance.c.object_key,
    instance.c.object_sha256,
    instance.c.stored_transfer_syntax,
    instance.c.stored_size,
)
_LOCATE_INSTANCE = (
    select(*RETRIEVABLE_COLUMNS)
    .select_from(instance.join(series).join(study))
    .where(
        instance.c.sop_instance_uid == bindparam("uid"),
        series.c.series_instance_uid == bindparam("series"),
        study.c.study_instance_uid == bindparam("study"),
    )
)
_INSERT_RETURNING_PK = insert(instance).returning(instance.c.pk)
_BUMP_SERIES = (
    update(series)
    .where(series.c.pk == bindparam("series_pk"))
    .values(number_of_instances=series.c.number_of_instances + 1)
)
_BUMP_STUDY = (
    update(study)
    .where(study.c.pk == bindparam("study_pk"))
    .values(
        number_of_instances=study.c.number_of_instances + 1,
        number_of_series=study.c.number_of_series + bindparam("new_series"),
        received_bytes=study.c.received_bytes + bindparam("received_size"),
        stored_bytes=study.c.stored_bytes + bindparam("stored_size"),
        modalities_in_study=bindparam("modalities"),
        sop_classes_in_study=bindparam("sop_classes"),
        updated_at=bindparam("now"),
    )
)
_SELECT_BY_KEY: dict[tuple[str, bool], Any] = {}
_INSERT_IF_NEW: dict[tuple[str, str], Any] = {}

# SQLSTATEs of a transaction the database aborted to resolve a conflict with another one.
_CONFLICT_STATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
_INT32 = range(-(2**31), 2**31)


def _insert_if_new(dialect: str, table: Any, key: str) -> Any:
    """INSERT that does nothing when a row with the same ``key`` exists (or is being inserted
    by a concurrent transaction, which it waits for)."""
    stmt = _INSERT_IF_NEW.get((dialect, table.name))
    if stmt is None:
        if dialect == "postgresql":
            stmt = postgresql_insert(table).on_conflict_do_nothing(index_elements=[table.c[key]])
        elif dialect == "sqlite":
            stmt = sqlite_insert(table).on_conflict_do_nothing(index_elements=[table.c[key]])
        else:
            stmt = insert(table)
        _INSERT_IF_NEW[(dialect, table.name)] = stmt
    return stmt


def _column_limits(table: Any) -> tuple[dict[str, int], frozenset[str]]:
    lengths = {c.key: c.type.length for c in table.columns if isinstance(c.type, String) and c.type.length}
    integers = frozenset(c.key for c in table.columns if type(c.type) is Integer)
    return lengths, integers


_LIMITS = {t.name: _column_limits(t) for t in (patient, study, series, instance, application_entity)}


def _fit(table: Any, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` as the columns of ``table`` hold them: text cut to the column's length and
    without NUL characters, integers outside 32 bits dropped (None)."""
    lengths, integers = _LIMITS[table.name]
    fitted = dict(values)
    for name, value in values.items():
        if type(value) is str:
            if "\x00" in value:
                value = fitted[name] = value.replace("\x00", "")
            limit = lengths.get(name)
            if limit is not None and len(value) > limit:
                fitted[name] = value[:limit]
        elif type(value) is int and name in integers and value not in _INT32:
            fitted[name] = None
    return fitted


def _select_by_key(table: Any, key: str, lock: bool) -> Any:
    stmt = _SELECT_BY_KEY.get((table.name, lock))
    if stmt is None:
        stmt = select(table).where(table.c[key] == bindparam("key"))
        if lock:
            stmt = stmt.with_for_update()
        _SELECT_BY_KEY[(table.name, lock)] = stmt
    return stmt


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed worker nobody has reaped yet is a zombie: dead for our purpose
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _this_job(job: CompressionJob) -> Any:
    """The row of ``job`` and no other. The object key is part of the match: SQLite hands out a
    deleted highest rowid again, so when a new version replaces the instance (deleting its job
    and queueing a new one), the new job can come back under the old job's pk."""
    return and_(compression_job.c.pk == job.pk, compression_job.c.object_key == job.object_key)


def _add_to_set(joined: str | None, value: str | None) -> str:
    """Add ``value`` to a backslash-separated, sorted set of values (ModalitiesInStudy)."""
    items = {v for v in (joined or "").split("\\") if v}
    if value:
        items.add(value)
    return "\\".join(sorted(items))


@dataclass(frozen=True)
class StoredObject:
    """Facts about an object written to the store, as the index records them."""

    key: str
    sha256: str
    size: int
    transfer_syntax_uid: str


@dataclass(frozen=True)
class Source:
    """Who sent an instance: a DICOM peer (AE title and host) or an import."""

    aet: str | None
    host: str | None


@dataclass(frozen=True)
class NewInstance:
    """What an ingest commits: the attributes, the object as received (its sha256 is the
    content hash duplicates are recognised by) and as stored, and where it came from."""

    attrs: InstanceAttributes
    received: StoredObject
    stored: StoredObject
    source: Source
    pending_compression: bool
    flags: str = ""
    note: str = ""


@dataclass(frozen=True)
class Hierarchy:
    """The series and study rows an instance goes under, as they were before it."""

    series: Any  # PlainRow
    study: Any


@dataclass(frozen=True)
class CompressionJob:
    pk: int
    instance_pk: int
    object_key: str
    target_transfer_syntax: str
    attempts: int
    stale_target_key: str | None


SERVICES = ("echo", "store", "find", "move", "get")
"""The DIMSE services the AE registry grants per AE (``may_<service>`` columns)."""


@dataclass(frozen=True)
class ApplicationEntity:
    ae_title: str
    host: str
    port: int
    description: str = ""
    may_echo: bool = True
    may_store: bool = True
    may_find: bool = True
    may_move: bool = True
    may_get: bool = True
    ascii_only: bool = False

    def may(self, service: str) -> bool:
        return bool(getattr(self, f"may_{service}"))

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(s for s in SERVICES if self.may(s))

    @classmethod
    def from_row(cls, row: Any) -> ApplicationEntity:
        m = row._mapping
        return cls(**{name: m[name] for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class RetrievableInstance:
    """One instance a C-MOVE / C-GET / WADO request resolved to."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    object_key: str
    object_sha256: str
    stored_transfer_syntax: str
    stored_size: int


class Index:
    """The metadata index over one SQLAlchemy engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = engine.execution_options(**{WRITE_OPTION: True})
        self._write_lock = write_lock_for(engine)

    # --- transactions ---------------------------------------------------------------------
    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction; commits on success, rolls back on any exception.

        Raises :class:`InstanceAlreadyExists` for a unique key taken meanwhile,
        :class:`IndexConflict` when the database aborted the transaction to break a conflict
        with another one, :class:`IndexCommitUncertain` when the commit itself failed (it may
        have happened) and :class:`IndexUnavailable` for any other database failure."""
        try:
            with self._durable(), self._write_lock, self._writer.connect() as conn:
                transaction = conn.begin()
                try:
                    yield conn
                except BaseException:
                    if transaction.is_active:
                        try:
                            transaction.rollback()
                        except DBAPIError:
                            pass  # a lost connection: the server rolls back by itself
                    raise
                try:
                    transaction.commit()
                except DBAPIError as exc:
                    # The connection's state is unknown (a SQLite COMMIT that failed may leave
                    # the transaction open): it is closed, never handed out again.
                    try:
                        conn.invalidate(exc)
                    except Exception:  # noqa: BLE001 - closing a broken connection may fail too
                        pass
                    raise IndexCommitUncertain(f"index unavailable while committing: {_reason(exc)}") from exc
        except IntegrityError as exc:
            raise InstanceAlreadyExists(_reason(exc)) from exc
        except DBAPIError as exc:
            raise _unavailable(exc) from exc

    @contextmanager
    def _durable(self) -> Iterator[None]:
        """After a write transaction committed and released the write lock: make it durable
        (SQLite's WAL is synced here, not inside COMMIT: :mod:`storage.index.engine`)."""
        yield
        try:
            self._write_lock.make_durable()
        except OSError as exc:
            raise IndexCommitUncertain(f"index unavailable while making the commit durable: {exc.strerror or exc}") from exc

    @contextmanager
    def read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except DBAPIError as exc:
            raise _unavailable(exc) from exc

    def create(self) -> tuple[SchemaState, SchemaState]:
        """Make the index ready for this filmless: create the schema in an empty database,
        bring an older index up to date (alembic migrations; indexes made before them are
        adopted), refuse one newer than this filmless (:class:`IndexUnavailable`).
        Returns the schema's state before and after."""
        try:
            with self._durable(), self._write_lock, self._writer.begin() as conn:
                return migrate.ensure(conn)
        except DBAPIError as exc:
            raise IndexUnavailable(f"cannot create the index: {_reason(exc)}") from exc

    def schema_state(self) -> SchemaState:
        """Where the index schema stands (changes nothing)."""
        with self.read() as conn:
            return migrate.inspect(conn)

    def dispose(self) -> None:
        self.engine.dispose()
        self._write_lock.close()

    # --- instances --------------------------------------------------------------------------
    @staticmethod
    def find_instance(conn: Connection, sop_instance_uid: str, *, lock: bool = True) -> Row[Any] | None:
        """The instance's row; in a write transaction it is locked (``FOR UPDATE`` on
        PostgreSQL) until the commit, so a compression swap cannot change it meanwhile."""
        # Mostly there is none: ask cheaply first, then fetch the row with its types.
        if prepared(conn, "instance exists", _INSTANCE_EXISTS).first(conn, {"uid": sop_instance_uid}) is None:
            return None
        return conn.execute(_FIND_INSTANCE_LOCKED if lock else _FIND_INSTANCE, {"uid": sop_instance_uid}).first()

    def get_instance(self, sop_instance_uid: str) -> Row[Any] | None:
        with self.read() as conn:
            return self.find_instance(conn, sop_instance_uid, lock=False)

    def upsert_hierarchy(self, conn: Connection, attrs: InstanceAttributes) -> Hierarchy:
        """Create or complete the patient, study and series rows of a new instance (the study
        row is locked); the first half of :meth:`insert_instance`, for callers that have work
        to overlap with it."""
        return Hierarchy(*self._upsert_hierarchy(conn, attrs, utcnow()))

    def insert_instance(self, conn: Connection, new: NewInstance, hierarchy: Hierarchy | None = None) -> int:
        now = utcnow()
        attrs, received, stored = new.attrs, new.received, new.stored
        if hierarchy is None:
            hierarchy = self.upsert_hierarchy(conn, attrs)
        series_row, study_row = hierarchy.series, hierarchy.study
        values = self._instance_values(new, now)
        values.update(series_pk=series_row.pk, version=1)
        pk = int(prepared(conn, "insert instance", _INSERT_RETURNING_PK, values).scalar(conn, values))
        # Derived values, incrementally: the study row is locked by _upsert_hierarchy.
        prepared(conn, "bump series", _BUMP_SERIES).run(conn, {"series_pk": series_row.pk})
        prepared(conn, "bump study", _BUMP_STUDY).run(
            conn,
            {
                "study_pk": study_row.pk,
                "new_series": 1 if series_row.number_of_instances == 0 else 0,
                "received_size": received.size,
                "stored_size": stored.size,
                # Modality is a series attribute: the series row's (its first instance's) counts.
                "modalities": _add_to_set(
                    study_row.modalities_in_study, series_row.modality or attrs.series.get("modality")
                ),
                "sop_classes": _add_to_set(study_row.sop_classes_in_study, attrs.sop_class_uid),
                "now": now,
            },
        )
        return pk

    @staticmethod
    def _instance_values(new: NewInstance, now: datetime) -> dict[str, Any]:
        values = _fit(instance, new.attrs.instance)
        values.update(
            received_transfer_syntax=new.received.transfer_syntax_uid,
            stored_transfer_syntax=new.stored.transfer_syntax_uid,
            received_size=new.received.size,
            received_sha256=new.received.sha256,
            stored_size=new.stored.size,
            object_key=new.stored.key,
            object_sha256=new.stored.sha256,
            pending_compression=new.pending_compression,
            compression_note=new.note or None,
            flags=new.flags,
            warnings="\n".join(new.attrs.warnings) or None,
            source_aet=new.source.aet,
            source_host=new.source.host,
            received_at=now,
            stored_at=now,
        )
        return values

    def replace_instance(self, conn: Connection, existing: Row[Any], new: NewInstance) -> int:
        """Make a new version current; the previous object is kept in ``instance_version``."""
        now = utcnow()
        # An instance deleted to the trash leaves its prior versions behind until purged; sent
        # again, it starts at version 1, so its own prior versions number on after those.
        highest = conn.execute(
            select(func.max(instance_version.c.version)).where(instance_version.c.sop_instance_uid == existing.sop_instance_uid)
        ).scalar()
        kept_as = existing.version if highest is None or highest < existing.version else int(highest) + 1
        conn.execute(
            insert(instance_version).values(
                sop_instance_uid=existing.sop_instance_uid,
                version=kept_as,
                object_key=existing.object_key,
                object_sha256=existing.object_sha256,
                stored_size=existing.stored_size,
                stored_transfer_syntax=existing.stored_transfer_syntax,
                received_sha256=existing.received_sha256,
                received_at=existing.received_at,
                superseded_at=now,
                source_aet=existing.source_aet,
                source_host=existing.source_host,
            )
        )
        self._drop_results(conn, compression_job.c.instance_pk == existing.pk)
        conn.execute(delete(compression_job).where(compression_job.c.instance_pk == existing.pk))
        old_series_pk = existing.series_pk
        old_study_pk = conn.execute(select(series.c.study_pk).where(series.c.pk == old_series_pk)).scalar_one()
        series_row, study_row = self._upsert_hierarchy(conn, new.attrs, now)
        values = self._instance_values(new, now)
        values.update(series_pk=series_row.pk, version=kept_as + 1)
        conn.execute(update(instance).where(instance.c.pk == existing.pk).values(**values))
        self._refresh_derived(conn, series_row.pk, study_row.pk, now)
        if old_series_pk != series_row.pk:
            self._refresh_derived(conn, old_series_pk, old_study_pk, now)
        return int(existing.pk)

    def _upsert_hierarchy(self, conn: Connection, attrs: InstanceAttributes, now: datetime) -> tuple[Any, Any]:
        """The series and study rows of ``attrs`` (created if new); the study row is locked."""
        patient_row = self._upsert(conn, patient, "patient_key", attrs.patient, {}, now)
        study_row = self._upsert(
            conn, study, "study_instance_uid", attrs.study, {"patient_pk": patient_row.pk}, now, lock=True
        )
        series_row = self._upsert(
            conn, series, "series_instance_uid", attrs.series, {"study_pk": study_row.pk}, now
        )
        return series_row, study_row

    @staticmethod
    def _upsert(
        conn: Connection,
        table: Any,
        key: str,
        values: Mapping[str, Any],
        parents: Mapping[str, Any],
        now: datetime,
        *,
        lock: bool = False,
    ) -> Any:
        """Insert the row, or fill in values the existing row lacks (first arrival wins for
        non-empty values; later instances complete what earlier ones left empty).
        Returns the row as it was before this call's changes (counts included)."""
        query = prepared(conn, f"{table.name} by key{' locked' if lock else ''}", _select_by_key(table, key, lock))
        values = _fit(table, values)
        params = {"key": values[key]}
        row = query.first(conn, params)
        if row is None:
            new = {**values, **parents, "created_at": now, "updated_at": now}
            stmt = _insert_if_new(conn.dialect.name, table, key)
            prepared(conn, f"insert {table.name} if new", stmt, new).run(conn, new)
            row = query.first(conn, params)
            assert row is not None
            return row
        changes = {
            name: value
            for name, value in values.items()
            if value not in (None, "") and getattr(row, name) in (None, "")
        }
        for name, value in parents.items():
            if getattr(row, name) != value:
                changes[name] = value
        if changes:
            conn.execute(update(table).where(table.c.pk == row.pk).values(**changes, updated_at=now))
        return row

    @staticmethod
    def _refresh_derived(conn: Connection, series_pk: int, study_pk: int, now: datetime) -> None:
        """Recompute the counts and the ModalitiesInStudy / SOPClassesInStudy of one study.

        The first UPDATE takes the study's row lock, so a concurrent ingest into the same study
        waits and then recomputes over both instances (PostgreSQL READ COMMITTED)."""
        conn.execute(update(study).where(study.c.pk == study_pk).values(updated_at=now))
        series_count = (
            select(func.count()).select_from(instance).where(instance.c.series_pk == series_pk)
        ).scalar_subquery()
        conn.execute(
            update(series)
            .where(series.c.pk == series_pk)
            .values(number_of_instances=series_count, updated_at=now)
        )
        in_study = select(series.c.pk).where(
            and_(series.c.study_pk == study_pk, series.c.number_of_instances > 0)
        )
        totals = conn.execute(
            select(
                func.count(),
                func.coalesce(func.sum(instance.c.received_size), 0),
                func.coalesce(func.sum(instance.c.stored_size), 0),
            ).where(instance.c.series_pk.in_(in_study))
        ).one()
        modalities = sorted(
            m
            for m in conn.execute(
                select(series.c.modality)
                .distinct()
                .where(and_(series.c.study_pk == study_pk, series.c.number_of_instances > 0))
            ).scalars()
            if m
        )
        sop_classes = sorted(
            conn.execute(
                select(instance.c.sop_class_uid).distinct().where(instance.c.series_pk.in_(in_study))
            ).scalars()
        )
        n_series = conn.execute(select(func.count()).select_from(in_study.subquery())).scalar_one()
        conn.execute(
            update(study)
            .where(study.c.pk == study_pk)
            .values(
                number_of_series=n_series,
                number_of_instances=totals[0],
                received_bytes=totals[1],
                stored_bytes=totals[2],
                modalities_in_study="\\".join(modalities),
                sop_classes_in_study="\\".join(sop_classes),
            )
        )

    def study_of_instance(self, conn: Connection, instance_pk: int) -> tuple[int, int]:
        row = conn.execute(
            select(series.c.pk, series.c.study_pk)
            .select_from(instance.join(series, instance.c.series_pk == series.c.pk))
            .where(instance.c.pk == instance_pk)
        ).one()
        return int(row[0]), int(row[1])

    # --- the compression queue ------------------------------------------------------------
    @staticmethod
    def enqueue_compression(conn: Connection, instance_pk: int, object_key: str, target_ts: str) -> None:
        job = {
            "instance_pk": instance_pk,
            "object_key": object_key,
            "target_transfer_syntax": target_ts,
            "attempts": 0,
            "created_at": utcnow(),
        }
        prepared(conn, "insert compression_job", _INSERT["compression_job"], job).run(conn, job)

    def claim_jobs(self, worker: str, limit: int, lease: timedelta) -> list[CompressionJob]:
        """Claim up to ``limit`` jobs whose lease is free or expired (a crashed worker's)."""
        now = utcnow()
        with self.write() as conn:
            rows = conn.execute(
                select(compression_job)
                .where(or_(compression_job.c.claimed_until.is_(None), compression_job.c.claimed_until < now))
                .order_by(compression_job.c.pk)
                .limit(limit)
                .with_for_update(skip_locked=True)  # PostgreSQL: another worker's claim is skipped
            ).all()
            if not rows:
                return []
            conn.execute(
                update(compression_job)
                .where(compression_job.c.pk.in_([r.pk for r in rows]))
                .values(
                    claimed_by=worker,
                    claimed_until=now + lease,
                    attempts=compression_job.c.attempts + 1,
                    target_key=None,
                )
            )
            jobs = [
                CompressionJob(r.pk, r.instance_pk, r.object_key, r.target_transfer_syntax, r.attempts + 1, r.target_key)
                for r in rows
            ]
            for job in jobs:
                if job.stale_target_key:
                    # A worker died between writing its result and committing the swap.
                    self._schedule_delete(conn, job.stale_target_key, "abandoned compression result")
            return jobs

    def release_dead_claims(self, host: str) -> int:
        """Release jobs leased by workers of ``host`` whose process is gone (ids ``host:pid``,
        as :class:`storage.compression.Compressor` names itself), instead of waiting for their
        lease to expire. Returns how many jobs were released."""
        released = 0
        with self.write() as conn:
            owners = conn.execute(
                select(compression_job.c.claimed_by).distinct().where(compression_job.c.claimed_by.is_not(None))
            ).scalars()
            for owner in list(owners):
                owner_host, _, pid = str(owner).rpartition(":")
                if owner_host != host or not pid.isdigit() or _process_alive(int(pid)):
                    continue
                released += self._release(conn, str(owner))
        return released

    def release_claims(self, owner: str) -> int:
        """Release every job ``owner`` still holds (a worker stopping cleanly)."""
        with self.write() as conn:
            return self._release(conn, owner)

    @staticmethod
    def _release(conn: Connection, owner: str) -> int:
        result = conn.execute(
            update(compression_job)
            .where(compression_job.c.claimed_by == owner)
            .values(claimed_by=None, claimed_until=None)
        )
        return int(result.rowcount)

    def pending_jobs(self) -> int:
        with self.read() as conn:
            return int(conn.execute(select(func.count()).select_from(compression_job)).scalar_one())

    def record_job_target(self, job: CompressionJob, target_key: str) -> None:
        """Write-ahead note of the key a result is about to be written to."""
        with self.write() as conn:
            conn.execute(update(compression_job).where(_this_job(job)).values(target_key=target_key))

    def finish_job_swapped(self, job: CompressionJob, stored: StoredObject) -> bool:
        """Make the compressed object current and schedule the original for deletion.

        Returns False (and schedules the new object for deletion) when the instance moved on to
        another object meanwhile."""
        now = utcnow()
        with self.write() as conn:
            row = conn.execute(select(instance).where(instance.c.pk == job.instance_pk).with_for_update()).first()
            conn.execute(delete(compression_job).where(_this_job(job)))
            if row is None or row.object_key != job.object_key:
                self._schedule_delete(conn, stored.key, "stale compression result")
                return False
            conn.execute(
                update(instance)
                .where(instance.c.pk == job.instance_pk)
                .values(
                    object_key=stored.key,
                    object_sha256=stored.sha256,
                    stored_size=stored.size,
                    stored_transfer_syntax=stored.transfer_syntax_uid,
                    pending_compression=False,
                    compression_note=None,
                    stored_at=now,
                )
            )
            self._schedule_delete(conn, job.object_key, "replaced by compressed object")
            _series_pk, study_pk = self.study_of_instance(conn, job.instance_pk)
            conn.execute(
                update(study)
                .where(study.c.pk == study_pk)
                .values(stored_bytes=study.c.stored_bytes + (stored.size - row.stored_size))
            )
            return True

    def finish_job_kept(self, job: CompressionJob, note: str, flag: str = "") -> None:
        """The original stays the stored object (nothing to gain, or the check failed)."""
        with self.write() as conn:
            row = conn.execute(select(instance).where(instance.c.pk == job.instance_pk).with_for_update()).first()
            self._drop_results(conn, _this_job(job))  # a result written by a failed attempt
            conn.execute(delete(compression_job).where(_this_job(job)))
            if row is None or row.object_key != job.object_key:
                return
            flags = row.flags or ""
            if flag and flag not in flags.split(","):
                flags = ",".join(f for f in (flags, flag) if f)
            conn.execute(
                update(instance)
                .where(instance.c.pk == job.instance_pk)
                .values(pending_compression=False, compression_note=note[:400] or None, flags=flags)
            )

    def release_job(self, job: CompressionJob, error: str, retry_after: timedelta) -> None:
        with self.write() as conn:
            conn.execute(
                update(compression_job)
                .where(_this_job(job))
                .values(claimed_until=utcnow() + retry_after, last_error=error[:400], claimed_by=None)
            )

    # --- deferred deletion ------------------------------------------------------------------
    @staticmethod
    def _schedule_delete(conn: Connection, key: str, reason: str) -> None:
        conn.execute(insert(object_gc).values(object_key=key, reason=reason, created_at=utcnow()))

    def _drop_results(self, conn: Connection, jobs: Any) -> None:
        """Schedule for deletion the results that ``jobs`` (about to be deleted) noted write-ahead:
        a dead worker's result would otherwise be an orphan nobody cleans up."""
        targets = select(compression_job.c.target_key).where(jobs, compression_job.c.target_key.is_not(None))
        for key in conn.execute(targets).scalars().all():
            self._schedule_delete(conn, key, "abandoned compression result")

    def schedule_delete(self, key: str, reason: str) -> None:
        with self.write() as conn:
            self._schedule_delete(conn, key, reason)

    def deletions(self, limit: int = 100) -> list[tuple[int, str]]:
        with self.read() as conn:
            rows = conn.execute(select(object_gc.c.pk, object_gc.c.object_key).order_by(object_gc.c.pk).limit(limit))
            return [(int(r[0]), str(r[1])) for r in rows]

    def is_referenced(self, key: str) -> bool:
        """Whether a current instance, a prior version or a trash item not yet restored or
        purged (storage/index/trash.py) points at the object ``key``."""
        with self.read() as conn:
            return (
                conn.execute(select(instance.c.pk).where(instance.c.object_key == key)).first() is not None
                or conn.execute(select(instance_version.c.pk).where(instance_version.c.object_key == key)).first()
                is not None
                or conn.execute(
                    select(trash_item.c.pk).where(
                        trash_item.c.object_key == key, trash_item.c.restored_at.is_(None), trash_item.c.purged_at.is_(None)
                    )
                ).first()
                is not None
            )

    def deletion_done(self, pk: int) -> None:
        with self.write() as conn:
            conn.execute(delete(object_gc).where(object_gc.c.pk == pk))

    # --- verification and statistics --------------------------------------------------------
    def referenced_objects(self) -> Iterator[tuple[str, str, str, str]]:
        """(kind, sop_instance_uid, object_key, sha256) of every object the index points at."""
        with self.read() as conn:
            for r in conn.execute(select(instance.c.sop_instance_uid, instance.c.object_key, instance.c.object_sha256)):
                yield "current", r[0], r[1], r[2]
            for r in conn.execute(
                select(instance_version.c.sop_instance_uid, instance_version.c.object_key, instance_version.c.object_sha256)
            ):
                yield "prior version", r[0], r[1], r[2]

    def transient_keys(self) -> set[str]:
        """Keys that may exist without an instance row: pending deletions and in-flight results."""
        with self.read() as conn:
            keys = set(conn.execute(select(object_gc.c.object_key)).scalars())
            keys |= {k for k in conn.execute(select(compression_job.c.target_key)).scalars() if k}
            return keys

    def stats(self) -> dict[str, Any]:
        with self.read() as conn:
            def count(table: Any) -> int:
                return int(conn.execute(select(func.count()).select_from(table)).scalar_one())

            received, stored = conn.execute(
                select(
                    func.coalesce(func.sum(instance.c.received_size), 0),
                    func.coalesce(func.sum(instance.c.stored_size), 0),
                )
            ).one()
            prior = conn.execute(select(func.coalesce(func.sum(instance_version.c.stored_size), 0))).scalar_one()
            pending = conn.execute(
                select(func.count()).select_from(instance).where(instance.c.pending_compression.is_(True))
            ).scalar_one()
            per_modality: dict[str, dict[str, int]] = {}
            rows = conn.execute(
                select(
                    series.c.modality,
                    func.count(),
                    func.coalesce(func.sum(instance.c.received_size), 0),
                    func.coalesce(func.sum(instance.c.stored_size), 0),
                )
                .select_from(instance.join(series, instance.c.series_pk == series.c.pk))
                .group_by(series.c.modality)
            )
            for modality, n, rec, sto in rows:
                per_modality[modality or "?"] = {
                    "instances": int(n),
                    "received_bytes": int(rec),
                    "stored_bytes": int(sto),
                }
            return {
                "patients": count(patient),
                "studies": count(study),
                "series": count(series),
                "instances": count(instance),
                "prior_versions": count(instance_version),
                "received_bytes": int(received),
                "stored_bytes": int(stored) + int(prior),
                "pending_compression": int(pending),
                "by_modality": per_modality,
            }

    # --- the AE registry -------------------------------------------------------------------
    def add_ae(self, ae: ApplicationEntity) -> None:
        with self.write() as conn:
            conn.execute(delete(application_entity).where(application_entity.c.ae_title == ae.ae_title))
            conn.execute(insert(application_entity).values(**_fit(application_entity, ae.__dict__), created_at=utcnow()))

    def remove_ae(self, ae_title: str) -> bool:
        with self.write() as conn:
            result = conn.execute(delete(application_entity).where(application_entity.c.ae_title == ae_title))
            return bool(result.rowcount)

    def list_aes(self) -> list[ApplicationEntity]:
        with self.read() as conn:
            rows = conn.execute(select(application_entity).order_by(application_entity.c.ae_title))
            return [ApplicationEntity.from_row(r) for r in rows]

    def get_ae(self, ae_title: str) -> ApplicationEntity | None:
        with self.read() as conn:
            r = conn.execute(select(application_entity).where(application_entity.c.ae_title == ae_title)).first()
            return ApplicationEntity.from_row(r) if r else None

    # --- retrieve ---------------------------------------------------------------------------
    def locate_instance(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> RetrievableInstance | None:
        """One current instance named by its three UIDs (the hot path of rendered images and
        frames: a prepared statement, no SQLAlchemy execution context)."""
        params = {"study": study_uid, "series": series_uid, "uid": sop_instance_uid}
        with self.read() as conn:
            row = prepared(conn, "locate instance", _LOCATE_INSTANCE).first(conn, params)
        return RetrievableInstance(**row._asdict()) if row is not None else None

    def retrievable(
        self,
        *,
        patient_id: str | None = None,
        study_uids: Sequence[str] = (),
        series_uids: Sequence[str] = (),
        sop_instance_uids: Sequence[str] = (),
        limit: int | None = None,
    ) -> list[RetrievableInstance]:
        """The current instances under the given entities (each non-empty argument narrows
        the result), ordered by study, series, instance number."""
        if not (patient_id or study_uids or series_uids or sop_instance_uids):
            raise ValueError("a retrieve needs at least one key")
        stmt = (
            select(*RETRIEVABLE_COLUMNS)
            .select_from(instance.join(series).join(study).join(patient))
            .order_by(study.c.pk, series.c.series_number, series.c.pk, instance.c.instance_number, instance.c.pk)
        )
        if patient_id is not None:
            stmt = stmt.where(patient.c.patient_id == patient_id)
        if study_uids:
            stmt = stmt.where(study.c.study_instance_uid.in_(list(study_uids)))
        if series_uids:
            stmt = stmt.where(series.c.series_instance_uid.in_(list(series_uids)))
        if sop_instance_uids:
            stmt = stmt.where(instance.c.sop_instance_uid.in_(list(sop_instance_uids)))
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.read() as conn:
            return [RetrievableInstance(*row) for row in conn.execute(stmt)]

    # --- the audit log ---------------------------------------------------------------------
    @staticmethod
    def audit(
        conn: Connection,
        action: str,
        outcome: str,
        *,
        actor: str | None = None,
        actor_host: str | None = None,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        event = {
            "at": utcnow(),
            "action": action,
            "outcome": outcome,
            "actor": actor,
            "actor_host": actor_host,
            "study_instance_uid": study_instance_uid,
            "series_instance_uid": series_instance_uid,
            "sop_instance_uid": sop_instance_uid,
            "detail": json.dumps(dict(detail), ensure_ascii=False) if detail else None,
        }
        prepared(conn, "insert audit_event", _INSERT["audit_event"], event).run(conn, event)

    def record_audit(self, action: str, outcome: str, **kwargs: Any) -> None:
        with self.write() as conn:
            self.audit(conn, action, outcome, **kwargs)

    def audit_events(self, limit: int = 100) -> Sequence[Row[Any]]:
        with self.read() as conn:
            return conn.execute(select(audit_event).order_by(audit_event.c.pk.desc()).limit(limit)).all()
