"""Export and restore: a complete, self-describing copy of an archive, and an archive rebuilt
from one -- so a hospital can take its data away from a rented server, or keep an offline copy.

An export is a folder, or a prefix in an S3 bucket, laid out as::

    manifest.json        written last: what the export holds (see below); no manifest means
                         the export is incomplete (interrupted, or under way)
    README.txt           this layout, for a human
    index/<table>.jsonl  every table of the index, one JSON object per row (columns in schema
                         order, datetimes ISO 8601 in UTC), rows in primary key order
    objects.jsonl        every exported object: {"key", "size", "sha256", "key_id"} of its bytes
                         as exported (key_id: the encryption key, or null)
    objects/<key>        the objects, byte for byte as the store holds them

Objects are exported *as stored*: compressed as the archive keeps them and, when client-side
encryption is on, still encrypted -- an export of a rented server's archive never holds
plaintext the server did not. The manifest names the encryption key ids the objects need; the
keys themselves are never exported (keep them apart from the copy). An unencrypted archive
gives plain DICOM Part 10 files whose sha256 is the index's ``object_sha256``.

Exports are incremental: an object already at the destination with the size and sha256 that
the previous export's ``objects.jsonl`` records is not copied again (object keys are never
reused for other bytes). The index dumps are rewritten every time (each file atomically), and
``manifest.json`` is removed first and written last, with the sha256 of every dump.

Restore refuses an index that holds data, creates the schema, copies the objects (checking
each one's sha256 against the catalogue), inserts the rows table by table in foreign-key order
in one transaction keeping their primary keys (PostgreSQL sequences are moved past them), and
then verifies the archive (:func:`storage.verify.verify`). An export made on SQLite restores
onto PostgreSQL and back.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from storage.errors import ArchiveError, ObjectNotFound
from storage.index import Index, migrate
from storage.index.schema import SCHEMA_VERSION, instance, instance_version, meta, metadata, trash_item
from storage.objects import LocalObjectStore, ObjectStore
from storage.objects.encrypted import MAGIC, EncryptedObjectStore, _Header
from storage.verify import VerifyReport, verify

FORMAT = "filmless-export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CATALOGUE = "objects.jsonl"
README = "README.txt"
_BATCH = 1000

Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``: phase is "objects" (export and restore) or "rows"."""


class ExportError(ArchiveError):
    """The export or restore could not be done (a clear message says why)."""


def tables() -> list[sa.Table]:
    """Every table of the index schema, parents before children."""
    return list(metadata.sorted_tables)


# -- destinations and sources ---------------------------------------------------------------


def folder(path: Path) -> LocalObjectStore:
    """An export folder as an object store (atomic, durable writes)."""
    return LocalObjectStore(path)


def _size(store: ObjectStore, key: str) -> int | None:
    """The size of ``key`` in ``store``, or None when it is not there."""
    if isinstance(store, LocalObjectStore):
        try:
            return (store.root / key).stat().st_size
        except FileNotFoundError:
            return None
    size = getattr(store, "size", None)
    if size is not None:
        try:
            return int(size(key))
        except ObjectNotFound:
            return None
        except ArchiveError:
            if not store.exists(key):
                return None
            raise
    try:
        return len(store.read(key))
    except ObjectNotFound:
        return None


def raw_store(store: ObjectStore) -> ObjectStore:
    """The store below client-side encryption: the bytes as stored."""
    return store.inner if isinstance(store, EncryptedObjectStore) else store


def stored_key_id(data: bytes) -> str | None:
    if not data.startswith(MAGIC):
        return None
    try:
        return _Header.parse("", data[:512]).key_id
    except ArchiveError:
        return None


# -- values -----------------------------------------------------------------------------------


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:  # SQLite returns naive datetimes; filmless stores UTC
            value = value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).isoformat()
    return value


def _decoder(table: sa.Table) -> Callable[[dict[str, Any]], dict[str, Any]]:
    stamps = {c.name for c in table.columns if isinstance(c.type, sa.DateTime)}

    def decode(row: dict[str, Any]) -> dict[str, Any]:
        for name in stamps:
            if row.get(name) is not None:
                row[name] = datetime.fromisoformat(row[name])
        return row

    return decode


def _order(table: sa.Table) -> list[sa.Column[Any]]:
    return list(table.primary_key.columns)


# -- export -----------------------------------------------------------------------------------


