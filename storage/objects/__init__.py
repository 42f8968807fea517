"""The object store port: a few verbs, opaque keys, no DICOM knowledge.

Keys are opaque strings chosen by :func:`new_key` (``ab/cd/<uuid>``): never UIDs or names,
so nothing about a patient leaks into a storage path or bucket listing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import BinaryIO, Protocol, runtime_checkable

from storage.objects.local import LocalObjectStore
from storage.objects.memory import MemoryObjectStore


def new_key() -> str:
    """A fresh opaque object key, fanned out over 256 directories.

    One level, not two: a fresh local store makes a directory for almost every one of its
    first objects with 65,536 leaves (~0.5 ms each, on the acknowledgement path), and 256
    directories hold 40,000 objects each at ten million, well within what ext4 and XFS index.
    Keys are opaque: objects stored under the older two-level keys stay where they are."""
    u = uuid.uuid4().hex
    return f"{u[0:2]}/{u}"


@runtime_checkable
class ObjectStore(Protocol):
    """Where stored objects live. Implementations translate their own errors into
    :class:`storage.errors.ObjectStoreError` / :class:`storage.errors.ObjectNotFound`."""

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` durably and atomically: after return it survives a crash,
        and a reader never sees a partial object."""

    def open(self, key: str) -> BinaryIO:
        """A readable binary stream of the whole object."""

    def read(self, key: str) -> bytes:
        """The whole object."""

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (fewer at the end of the object)."""

    def delete(self, key: str) -> None:
        """Remove the object; removing a missing object is not an error."""

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""

    def keys(self) -> Iterator[str]:
        """Every key in the store (for verification and export)."""


class ObjectWriter(Protocol):
    """An object whose bytes arrive over time (a C-STORE's PDUs): ``write`` them in order,
    then ``commit`` (durable and atomic as :meth:`ObjectStore.put`) or ``abort`` (nothing is
    left behind). A failed ``write`` or ``commit`` raises
    :class:`storage.errors.ObjectStoreError` and has aborted already."""

    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


def writer_of(store: object) -> Callable[[str], ObjectWriter] | None:
    """The store's ``writer(key)`` when it can write an object as its bytes come (a plain
    local store writes the file at once); None for the others, which take whole objects."""
    writer = getattr(store, "writer", None)
    return writer if callable(writer) else None


def layers(store: object) -> Iterator[object]:
    """``store`` and every store inside it, outermost first. Wrappers name the store they wrap
    ``inner`` (encryption, spooling); a spooling store names its local disk store ``spool``.
    Optional abilities (``sweep_temporaries``, ``modified``, ``check_bucket``) are found here."""
    pending, seen = [store], set()
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [child for child in (getattr(current, "inner", None), getattr(current, "spool", None)) if child is not None]


__all__ = [
    "LocalObjectStore",
    "MemoryObjectStore",
    "ObjectStore",
    "ObjectWriter",
    "layers",
    "new_key",
    "writer_of",
]
