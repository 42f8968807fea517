"""Replication to a second store (another site): a background job with its own queue.

The target (a folder or an S3 prefix, reached independently of the archive's own store) holds
the layout of :mod:`storage.export`: ``objects/<key>`` byte for byte as stored (still
encrypted under client-side encryption), and, once every object the index references has been
copied, the index dumps, ``objects.jsonl`` and ``manifest.json``. The replica is therefore
always restorable with ``filmless restore`` -- to the last complete snapshot.

The queue is the ``replication_job`` table: one row per (target, object). A pass
(:meth:`Replicator.run_once`):

1. enqueues every object the index references that has no row for the target yet;
2. claims pending rows (a lease, so that a second worker on the same target never copies the
   same object at the same time) and copies each object, checking an unencrypted one against
   its sha256 in the index; a failure is recorded on the row (attempts, last error) and
   retried with exponential back-off;
3. when nothing is pending: writes a new snapshot of the index (dumps, catalogue, manifest),
   then removes from the replica the objects the snapshot no longer references (replaced by
   compression, purged), so the replica does not grow without bound.

:func:`status` says, per target, how many objects are replicated, pending, failing, the oldest
pending one and the last snapshot (``filmless replication status``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from storage import export as exporting
from storage.errors import ArchiveError, InstanceAlreadyExists, ObjectNotFound
from storage.index import Index
from storage.index.schema import instance, instance_version, meta, replication_job, trash_item
from storage.objects import ObjectStore

log = logging.getLogger("filmless.replication")

LEASE = timedelta(minutes=10)
MAX_BACKOFF = timedelta(hours=1)
_META_KEY = "replication"  # filmless_meta: {target: {"snapshot_at", "objects", "bytes"}}


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _referenced() -> sa.Subquery:
    held = sa.select(trash_item.c.object_key).where(trash_item.c.restored_at.is_(None), trash_item.c.purged_at.is_(None))
    return sa.union(sa.select(instance.c.object_key), sa.select(instance_version.c.object_key), held).subquery()


@dataclass
class PassReport:
    enqueued: int = 0
    copied: int = 0
    bytes: int = 0
    failed: int = 0
    dropped: int = 0
    """Jobs of objects no longer referenced when their turn came."""
    snapshot: bool = False
    pruned: int = 0
    errors: list[str] = field(default_factory=list)


class Replicator:
    """Replicates the archive (``index``, ``store``) to ``dest``, named ``target`` in the queue."""

    def __init__(
        self,
        index: Index,
        store: ObjectStore,
        dest: ObjectStore,
        target: str,
        *,
        batch: int = 200,
        filmless_version: str = "",
        worker_id: str | None = None,
    ) -> None:
        self.index = index
        self.raw = exporting.raw_store(store)
        self.dest = dest
        self.target = target
        self.batch = batch
        self.filmless_version = filmless_version
        self.worker_id = worker_id or socket.gethostname()

    # -- the queue
    def enqueue(self) -> int:
        """Add a job for every referenced object without one; returns how many."""
        refs = _referenced()
        rj = replication_job
        now = _now()
        query = sa.select(
            sa.literal(self.target, sa.String(200)),
            refs.c.object_key,
            sa.literal(0, sa.Integer()),
            sa.literal(now, sa.DateTime(timezone=True)),
        ).where(~sa.exists().where(rj.c.target == self.target, rj.c.object_key == refs.c.object_key))
        try:
            with self.index.write() as conn:
                # (rowcount of INSERT ... SELECT is not reported by every driver: count first)
                count = int(conn.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one())
                if count:
                    conn.execute(sa.insert(rj).from_select(["target", "object_key", "attempts", "created_at"], query))
                return count
        except InstanceAlreadyExists:
            return 0  # another worker enqueued the same objects meanwhile: next pass

    def _claim(self) -> list[tuple[int, str, int]]:
        rj = replication_job
        now = _now()
        claimable = sa.and_(
            rj.c.target == self.target,
            rj.c.done_at.is_(None),
            sa.or_(rj.c.claimed_until.is_(None), rj.c.claimed_until < now),
        )
        claimed: list[tuple[int, str, int]] = []
        with self.index.write() as conn:
            rows = conn.execute(
                sa.select(rj.c.pk, rj.c.object_key, rj.c.attempts).where(claimable).order_by(rj.c.pk).limit(self.batch)
            ).all()
            for pk, key, attempts in rows:
                taken = conn.execute(
                    sa.update(rj).where(rj.c.pk == pk, claimable).values(claimed_until=now + LEASE)
                ).rowcount
                if taken:
                    claimed.append((pk, key, attempts))
        return claimed

    def _copy(self, key: str) -> dict[str, Any]:
        data = self.raw.read(key)
        digest = hashlib.sha256(data).hexdigest()
        key_id = exporting.stored_key_id(data)
        if key_id is None:
            expected = self._plain_sha256(key)
            if expected is not None and expected != digest:
                raise exporting.ExportError("does not match its sha256 in the index (corrupt; run filmless verify)")
        self.dest.put(f"objects/{key}", data)
        return {"size": len(data), "sha256": digest, "key_id": key_id}

    def _plain_sha256(self, key: str) -> str | None:
        with self.index.read() as conn:
            for t in (instance, instance_version):
                found = conn.execute(sa.select(t.c.object_sha256).where(t.c.object_key == key)).scalar()
                if found is not None:
                    return str(found)
        return None

    def run_once(self) -> PassReport:
        """One pass: enqueue, copy what is pending, snapshot when nothing is."""
        report = PassReport(enqueued=self.enqueue())
        rj = replication_job
        while True:
            jobs = self._claim()
            if not jobs:
                break
            for pk, key, attempts in jobs:
                try:
                    copied = self._copy(key)
                except ObjectNotFound:
                    if not self.index.is_referenced(key):
                        with self.index.write() as conn:  # replaced or purged meanwhile
                            conn.execute(sa.delete(rj).where(rj.c.pk == pk))
                        report.dropped += 1
                        continue
                    self._failed(pk, attempts, f"object {key} is missing from the archive's store", report)
                    continue
                except ArchiveError as exc:
                    self._failed(pk, attempts, f"object {key}: {exc}", report)
                    continue
                with self.index.write() as conn:
                    conn.execute(
                        sa.update(rj)
                        .where(rj.c.pk == pk)
                        .values(done_at=_now(), claimed_until=None, last_error=None, **copied)
                    )
                report.copied += 1
                report.bytes += int(copied["size"])
        if not report.failed and self.pending() == 0:
            try:
                report.snapshot, report.pruned = self.snapshot()
            except ArchiveError as exc:
                report.errors.append(f"snapshot: {exc}")
        return report

    def _failed(self, pk: int, attempts: int, error: str, report: PassReport) -> None:
        log.warning("replication to %s: %s (attempt %d)", self.target, error, attempts + 1)
        backoff = min(MAX_BACKOFF, timedelta(seconds=5 * 2 ** min(attempts, 16)))
        with self.index.write() as conn:
            conn.execute(
                sa.update(replication_job)
                .where(replication_job.c.pk == pk)
                .values(attempts=attempts + 1, last_error=error[:400], claimed_until=_now() + backoff)
            )
        report.failed += 1
        report.errors.append(error)

    def pending(self) -> int:
        rj = replication_job
        with self.index.read() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).where(rj.c.target == self.target, rj.c.done_at.is_(None))
                ).scalar_one()
            )

    # -- the snapshot
    def snapshot(self) -> tuple[bool, int]:
        """Write the index snapshot if every object it references is replicated, then prune
        the objects it no longer references. Returns (written, objects pruned)."""
        created = _now()
        snap = exporting.dump_index(self.index)
        rj = replication_job
        with self.index.read() as conn:
            done = {
                r.object_key: {"key": r.object_key, "size": r.size, "sha256": r.sha256, "key_id": r.key_id}
                for r in conn.execute(
                    sa.select(rj.c.object_key, rj.c.size, rj.c.sha256, rj.c.key_id).where(
                        rj.c.target == self.target, rj.c.done_at.is_not(None)
                    )
                )
            }
        if any(key not in done for key, _sha in snap.referenced):
            return False, 0  # new objects arrived since the pass: the next one catches up
        catalogue = [done[key] for key, _sha in snap.referenced]
        manifest = exporting.write_export(
            self.dest, self.index, snap, catalogue, created=created, filmless_version=self.filmless_version,
            extra={"replica_of": socket.gethostname()},
        )
        self._record(created, manifest)
        return True, self._prune({key for key, _sha in snap.referenced}, set(done))

    def _prune(self, kept: set[str], replicated: set[str]) -> int:
        pruned = 0
        transient = self.index.transient_keys()
        for key in sorted(replicated - kept):
            if key in transient or self.index.is_referenced(key):
                continue
            self.dest.delete(f"objects/{key}")
            with self.index.write() as conn:
                conn.execute(
                    sa.delete(replication_job).where(
                        replication_job.c.target == self.target, replication_job.c.object_key == key
                    )
                )
            pruned += 1
        return pruned

    def _record(self, created: datetime, manifest: dict[str, Any]) -> None:
        with self.index.write() as conn:
            value = conn.execute(sa.select(meta.c.value).where(meta.c.key == _META_KEY)).scalar()
            state: dict[str, Any] = json.loads(value) if value else {}
            state[self.target] = {
                "snapshot_at": created.isoformat(),
                "objects": manifest["counts"]["objects"],
                "bytes": manifest["object_bytes"],
            }
            encoded = json.dumps(state, sort_keys=True)
            if value is None:
                conn.execute(sa.insert(meta).values(key=_META_KEY, value=encoded))
            else:
                conn.execute(sa.update(meta).where(meta.c.key == _META_KEY).values(value=encoded))

    def run_forever(self, stop: threading.Event, interval: float = 30.0) -> None:
        """Passes every ``interval`` seconds until ``stop`` is set; a failing pass is logged
        and retried."""
        while not stop.is_set():
            try:
                report = self.run_once()
                if report.copied or report.failed or report.pruned:
                    log.info(
                        "replication to %s: %d copied, %d failed, %d pruned, snapshot %s",
                        self.target, report.copied, report.failed, report.pruned, report.snapshot,
                    )
            except ArchiveError as exc:
                log.warning("replication to %s: pass failed: %s", self.target, exc)
            stop.wait(interval)


@dataclass
class TargetStatus:
    target: str
    replicated: int
    pending: int
    failing: int
    not_enqueued: int
    oldest_pending: datetime | None
    last_error: str | None
    snapshot_at: str | None
    snapshot_objects: int | None

    @property
    def in_sync(self) -> bool:
        return self.pending == 0 and self.not_enqueued == 0 and self.snapshot_at is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "replicated": self.replicated,
            "pending": self.pending,
            "failing": self.failing,
            "not_enqueued": self.not_enqueued,
            "oldest_pending": self.oldest_pending.isoformat() if self.oldest_pending else None,
            "last_error": self.last_error,
            "snapshot_at": self.snapshot_at,
            "snapshot_objects": self.snapshot_objects,
            "in_sync": self.in_sync,
        }


def status(index: Index) -> list[TargetStatus]:
    """The state of every replication target the index knows."""
    rj = replication_job
    found: list[TargetStatus] = []
    with index.read() as conn:
        value = conn.execute(sa.select(meta.c.value).where(meta.c.key == _META_KEY)).scalar()
        snapshots: dict[str, Any] = json.loads(value) if value else {}
        targets = set(conn.execute(sa.select(rj.c.target).distinct()).scalars()) | set(snapshots)
        refs = _referenced()
        for target in sorted(targets):
            pending = rj.c.done_at.is_(None)
            mine = rj.c.target == target

            def count(*where: Any) -> int:
                return int(conn.execute(sa.select(sa.func.count()).select_from(rj).where(mine, *where)).scalar_one())

            not_enqueued = conn.execute(
                sa.select(sa.func.count()).select_from(refs).where(
                    ~sa.exists().where(mine, rj.c.object_key == refs.c.object_key)
                )
            ).scalar_one()
            oldest = conn.execute(sa.select(sa.func.min(rj.c.created_at)).where(mine, pending)).scalar()
            if isinstance(oldest, datetime) and oldest.tzinfo is None:
                oldest = oldest.replace(tzinfo=timezone.utc)
            error = conn.execute(
                sa.select(rj.c.last_error).where(mine, pending, rj.c.last_error.is_not(None)).order_by(rj.c.pk.desc()).limit(1)
            ).scalar()
            snap = snapshots.get(target, {})
            found.append(
                TargetStatus(
                    target=target,
                    replicated=count(rj.c.done_at.is_not(None)),
                    pending=count(pending),
                    failing=count(pending, rj.c.attempts > 0),
                    not_enqueued=int(not_enqueued),
                    oldest_pending=oldest,
                    last_error=error,
                    snapshot_at=snap.get("snapshot_at"),
                    snapshot_objects=snap.get("objects"),
                )
            )
    return found
