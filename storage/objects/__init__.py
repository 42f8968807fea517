"""The object store port: five verbs, opaque keys, no DICOM knowledge.

Keys are opaque strings chosen by :func:`new_key` (``ab/cd/<uuid>``): never UIDs or names,
so nothing about a patient leaks into a storage path or bucket listing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
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


__all__ = ["LocalObjectStore", "MemoryObjectStore", "ObjectStore", "layers", "new_key"]
