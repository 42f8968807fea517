"""An in-memory object store: the fake that unit tests use in place of a real store."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from typing import BinaryIO

from storage.errors import ObjectNotFound, ObjectStoreError


class MemoryObjectStore:
    """Implements :class:`storage.objects.ObjectStore` in a dict; ``fail_puts`` simulates an
    unavailable store."""

    def __init__(self) -> None:
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.fail_puts = False

    def put(self, key: str, data: bytes) -> None:
        if self.fail_puts:
            raise ObjectStoreError("object store unavailable (simulated)")
        with self._lock:
            self._objects[key] = bytes(data)

    def open(self, key: str) -> BinaryIO:
        return io.BytesIO(self.read(key))

    def read(self, key: str) -> bytes:
        with self._lock:
            try:
                return self._objects[key]
            except KeyError as exc:
                raise ObjectNotFound(key) from exc

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        return self.read(key)[offset : offset + length]

    def delete(self, key: str) -> None:
        with self._lock:
            self._objects.pop(key, None)

    def exists(self, key: str) -> bool:
        with self._lock:
            return key in self._objects

    def keys(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._objects))
