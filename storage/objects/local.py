"""Objects as files under one directory, written atomically and durably.

put = write a temporary file in the target directory, fsync it, rename over the final name,
fsync the directory (:meth:`LocalObjectStore.writer` does the same for an object whose bytes
arrive over time: the ingest writes a C-STORE's data set as its PDUs are received). A crash leaves either no object or the whole object, never a partial one;
leftover ``*.tmp`` files are ignored by :meth:`keys` and swept by :meth:`sweep_temporaries`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from storage.errors import ObjectNotFound, ObjectStoreError

_TMP_SUFFIX = ".tmp"


class LocalObjectStore:
    """An :class:`storage.objects.ObjectStore` on a local (or mounted) filesystem."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ObjectStoreError(f"cannot create object directory: {exc.strerror}") from exc

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ObjectStoreError(f"invalid object key {key!r}")
        return self.root / key

    def put(self, key: str, data: bytes) -> None:
        writer = self.writer(key)
        writer.write(data)
        writer.commit()

    def writer(self, key: str) -> LocalWriter:
        """An object written as its bytes come (:class:`storage.objects.ObjectWriter`): into
        its temporary file at once, made durable and renamed by ``commit``."""
        path = self._path(key)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{time.monotonic_ns()}{_TMP_SUFFIX}")
        try:
            fd = self._create(tmp)
        except OSError as exc:
            raise ObjectStoreError(f"cannot write object: {exc.strerror or exc}") from exc
        return LocalWriter(self, path, tmp, fd)

    def _create(self, tmp: Path) -> int:
        """Create the temporary file, and its directories when missing (made durable: each
        new directory's parent is fsynced). A delete that removes a directory just emptied
        (see :meth:`_prune`) between the two makes the creation try again."""
        for attempt in range(5):
            try:
                return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            except FileNotFoundError:
                if attempt == 4:
                    raise
            self._make_dirs(tmp.parent)
        raise AssertionError("unreachable")

    def _make_dirs(self, directory: Path) -> None:
        missing: list[Path] = []
        while directory != self.root and not directory.is_dir():
            missing.append(directory)
            directory = directory.parent
        for new in reversed(missing):
            try:
                new.mkdir()
            except FileExistsError:
                continue
            if self.fsync:
                _fsync_dir(new.parent)

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc
        except OSError as exc:
            raise ObjectStoreError(f"cannot open object: {exc.strerror}") from exc

    def read(self, key: str) -> bytes:
        with self.open(key) as fh:
            try:
                return fh.read()
            except OSError as exc:
                raise ObjectStoreError(f"cannot read object: {exc.strerror}") from exc

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        with self.open(key) as fh:
            try:
                fh.seek(offset)
                return fh.read(length)
            except OSError as exc:
                raise ObjectStoreError(f"cannot read object: {exc.strerror}") from exc

    def delete(self, key: str) -> None:
        self.remove(key)

    def remove(self, key: str) -> bool:
        """Delete the object; return whether it was there (False: someone removed it first)."""
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise ObjectStoreError(f"cannot delete object: {exc.strerror}") from exc
        self._prune(path)
        return True

    def _prune(self, path: Path) -> None:
        """Remove the object's fan-out directories once empty (never the root itself)."""
        parent = path.parent
        while parent != self.root and self.root in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break  # not empty (the usual case), gone already, or busy
            parent = parent.parent

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def modified(self, key: str) -> float:
        """When the object was last written (seconds since the epoch)."""
        try:
            return self._path(key).stat().st_mtime
        except FileNotFoundError as exc:
            raise ObjectNotFound(key) from exc
        except OSError as exc:
            raise ObjectStoreError(f"cannot look up object: {exc.strerror}") from exc

    def keys(self) -> Iterator[str]:
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for name in filenames:
                if name.endswith(_TMP_SUFFIX):
                    continue
                full = Path(dirpath, name)
                yield full.relative_to(self.root).as_posix()

    def temporaries(self) -> list[str]:
        """Temporary files of writes in progress or cut short by a crash (paths under the root)."""
        found: list[str] = []
        for dirpath, _dirnames, filenames in os.walk(self.root):
            found += [Path(dirpath, name).relative_to(self.root).as_posix() for name in filenames if name.endswith(_TMP_SUFFIX)]
        return found

    def sweep_temporaries(self, min_age: float = 3600.0) -> int:
        """Remove temporary files a crash left behind (older than ``min_age`` seconds, so that
        another process's write in progress is left alone); returns how many."""
        removed = 0
        cutoff = time.time() - min_age
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for name in filenames:
                if name.endswith(_TMP_SUFFIX):
                    path = Path(dirpath, name)
                    try:
                        if path.stat().st_mtime < cutoff:
                            path.unlink()
                            removed += 1
                    except OSError:
                        pass
        return removed


class LocalWriter:
    """One object being written into its temporary file (see :meth:`LocalObjectStore.writer`)."""

    def __init__(self, store: LocalObjectStore, path: Path, tmp: Path, fd: int) -> None:
        self._store = store
        self._path = path
        self._tmp = tmp
        self._fd = fd

    def write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            self.abort()
            raise ObjectStoreError(f"cannot write object: {exc.strerror or exc}") from exc

    def commit(self) -> None:
        """fsync, rename over the final name, fsync the directory: durable once returned."""
        try:
            if self._store.fsync:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            os.replace(self._tmp, self._path)
            if self._store.fsync:
                _fsync_dir(self._path.parent)
        except OSError as exc:
            self.abort()
            raise ObjectStoreError(f"cannot write object: {exc.strerror or exc}") from exc

    def abort(self) -> None:
        """Drop what was written (the temporary file); nothing is left behind."""
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1
        try:
            self._tmp.unlink(missing_ok=True)
        except OSError:
            pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
