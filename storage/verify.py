"""Verification: every indexed object is present and matches its recorded sha256, and every
object in the store is accounted for."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from storage.errors import ArchiveError, ObjectNotFound
from storage.index import Index
from storage.objects import ObjectStore


@dataclass
class VerifyReport:
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.orphans or self.errors)


def verify(index: Index, store: ObjectStore, progress: Callable[[int], None] | None = None) -> VerifyReport:
    report = VerifyReport()
    referenced: set[str] = set()
    for kind, uid, key, expected in index.referenced_objects():
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
    candidates = [key for key in store.keys() if key not in referenced]
    if candidates:
        # Re-read what is in flight now: a worker may have swapped objects during the walk.
        transient = index.transient_keys()
        for key in candidates:
            if key not in transient and not index.is_referenced(key):
                report.orphans.append(f"object {key} has no index row")
    return report
