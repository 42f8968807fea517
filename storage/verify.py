"""Verification: every indexed object is present and matches its recorded sha256, and every
object in the store is accounted for.

Objects waiting in the spool (:mod:`storage.objects.spool`) are read from there, so they count
as present. Temporary files of writes that a crash cut short are listed, not counted as
failures (they never held an acknowledged object).

``repair`` removes what a crash leaves behind: orphan objects (no index row references them,
and no compression job or pending deletion names them) and temporary files, both only when
older than ``min_age`` seconds, since a young orphan may be the object of an ingest whose index
commit is still under way. Before an orphan is deleted the index is asked again; nothing an
index row references is ever deleted. Objects of deleted instances that wait in the trash
(not yet restored or purged) count as referenced: they are checked like the others.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from storage.errors import ArchiveError, ObjectNotFound
from storage.index import Index, trash
from storage.objects import LocalObjectStore, ObjectStore, layers

REPAIR_MIN_AGE = 3600.0
"""Default age (seconds) an orphan object or a temporary file must have before repair removes it."""


@dataclass
class VerifyReport:
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    temporaries: list[str] = field(default_factory=list)
    """Partial files of interrupted writes (not failures); repair removes the old ones."""
    removed: list[str] = field(default_factory=list)
    """What repair deleted."""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.orphans or self.errors)


def verify(
    index: Index,
    store: ObjectStore,
    progress: Callable[[int], None] | None = None,
    *,
    repair: bool = False,
    min_age: float = REPAIR_MIN_AGE,
) -> VerifyReport:
    report = VerifyReport()
    referenced: set[str] = set()
    for kind, uid, key, expected in _referenced(index):
        referenced.add(key)
        report.checked += 1
        try:
            digest = hashlib.sha256()
            with store.open(key) as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
            if digest.hexdigest() != expected:
                report.corrupt.append(f"{kind} of {uid}: object {key} does not match its sha256")
        except ObjectNotFound:
            report.missing.append(f"{kind} of {uid}: object {key} is missing")
        except (ArchiveError, OSError) as exc:
            report.errors.append(f"{kind} of {uid}: object {key} unreadable: {exc}")
        if progress is not None:
            progress(report.checked)
    orphans: list[str] = []
    candidates = [key for key in store.keys() if key not in referenced]
    if candidates:
        # Re-read what is in flight now: a worker may have swapped objects during the walk.
        transient = index.transient_keys()
        orphans = [key for key in candidates if key not in transient and not index.is_referenced(key)]
    local_stores = [layer for layer in layers(store) if isinstance(layer, LocalObjectStore)]
    if repair:
        orphans = _remove_orphans(index, store, orphans, min_age, report)
        for local in local_stores:
            before = set(local.temporaries())
            if local.sweep_temporaries(min_age):
                gone = before - set(local.temporaries())
                report.removed += [f"temporary file {local.root / name}" for name in sorted(gone)]
    note = f" (written less than {min_age:.0f} s ago, or when unknown: not removed)" if repair else ""
    report.orphans = [f"object {key} has no index row{note}" for key in orphans]
    for local in local_stores:
        report.temporaries += [str(local.root / name) for name in local.temporaries()]
    return report


def _referenced(index: Index) -> Iterator[tuple[str, str, str, str]]:
    """Every object the index points at: current instances, prior versions, and the objects
    trash items hold until they are restored or purged (those are never orphans)."""
    yield from index.referenced_objects()
    for uid, key, sha in trash.held_objects(index):
        yield "trashed instance", uid, key, sha


def _remove_orphans(index: Index, store: ObjectStore, orphans: list[str], min_age: float, report: VerifyReport) -> list[str]:
    """Delete the orphans older than ``min_age``; return those still there (too young, or
    not deletable)."""
    left: list[str] = []
    transient = index.transient_keys()
    now = time.time()
    for key in orphans:
        if key in transient or index.is_referenced(key):
            continue  # an ingest or a compression job committed meanwhile: not an orphan
        written = _modified(store, key)
        if written is None and min_age > 0 or written is not None and now - written < min_age:
            left.append(key)
            continue
        try:
            store.delete(key)
        except ArchiveError as exc:
            report.errors.append(f"object {key}: orphan not removed: {exc}")
            continue
        report.removed.append(f"orphan object {key}")
    return left


def _modified(store: ObjectStore, key: str) -> float | None:
    """When the object was written (seconds since the epoch), from the outermost layer of the
    store that can say; None when none can or the object is gone."""
    for layer in layers(store):
        modified = getattr(layer, "modified", None)
        if modified is not None:
            try:
                value = modified(key)
            except ArchiveError:
                return None
            return float(value) if value is not None else None
    return None
