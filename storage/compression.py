"""The background compression worker.

Ingest writes uncompressed images as received and queues a job; this worker re-encodes them
losslessly, proves the round trip pixel-exact, writes the new object, and swaps the index row
to it in one transaction. The instance stays readable at every moment: the row points at the
original until the swap commits, and the original is deleted only afterwards (through the
deletion outbox). Jobs are leased, so a worker that dies leaves its jobs to be claimed again
after the lease; a result it wrote but did not commit is recorded write-ahead and cleaned up.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from storage import codecs, part10
from storage.errors import ArchiveError, ObjectNotFound
from storage.index import CompressionJob, Index, StoredObject
from storage.objects import ObjectStore, new_key

log = logging.getLogger("filmless.compression")


class Compressor:
    """Claims compression jobs from the index and carries them out."""

    def __init__(
        self,
        index: Index,
        store: ObjectStore,
        *,
        worker_id: str | None = None,
        batch: int = 4,
        lease: timedelta = timedelta(minutes=10),
        max_attempts: int = 5,
    ) -> None:
        self.index = index
        self.store = store
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.batch = batch
        self.lease = lease
        self.max_attempts = max_attempts

    def run_once(self) -> int:
        """Process one batch of jobs and pending deletions; return how many jobs ran."""
        jobs = self.index.claim_jobs(self.worker_id, self.batch, self.lease)
        for job in jobs:
            self._process(job)
        self.collect_garbage()
        return len(jobs)

    def drain(self) -> None:
        """Run until the queue is empty (for imports and tests)."""
        while self.run_once():
            pass

    def run_forever(
        self,
        stop: threading.Event,
        idle_sleep: float = 0.2,
        parent_pid: int | None = None,
        busy: Callable[[], bool] | None = None,
        max_deferral: float = 60.0,
        idle: Callable[[], int] | None = None,
    ) -> None:
        """Work until ``stop``. While ``busy()`` says images are arriving, wait (at most
        ``max_deferral`` seconds at a time): on a small server the receivers need the CPU
        to acknowledge quickly, and compression catches up in the pauses. With the queue
        empty, ``idle()`` does other background work (it returns how much it did)."""
        log.info("compression worker %s started", self.worker_id)
        deferred_since: float | None = None
        try:
            while not stop.is_set():
                if parent_pid is not None and os.getppid() != parent_pid:
                    log.warning("parent process is gone; compression worker stops")
                    return
                if busy is not None and busy():
                    now = time.monotonic()
                    deferred_since = deferred_since or now
                    if now - deferred_since < max_deferral:
                        stop.wait(idle_sleep)
                        continue
                deferred_since = None
                try:
                    if self.run_once() or (idle is not None and idle()):
                        continue
                except ArchiveError as exc:
                    log.warning("compression worker: %s; retrying", exc)
                stop.wait(idle_sleep)
        finally:
            try:
                self.index.release_claims(self.worker_id)
            except ArchiveError:
                pass  # the leases expire by themselves

    def _process(self, job: CompressionJob) -> None:
        try:
            original = self.store.read(job.object_key)
        except ObjectNotFound:
            log.error("object %s of instance row %d is missing; left for `filmless verify`", job.object_key, job.instance_pk)
            self.index.finish_job_kept(job, "stored object missing", flag="missing-object")
            return
        except ArchiveError as exc:
            self._retry(job, str(exc))
            return
        try:
            split = part10.split(original)
            if split.transfer_syntax_uid == job.target_transfer_syntax:
                problem = codecs.check_pixels_decodable(original)
                if problem:
                    log.warning("instance row %d: %s (kept as received, flagged)", job.instance_pk, problem)
                self.index.finish_job_kept(job, problem or "", flag="corrupt-pixel-data" if problem else "")
                return
            started = time.perf_counter()
            result = codecs.compress_object(original, job.target_transfer_syntax)
            if result.data is None:
                log.info("instance row %d %s", job.instance_pk, result.note)
                self.index.finish_job_kept(job, result.note, flag="not-compressed")
                return
            key = new_key()
            self.index.record_job_target(job, key)
            self.store.put(key, result.data)
            swapped = self.index.finish_job_swapped(
                job, StoredObject(key, codecs.sha256(result.data), len(result.data), result.transfer_syntax_uid)
            )
            log.debug(
                "instance row %d compressed %d -> %d bytes in %.1f ms (swapped=%s)",
                job.instance_pk,
                len(original),
                len(result.data),
                (time.perf_counter() - started) * 1000,
                swapped,
            )
        except ArchiveError as exc:
            self._retry(job, str(exc))

    def _retry(self, job: CompressionJob, error: str) -> None:
        if job.attempts >= self.max_attempts:
            log.error("instance row %d: giving up compression after %d attempts: %s", job.instance_pk, job.attempts, error)
            try:
                self.index.finish_job_kept(job, f"compression failed: {error}", flag="not-compressed")
            except ArchiveError:
                pass
            return
        delay = timedelta(seconds=min(300, 2**job.attempts))
        log.warning("instance row %d: compression attempt %d failed (%s); retry in %s", job.instance_pk, job.attempts, error, delay)
        try:
            self.index.release_job(job, error, delay)
        except ArchiveError:
            pass  # the lease expires by itself

    def collect_garbage(self, limit: int = 200) -> int:
        """Delete objects the index has scheduled for deletion; return how many."""
        done = 0
        for pk, key in self.index.deletions(limit):
            if not self.index.is_referenced(key):
                self.store.delete(key)
            self.index.deletion_done(pk)
            done += 1
        return done
