"""Delete to a recoverable trash, restore, purge: the archive side of ``DELETE`` on DICOMweb
resources and of ``filmless trash`` / ``filmless purge``.

* :meth:`Trash.delete` takes the instances out of the index (one transaction,
  :func:`storage.index.trash.move_to_trash`); their objects stay in the store, held by the
  trash items.
* :meth:`Trash.restore` puts an instance back the way every object enters the archive: its
  trashed object is read (sha256-checked) and ingested again (a new object; the trashed one is
  then scheduled for deletion). An instance whose UID was sent again meanwhile with other
  content is reported and left alone: the trash never overwrites newer data.
* :meth:`Trash.purge` removes for good what has been in the trash longer than the retention
  period: objects (and the prior versions the instances had) go through the deletion outbox
  (``object_gc``) in the transaction that marks the items purged, so a crash never leaves a
  row pointing at a deleted object; the outbox is then carried out.
"""

from __future__ import annotations

import enum
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from storage import codecs, part10
from storage.compression import Compressor
from storage.errors import ArchiveError, ObjectNotFound, RejectedInstance
from storage.index import Index, Source
from storage.index import trash as trash_index
from storage.index.trash import TrashItem
from storage.index.repository import utcnow
from storage.ingest import Ingest, Outcome
from storage.objects import ObjectStore

log = logging.getLogger("filmless.trash")

DEFAULT_RETENTION_DAYS = 30
"""How long deleted instances stay recoverable before ``filmless purge`` removes them."""
RESTORE_HOST = "trash-restore"
"""The source host recorded for instances restored from the trash."""
_PURGE_BATCH = 200


class RestoreOutcome(enum.StrEnum):
    RESTORED = "restored"
    ALREADY_THERE = "already there"
    CONFLICT = "conflict"
    FAILED = "failed"
    NOT_IN_TRASH = "not in trash"


@dataclass(frozen=True)
class Restored:
    item: TrashItem
    outcome: RestoreOutcome
    detail: str = ""


@dataclass
class PurgeReport:
    purged: list[TrashItem] = field(default_factory=list)
    prior_versions: int = 0
    objects_deleted: int = 0

    @property
    def bytes(self) -> int:
        return sum(item.stored_size for item in self.purged)


class Trash:
    def __init__(self, index: Index, store: ObjectStore, ingest: Ingest) -> None:
        self.index = index
        self.store = store
        self.ingest = ingest

    # --- delete ----------------------------------------------------------------------------
    def delete(
        self,
        study_uid: str,
        series_uid: str | None = None,
        sop_instance_uid: str | None = None,
        *,
        reason: str,
        actor: str | None,
    ) -> list[TrashItem]:
        """Move what the UIDs name to the trash; [] when nothing current matches."""
        if not reason.strip():
            raise ValueError("a delete needs a reason")
        return trash_index.move_to_trash(
            self.index,
            study_uid=study_uid,
            series_uid=series_uid,
            sop_instance_uid=sop_instance_uid,
            reason=reason.strip(),
            actor=actor,
        )

    # --- restore ---------------------------------------------------------------------------
    def restore(self, chosen: Sequence[TrashItem]) -> list[Restored]:
        """Put each of ``chosen`` back (see the module docstring); one outcome per item."""
        return [self._restore_one(item) for item in chosen]

    def _restore_one(self, item: TrashItem) -> Restored:
        if item.state != "trashed":
            return Restored(item, RestoreOutcome.NOT_IN_TRASH, f"already {item.state}")
        try:
            data = self.store.read(item.object_key)
        except ObjectNotFound:
            return Restored(item, RestoreOutcome.FAILED, "its object is missing from the store")
        except ArchiveError as exc:
            return Restored(item, RestoreOutcome.FAILED, f"its object cannot be read: {exc}")
        if hashlib.sha256(data).hexdigest() != item.object_sha256:
            return Restored(item, RestoreOutcome.FAILED, "its object does not match its sha256 (corrupt); not restored")
        current = self.index.get_instance(item.sop_instance_uid)
        if current is not None:
            return self._already_current(item, current, data)
        try:
            source = Source(aet=part10.split(data).source_aet, host=RESTORE_HOST)
            result = self.ingest.store_file(data, source)
        except RejectedInstance as exc:
            return Restored(item, RestoreOutcome.FAILED, f"refused by ingest: {exc.reason}")
        except ArchiveError as exc:
            return Restored(item, RestoreOutcome.FAILED, f"not stored: {exc}")
        if not trash_index.mark_restored(self.index, item.pk):
            return Restored(item, RestoreOutcome.NOT_IN_TRASH, "restored or purged meanwhile by someone else")
        detail = {
            Outcome.STORED: "",
            Outcome.DUPLICATE: "the same content arrived meanwhile",
            Outcome.REPLACED: "other content arrived meanwhile; it is kept as a prior version",
        }[result.outcome]
        return Restored(item, RestoreOutcome.RESTORED, detail)

    def _already_current(self, item: TrashItem, current: Any, data: bytes) -> Restored:
        same = current.received_sha256 == item.received_sha256 or current.object_sha256 == item.object_sha256
        if not same:
            try:
                same = codecs.same_content(self.store.read(current.object_key), data)
            except Exception:  # noqa: BLE001 - an unreadable current object is not "the same"
                same = False
        if not same:
            return Restored(
                item,
                RestoreOutcome.CONFLICT,
                "the instance was sent again since it was deleted, with other content: the current one is kept, "
                "the trash item stays (purge removes it)",
            )
        if not trash_index.mark_restored(self.index, item.pk):
            return Restored(item, RestoreOutcome.NOT_IN_TRASH, "restored or purged meanwhile by someone else")
        return Restored(item, RestoreOutcome.ALREADY_THERE, "the same content was sent again since it was deleted")

    # --- purge -----------------------------------------------------------------------------
    def due(self, older_than: timedelta, *, study_uid: str | None = None, now: datetime | None = None) -> list[TrashItem]:
        """The items in the trash for longer than ``older_than``, oldest first."""
        cutoff = (now or utcnow()) - older_than
        found = trash_index.items(self.index, study_uid=study_uid, state="trashed", until=cutoff)
        return sorted(found, key=lambda i: i.pk)

    def purge(self, chosen: Sequence[TrashItem]) -> PurgeReport:
        """Remove ``chosen`` for good (index first, then the objects through the outbox)."""
        report = PurgeReport()
        for start in range(0, len(chosen), _PURGE_BATCH):
            for done in trash_index.purge(self.index, chosen[start : start + _PURGE_BATCH]):
                report.purged.append(done.item)
                report.prior_versions += done.prior_versions
        report.objects_deleted = self.collect_garbage()
        return report

    def collect_garbage(self) -> int:
        """Carry out the deletion outbox now (what the compression worker does in passing)."""
        collector = Compressor(self.index, self.store)
        total = 0
        while done := collector.collect_garbage():
            total += done
        return total