@dataclass
class ExportReport:
    rows: dict[str, int] = field(default_factory=dict)
    objects: int = 0
    copied: int = 0
    skipped: int = 0
    bytes_copied: int = 0
    errors: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors


@contextmanager
def _snapshot(index: Index) -> Iterator[Connection]:
    """A connection whose reads all see one snapshot of the index."""
    with index.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn


def _dump_table(conn: Connection, table: sa.Table) -> tuple[bytes, int]:
    out = io.BytesIO()
    count = 0
    names = [c.name for c in table.columns]
    for row in conn.execute(sa.select(table).order_by(*_order(table))):
        mapping = row._mapping
        record = {name: _encode(mapping[name]) for name in names}
        out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
        count += 1
    return out.getvalue(), count


def export(
    index: Index,
    store: ObjectStore,
    dest: ObjectStore,
    *,
    progress: Progress | None = None,
    filmless_version: str = "",
) -> ExportReport:
    """Export the archive (``index`` and ``store``) to ``dest`` (incrementally, see above)."""
    report = ExportReport()
    dest.delete(MANIFEST)  # from here until the end the export is recognisably incomplete
    previous = _read_catalogue(dest)
    raw = raw_store(store)
    created = datetime.now(timezone.utc)
    snapshot = dump_index(index)  # the index, from one snapshot; the objects it references
    report.rows = dict(snapshot.rows)
    report.objects = len(snapshot.referenced)

    catalogue: list[dict[str, Any]] = []
    for done, (key, plain_sha256) in enumerate(snapshot.referenced, start=1):
        try:
            catalogue.append(_export_object(raw, dest, key, plain_sha256, previous.get(key), report))
        except ArchiveError as exc:
            report.errors.append(f"object {key}: {exc}")
        if progress is not None:
            progress("objects", done, len(snapshot.referenced))
    if report.errors:
        return report  # no manifest: an incomplete export
    report.manifest = write_export(dest, index, snapshot, catalogue, created=created, filmless_version=filmless_version)
    return report


@dataclass
class IndexSnapshot:
    """The index dumped from one snapshot."""

    dumps: dict[str, bytes]
    rows: dict[str, int]
    referenced: list[tuple[str, str]]
    """(object key, sha256 of the plaintext) of every object the dump references."""
    revision: str | None


def dump_index(index: Index) -> IndexSnapshot:
    dumps: dict[str, bytes] = {}
    rows: dict[str, int] = {}
    referenced: list[tuple[str, str]] = []
    with _snapshot(index) as conn:
        revision = migrate.inspect(conn).revision
        for table in tables():
            dumps[table.name], rows[table.name] = _dump_table(conn, table)
        for t in (instance, instance_version):
            referenced += [(r[0], r[1]) for r in conn.execute(sa.select(t.c.object_key, t.c.object_sha256).order_by(t.c.pk))]
        # Deleted instances waiting in the trash stay restorable from an export too.
        held = sa.select(trash_item.c.object_key, trash_item.c.object_sha256).where(
            trash_item.c.restored_at.is_(None), trash_item.c.purged_at.is_(None)
        )
        referenced += [(r[0], r[1]) for r in conn.execute(held.order_by(trash_item.c.pk))]
    return IndexSnapshot(dumps, rows, referenced, revision)


