"""Spooling: instances keep being acknowledged while a remote object store is down.

:class:`SpoolingObjectStore` sits in front of the remote store (an S3 bucket) with a
:class:`~storage.objects.local.LocalObjectStore` on local disk, the *spool*:

* ``put`` writes to the remote store. When that fails it writes the object durably into the
  spool under the same key (temporary file, fsync, rename, fsync of the directory) and
  returns; the index row then commits as usual, so the sender gets its success status and
  every query finds the instance at once. While the remote store is known to be down, ``put``
  goes straight to the spool and tries the remote store again only now and then (a circuit
  breaker with back-off): a dead server costs one slow store, not every one.
* Reads look in the spool first, then in the remote store (an object uploaded and removed
  from the spool meanwhile is found there). ``delete`` removes both copies; ``keys`` lists both.

:class:`SpoolUploader` empties the spool: it uploads each spooled object, checks the size the
remote store reports, and only then removes the local copy. While the remote store is down it
retries with exponential back-off (capped). The spool directory *is* the queue, so a restart
resumes where the last run stopped; one uploader works per spool (an ``flock`` on a file next
to it), whichever process runs it.

Races. The local copy is removed only after the upload, so an object is always in the spool,
in the remote store or in both, and a reader that finds the spool copy gone finds the remote
one. ``delete`` removes the spool copy first: an uploader that then finds its local copy gone
knows the object was deleted during the upload, and deletes the remote copy it just made.

The spool is on one host's disk: until it is uploaded, a spooled object can be read only by
the filmless processes of that host.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from storage.errors import ObjectNotFound, ObjectStoreError, ObjectStoreUnreachable
from storage.objects import ObjectStore
from storage.objects.local import LocalObjectStore

log = logging.getLogger("filmless.spool")


@dataclass(frozen=True)
class SpoolUsage:
    """What waits in a spool for upload."""

    objects: int
    bytes: int


def spool_usage(root: Path) -> SpoolUsage:
    """Objects (and their bytes) in the spool directory ``root``; temporary files of writes in
    progress are not counted. A missing directory is an empty spool."""
    count = size = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            if name.endswith(".tmp"):
                continue
            try:
                size += os.stat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                continue  # uploaded meanwhile
            count += 1
    return SpoolUsage(count, size)


class SpoolingObjectStore:
    """An :class:`storage.objects.ObjectStore` that falls back to a local spool when the
    remote store ``inner`` fails to store an object.

    ``spool_writes=False`` keeps reading (and deleting) what a spool holds but never writes to
    it: a failed ``put`` then raises, as without spooling. ``retry_after`` is how long puts skip
    the remote store after it failed; it doubles with every failed retry, up to
    ``max_retry_after``, and an upload or put that succeeds resets it.
    """

    def __init__(
        self,
        remote: ObjectStore,
        spool: LocalObjectStore,
        *,
        spool_writes: bool = True,
        retry_after: float = 2.0,
        max_retry_after: float = 30.0,
    ) -> None:
        self.inner = remote
        self.spool = spool
        self.spool_writes = spool_writes
        self.retry_after = retry_after
        self.max_retry_after = max_retry_after
        self.wakeup = threading.Event()
        """Set when an object is spooled (an uploader in this process waits on it)."""
        self._lock = threading.Lock()
        self._down_since: float | None = None  # time.monotonic() of the failure, while down
        self._hold = retry_after
        self._retry_at = 0.0
        self._probing = False

    def __repr__(self) -> str:
        return f"SpoolingObjectStore({self.inner!r}, spool {str(self.spool.root)!r})"

    # -- the port
    def put(self, key: str, data: bytes) -> None:
        if not self.spool_writes:
            self.inner.put(key, data)
            return
        if self._try_remote():
            try:
                self.inner.put(key, data)
            except ObjectStoreError as exc:
                self.remote_failed(exc)
            except BaseException:
                with self._lock:
                    self._probing = False
                raise
            else:
                self.remote_ok()
                if self.spool.exists(key):  # an older object under the same key, spooled
                    self.spool.delete(key)
                return
        self.spool.put(key, data)
        self.wakeup.set()

    def open(self, key: str) -> BinaryIO:
        try:
            return self.spool.open(key)
        except ObjectNotFound:
            return self.inner.open(key)

    def read(self, key: str) -> bytes:
        try:
            return self.spool.read(key)
        except ObjectNotFound:
            return self.inner.read(key)

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        try:
            return self.spool.read_range(key, offset, length)
        except ObjectNotFound:
            return self.inner.read_range(key, offset, length)

    def delete(self, key: str) -> None:
        self.spool.delete(key)  # first: see "Races" above
        self.inner.delete(key)

    def exists(self, key: str) -> bool:
        return self.spool.exists(key) or self.inner.exists(key)

    def keys(self) -> Iterator[str]:
        spooled = set(self.spool.keys())
        yield from spooled
        for key in self.inner.keys():
            if key not in spooled:
                yield key

    def modified(self, key: str) -> float | None:
        """When the object was written (seconds since the epoch), or None if the remote store
        cannot say."""
        try:
            return self.spool.modified(key)
        except ObjectNotFound:
            remote_modified = getattr(self.inner, "modified", None)
            return float(remote_modified(key)) if remote_modified is not None else None

    def sweep_temporaries(self, min_age: float = 3600.0) -> int:
        """Remove temporary files a crash left in the spool (and in the remote store, if it
        has such a thing), older than ``min_age`` seconds; returns how many."""
        removed = self.spool.sweep_temporaries(min_age)
        sweep = getattr(self.inner, "sweep_temporaries", None)
        return removed + (int(sweep(min_age)) if sweep is not None else 0)

    # -- the remote store's state
    @property
    def remote_down(self) -> bool:
        """Whether the remote store failed last time it was used."""
        return self._down_since is not None

    def remote_failed(self, exc: BaseException) -> None:
        """The remote store failed: puts skip it for a while (longer after each failure)."""
        with self._lock:
            now = time.monotonic()
            first = self._down_since is None
            if first:
                self._down_since, self._hold = now, self.retry_after
            else:
                self._hold = min(self.max_retry_after, self._hold * 2)
            self._retry_at = now + self._hold
            self._probing = False
        if first and self.spool_writes:
            log.warning(
                "object store %r failed (%s): spooling new objects on local disk under %s; "
                "they are uploaded when it answers again",
                self.inner,
                exc,
                self.spool.root,
            )

    def remote_ok(self) -> None:
        """The remote store answered: puts go to it again."""
        with self._lock:
            since, self._down_since, self._probing = self._down_since, None, False
        if since is not None and self.spool_writes:
            log.warning(
                "object store %r answers again after %.0f s: new objects go to it directly, no longer to the spool",
                self.inner,
                time.monotonic() - since,
            )

    def _try_remote(self) -> bool:
        """Whether this put should try the remote store: always while it is up; while it is
        down, one put at a time once the hold has passed."""
        with self._lock:
            if self._down_since is None:
                return True
            if self._probing or time.monotonic() < self._retry_at:
                return False
            self._probing = True
            return True

    # -- the spool
    def spooled_keys(self) -> list[str]:
        """Keys of the spooled objects, oldest first."""
        entries: list[tuple[float, str]] = []
        for key in self.spool.keys():
            try:
                entries.append((self.spool.modified(key), key))
            except ObjectNotFound:
                continue  # uploaded or deleted meanwhile
        return [key for _mtime, key in sorted(entries)]

    def usage(self) -> SpoolUsage:
        return spool_usage(self.spool.root)


class SpoolUploader:
    """Uploads what a :class:`SpoolingObjectStore` spooled, in a thread of its own, for as
    long as it runs (:meth:`start`, :meth:`close`).

    Only the holder of an exclusive ``flock`` on ``lock_path`` uploads; another process's
    uploader waits until the lock is free (its process stopped or died). Failed uploads are
    retried after ``first_delay`` seconds, doubling up to ``max_delay``; an empty spool is
    looked at every ``idle_interval`` seconds and whenever this process spools an object; a
    lock held elsewhere is tried again every ``lock_interval`` seconds.
    """

    def __init__(
        self,
        store: SpoolingObjectStore,
        lock_path: Path,
        *,
        first_delay: float = 1.0,
        max_delay: float = 30.0,
        idle_interval: float = 2.0,
        lock_interval: float = 5.0,
    ) -> None:
        self.store = store
        self.lock_path = Path(lock_path)
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.idle_interval = idle_interval
        self.lock_interval = lock_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="spool-uploader", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.store.wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        """Take the lock, then upload until :meth:`close`."""
        fd = self._wait_for_lock()
        if fd is None:
            return
        try:
            usage = self.store.usage()
            if usage.objects:
                log.warning(
                    "%d objects (%d bytes) are spooled under %s from an earlier run: uploading them",
                    usage.objects,
                    usage.bytes,
                    self.store.spool.root,
                )
            self._loop()
        finally:
            os.close(fd)  # releases the lock

    def _wait_for_lock(self) -> int | None:
        said = False
        while not self._stop.is_set():
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                os.close(fd)
            if not said:
                log.info("another process uploads the spool %s; this one waits its turn", self.store.spool.root)
                said = True
            self._stop.wait(self.lock_interval)
        return None

    def _loop(self) -> None:
        delay = self.first_delay
        while not self._stop.is_set():
            self.store.wakeup.clear()
            try:
                self.upload_all()
            except ObjectStoreError as exc:
                self.store.remote_failed(exc)
                usage = self.store.usage()
                log.warning(
                    "spool: upload failed (%s); %d objects (%d bytes) wait under %s, next attempt in %.0f s",
                    exc,
                    usage.objects,
                    usage.bytes,
                    self.store.spool.root,
                    delay,
                )
                self._stop.wait(delay)
                delay = min(self.max_delay, delay * 2)
                continue
            except Exception:  # noqa: BLE001 - the uploader must outlive a bug in one pass
                log.exception("spool: unexpected error while uploading; next attempt in %.0f s", delay)
                self._stop.wait(delay)
                delay = min(self.max_delay, delay * 2)
                continue
            delay = self.first_delay
            self.store.wakeup.wait(self.idle_interval)

    def upload_all(self) -> int:
        """Upload every object spooled now; return how many. A remote store that does not
        answer ends the pass at once (:class:`ObjectStoreUnreachable`: the rest wait for the
        next one); an object it refuses is skipped, and the first such error is raised at the
        end of the pass, so that one bad object never holds up the others."""
        keys = self.store.spooled_keys()
        if not keys:
            return 0
        started = time.monotonic()
        done = 0
        refused: list[ObjectStoreError] = []
        try:
            for key in keys:
                if self._stop.is_set():
                    break
                try:
                    if self.upload(key):
                        done += 1
                except ObjectStoreUnreachable:
                    raise
                except ObjectStoreError as exc:
                    log.error("spool: object %s not uploaded: %s (kept, tried again later)", key, exc)
                    refused.append(exc)
        finally:
            if done:
                left = self.store.usage().objects
                log.warning(
                    "spool: %d objects uploaded to %r in %.1f s; %s",
                    done,
                    self.store.inner,
                    time.monotonic() - started,
                    f"{left} still spooled" if left else "the spool is empty",
                )
        if refused:
            raise refused[0]
        return done

    def upload(self, key: str) -> bool:
        """Upload one spooled object, check it, remove the local copy. False if it was gone."""
        store = self.store
        try:
            data = store.spool.read(key)
        except ObjectNotFound:
            return False  # deleted (or uploaded by an earlier owner of the lock) meanwhile
        store.inner.put(key, data)
        _check_upload(store.inner, key, data)
        store.remote_ok()
        if not store.spool.remove(key):
            # Deleted while it was being uploaded: the copy just made must go as well.
            store.inner.delete(key)
            return False
        return True


def _check_upload(remote: ObjectStore, key: str, data: bytes) -> None:
    """The remote store holds ``data`` under ``key``: same size (asked with a HEAD request
    where the store can say), else read back and compared."""
    size = getattr(remote, "size", None)
    if size is not None:
        stored = int(size(key))
        if stored != len(data):
            raise ObjectStoreError(f"uploaded object {key} has {stored} bytes, its spooled copy {len(data)}")
    elif remote.read(key) != data:
        raise ObjectStoreError(f"uploaded object {key} differs from its spooled copy")


__all__ = ["SpoolUploader", "SpoolUsage", "SpoolingObjectStore", "spool_usage"]