def write_export(
    dest: ObjectStore,
    index: Index,
    snapshot: IndexSnapshot,
    catalogue: list[dict[str, Any]],
    *,
    created: datetime,
    filmless_version: str = "",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the dumps, the catalogue, the README and, last, the manifest; return the manifest."""
    files: dict[str, dict[str, Any]] = {}
    for name, data in snapshot.dumps.items():
        path = f"index/{name}.jsonl"
        dest.put(path, data)
        files[path] = {"rows": snapshot.rows[name], "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    data = b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in catalogue)
    dest.put(CATALOGUE, data)
    files[CATALOGUE] = {"rows": len(catalogue), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    dest.put(README, _README.encode())
    key_ids = sorted({e["key_id"] for e in catalogue if e.get("key_id")})
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "filmless_version": filmless_version,
        "schema_version": SCHEMA_VERSION,
        "alembic_revision": snapshot.revision,
        "source_database": index.engine.dialect.name,
        "created": created.isoformat(),
        "completed": datetime.now(timezone.utc).isoformat(),
        "host": platform.node(),
        "tables": [t.name for t in tables()],
        "counts": {**snapshot.rows, "objects": len(catalogue)},
        "object_bytes": sum(int(e["size"]) for e in catalogue),
        "encryption": {"encrypted": bool(key_ids), "key_ids": key_ids},
        "files": files,
        **(extra or {}),
    }
    dest.put(MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False).encode() + b"\n")
    return manifest


def _read_catalogue(dest: ObjectStore) -> dict[str, dict[str, Any]]:
    try:
        data = dest.read(CATALOGUE)
    except ObjectNotFound:
        return {}
    found: dict[str, dict[str, Any]] = {}
    for line in data.splitlines():
        if line.strip():
            entry = json.loads(line)
            found[entry["key"]] = entry
    return found


def _export_object(
    raw: ObjectStore,
    dest: ObjectStore,
    key: str,
    plain_sha256: str,
    previous: dict[str, Any] | None,
    report: ExportReport,
) -> dict[str, Any]:
    target = f"objects/{key}"
    if previous is not None and _size(dest, target) == previous["size"]:
        report.skipped += 1
        return previous
    data = raw.read(key)
    digest = hashlib.sha256(data).hexdigest()
    key_id = stored_key_id(data)
    if key_id is None and digest != plain_sha256:
        raise ExportError("does not match its sha256 in the index (corrupt in the store; run filmless verify)")
    dest.put(target, data)
    report.copied += 1
    report.bytes_copied += len(data)
    return {"key": key, "size": len(data), "sha256": digest, "key_id": key_id}


# -- restore ----------------------------------------------------------------------------------


@dataclass
class RestoreReport:
    rows: dict[str, int] = field(default_factory=dict)
    objects: int = 0
    bytes: int = 0
    verify: VerifyReport | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and self.verify is not None and self.verify.ok


def read_manifest(source: ObjectStore) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads(source.read(MANIFEST))
    except ObjectNotFound:
        raise ExportError(
            "no manifest.json: not a filmless export, or an export that did not finish (run it again)"
        ) from None
    except ValueError as exc:
        raise ExportError(f"manifest.json is not valid JSON: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise ExportError("manifest.json does not describe a filmless export")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise ExportError(f"export format version {manifest['format_version']} is newer than this filmless reads")
    return manifest


def _checked(source: ObjectStore, manifest: dict[str, Any], path: str) -> bytes:
    expected = manifest["files"].get(path)
    if expected is None:
        raise ExportError(f"the manifest does not list {path}")
    data = source.read(path)
    if hashlib.sha256(data).hexdigest() != expected["sha256"]:
        raise ExportError(f"{path} does not match its sha256 in the manifest (altered or mixed exports)")
    return data


def restore(
    source: ObjectStore,
    index: Index,
    store: ObjectStore,
    *,
    progress: Progress | None = None,
) -> RestoreReport:
    """Rebuild an archive from the export in ``source`` into the empty ``index`` and ``store``."""
    report = RestoreReport()
    manifest = read_manifest(source)
    revision = manifest.get("alembic_revision")
    if revision is not None and not migrate._known(revision):
        raise ExportError(f"the export's index is at revision {revision}, newer than this filmless: upgrade filmless")
    encryption = manifest.get("encryption", {})
    needed = set(encryption.get("key_ids", []))
    if needed:
        have = set(getattr(store, "_ciphers", {})) if isinstance(store, EncryptedObjectStore) else set()
        missing = needed - have
        if missing:
            raise ExportError(
                "the export's objects are encrypted with key(s) " + ", ".join(sorted(missing)) +
                ", which are not configured (FILMLESS_STORAGE_ENCRYPTION_KEYS)"
            )
    dumps = {name: _checked(source, manifest, f"index/{name}.jsonl") for name in manifest["tables"]}
    catalogue = [json.loads(line) for line in _checked(source, manifest, CATALOGUE).splitlines() if line.strip()]
    unknown = set(dumps) - {t.name for t in tables()}
    if unknown:
        raise ExportError(f"the export has tables this filmless does not know: {', '.join(sorted(unknown))}")

    index.create()
    _refuse_non_empty(index, store, {e["key"] for e in catalogue})

    # Objects first: an interruption leaves an empty index (restore can be run again).
    raw = raw_store(store)
    for done, entry in enumerate(catalogue, start=1):
        key = entry["key"]
        try:
            data = source.read(f"objects/{key}")
            if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise ExportError("does not match its size and sha256 in objects.jsonl")
            # Encrypted objects go in as they are; plain ones through the store (encrypted
            # there if the new archive is configured to encrypt).
            (raw if entry.get("key_id") else store).put(key, data)
            report.objects += 1
            report.bytes += len(data)
        except ArchiveError as exc:
            report.errors.append(f"object {key}: {exc}")
        if progress is not None:
            progress("objects", done, len(catalogue))
    if report.errors:
        return report

    # The rows, in one transaction.
    with index.write() as conn:
        columns_of = {t.name: {c.name for c in t.columns} for t in tables()}
        total = sum(data.count(b"\n") for data in dumps.values())
        done = 0
        for table in tables():
            data = dumps.get(table.name, b"")
            decode = _decoder(table)
            batch: list[dict[str, Any]] = []
            count = 0
            if table is meta:  # the schema made its own rows; the export's say the same or more
                keys = [json.loads(line)["key"] for line in data.splitlines() if line.strip()]
                if keys:
                    conn.execute(sa.delete(meta).where(meta.c.key.in_(keys)))
            for line in data.splitlines():
                if not line.strip():
                    continue
                row = decode(json.loads(line))
                extra = set(row) - columns_of[table.name]
                if extra:
                    raise ExportError(f"{table.name}: columns this filmless does not know: {', '.join(sorted(extra))}")
                batch.append(row)
                if len(batch) >= _BATCH:
                    conn.execute(sa.insert(table), batch)
                    count += len(batch)
                    done += len(batch)
                    batch = []
                    if progress is not None:
                        progress("rows", done, total)
            if batch:
                conn.execute(sa.insert(table), batch)
                count += len(batch)
                done += len(batch)
            report.rows[table.name] = count
            if progress is not None:
                progress("rows", done, total)
        if conn.dialect.name == "postgresql":
            _reset_sequences(conn)
    report.verify = verify(index, store)
    return report


def _refuse_non_empty(index: Index, store: ObjectStore, exported: set[str]) -> None:
    with index.read() as conn:
        for table in tables():
            if table is meta:
                continue
            if conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one():
                raise ExportError(f"the target index is not empty (table {table.name} has rows): restore into a new one")
    for key in raw_store(store).keys():
        if key not in exported:
            raise ExportError(f"the target object store is not empty (it holds {key}): restore into a new one")


def _reset_sequences(conn: Connection) -> None:
    for table in tables():
        pk = list(table.primary_key.columns)
        if len(pk) != 1 or not isinstance(pk[0].type, sa.Integer):
            continue
        sequence = conn.execute(
            sa.text("SELECT pg_get_serial_sequence(:table, :column)"), {"table": table.name, "column": pk[0].name}
        ).scalar()
        if sequence is None:
            continue
        conn.execute(
            sa.text(
                f"SELECT setval(:sequence, COALESCE((SELECT MAX({pk[0].name}) FROM {table.name}), 1), "
                f"(SELECT MAX({pk[0].name}) FROM {table.name}) IS NOT NULL)"
            ),
            {"sequence": sequence},
        )


_README = """\
A filmless export
=================

This folder (or bucket prefix) is a complete copy of a filmless archive: its DICOM objects,
its index (patients, studies, series, instances, prior versions, queues, the AE registry) and
its audit log. `filmless restore` rebuilds an archive from it; nothing here needs filmless to
be read.

manifest.json        What this export holds: format version, filmless version, index schema
                     version and alembic revision, when it was made, row and object counts,
                     the sha256 of every file below except the objects, and the ids of the
                     encryption keys the objects need (never the keys). It is written last:
                     without it the export is incomplete (interrupted or under way).
index/<table>.jsonl  One JSON object per row of each index table, columns in schema order,
                     times in ISO 8601 (UTC). instance.object_key names the object of an
                     instance; instance_version lists the prior versions of replaced ones.
objects.jsonl        One line per object: key, size, sha256 of the bytes as exported here,
                     and the id of the key it is encrypted with (null: not encrypted).
objects/<key>        The objects byte for byte as the archive stores them. Unencrypted ones
                     are DICOM Part 10 files (possibly in a compressed transfer syntax; their
                     sha256 is instance.object_sha256). Encrypted ones (they begin with
                     "FLEN") need the archive's key, which is not part of the export.

Exporting again into the same place copies only new objects and rewrites the index files.
"""
