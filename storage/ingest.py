"""Ingest: the one path by which an object enters the archive (C-STORE, STOW-RS, import).

The order is fixed (dicom-server's StoreOrchestrator does the same):

1. check size and framing, walk the element structure (truncation), parse the header,
   extract and validate the index attributes;
2. an instance already stored with identical content is a success that stores nothing;
3. write the object durably (``ObjectStore.put``: atomic and fsynced) -- in ``background``
   compression mode as received, in ``inline`` mode already in its stored transfer syntax.
   A C-STORE received in background mode onto a local store is written while it arrives
   (:meth:`Ingest.receiving`: each PDU's fragment goes to the temporary file and the hash as
   it comes), so that only the fsync and the rename remain once it is complete; they run
   beside step 1, and an object whose data set is then rejected is deleted again;
4. commit the index row (and, in background mode, the compression job) in one transaction;
5. only then return: the caller's success status is a promise that the object is durable and
   every query finds it. A failure in 3 or 4 leaves nothing behind (the object is deleted).

One failure is ambiguous: the database connection lost while the COMMIT was under way (the
server stopped or crashed at that moment). The transaction may have been committed, so the
object is kept, the caller gets a failure as for any index error, and the object is settled
once the index answers again (:meth:`Ingest.settle_uncertain`): deleted if no row references
it, kept otherwise. A sender that retries then finds the instance stored.
"""

from __future__ import annotations

import enum
import hashlib
import re
import threading
import time
from concurrent import futures
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom.uid import AllTransferSyntaxes

from storage import codecs, part10
from storage.attributes import InstanceAttributes, RawElements, extract
from storage.codecs import CompressionPolicy, sha256
from storage.errors import (
    ArchiveError,
    IndexCommitUncertain,
    IndexConflict,
    InstanceAlreadyExists,
    MalformedDataset,
    ObjectStoreError,
    ObjectTooLarge,
    RejectedInstance,
    SOPClassMismatch,
)
from storage.index import Index, NewInstance, Source, StoredObject
from storage.objects import ObjectStore, ObjectWriter, new_key, writer_of

log = logging.getLogger("filmless.ingest")
TRANSFER_SYNTAXES = frozenset(str(uid) for uid in AllTransferSyntaxes)
# Every standard transfer syntax lives under 1.2.840.10008.1.2 (PS3.6 Table A-1), including
# ones newer than pydicom's list (HEVC, JPIP referenced, SMPTE ST 2110).
_STANDARD_TS = re.compile(r"1\.2\.840\.10008\.1\.2(\.[0-9]+)*")
# Below this size hashing costs less than handing the work to another thread.
_HASH_INLINE_BELOW = 128 * 1024
# An object whose commit outcome is unknown is settled no sooner than this (seconds): time for
# a server that lost our connection mid-COMMIT to finish the transaction one way or the other.
_SETTLE_AFTER = 2.0


class CompressionMode(enum.StrEnum):
    BACKGROUND = "background"
    INLINE = "inline"


class Outcome(enum.StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    REPLACED = "replaced"


@dataclass(frozen=True)
class Received:
    """An object as it arrived: its encoded dataset (no file meta) and transfer syntax."""

    dataset: bytes
    transfer_syntax_uid: str
    source: Source
    # What the DIMSE request and presentation context said, to check the dataset against.
    expected_sop_class_uid: str | None = None
    expected_sop_instance_uid: str | None = None
    # The object already being written as the data set arrived (:meth:`Ingest.receiving`).
    stream: Receiving | None = None


@dataclass(frozen=True)
class StoreResult:
    outcome: Outcome
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    stored_transfer_syntax: str
    warnings: tuple[str, ...] = field(default=())


class Ingest:
    """Stores received objects; shared by every front door."""

    def __init__(
        self,
        index: Index,
        store: ObjectStore,
        policy: CompressionPolicy,
        *,
        mode: CompressionMode = CompressionMode.BACKGROUND,
        max_object_size: int = 2 * 1024**3,
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        self.index = index
        self.store = store
        self.policy = policy
        self.mode = mode
        self.max_object_size = max_object_size
        self.on_queued = on_queued
        self._writer = futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="object-write")
        self._uncertain: list[tuple[float, str]] = []  # (when, object key) of unknown commits
        self._uncertain_lock = threading.Lock()

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self.settle_uncertain(min_age=0.0)
        if self._uncertain:
            log.warning(
                "%d objects of commits with an unknown outcome are kept (the index was unreachable): "
                "`filmless verify` lists any that no index row references",
                len(self._uncertain),
            )

    def settle_uncertain(self, min_age: float | None = None) -> int:
        """Settle the objects of commits whose outcome was unknown (at least ``min_age``
        seconds ago, by default a few): delete those no index row references. Returns how
        many are settled; those the index cannot be asked about yet stay for the next call."""
        min_age = _SETTLE_AFTER if min_age is None else min_age
        now = time.monotonic()
        with self._uncertain_lock:  # taken out, so that concurrent callers settle each once
            due = [entry for entry in self._uncertain if now - entry[0] >= min_age]
            self._uncertain = [entry for entry in self._uncertain if entry not in due]
        for settled, (_when, key) in enumerate(due):
            try:
                referenced = self.index.is_referenced(key)
            except ArchiveError:
                with self._uncertain_lock:  # still unavailable: next time
                    self._uncertain.extend(due[settled:])
                return settled
            if referenced:
                log.info("object %s: its commit had happened; the instance is stored", key)
            else:
                log.info("object %s: its commit had not happened; deleting the object", key)
                self._forget(key)
        return len(due)

    def _keep_uncertain(self, write: _Write) -> None:
        futures.wait([write.future])
        log.warning("object %s kept: the index failed during its commit, which may have happened", write.key)
        with self._uncertain_lock:
            self._uncertain.append((time.monotonic(), write.key))

    # --- front-door entry points -----------------------------------------------------------
    def check_size(self, size: int) -> None:
        """Raise :class:`ObjectTooLarge` for an object of ``size`` bytes over the limit."""
        if size > self.max_object_size:
            raise self.too_large(size)

    def too_large(self, size: int) -> ObjectTooLarge:
        return ObjectTooLarge(f"object of {size} bytes exceeds the limit of {self.max_object_size}")

    def store_file(self, data: bytes, source: Source) -> StoreResult:
        """Ingest a Part 10 file (or a bare dataset) as an import or STOW-RS part."""
        self.check_size(len(data))
        split = part10.split(data)
        return self.store_received(Received(split.dataset, split.transfer_syntax_uid, source))

    def receiving(self, transfer_syntax_uid: str, sop_class_uid: str, sop_instance_uid: str, source_aet: str) -> Receiving | None:
        """Start writing a C-STORE's object while its data set still arrives: the file meta
        at once, then each fragment given to :meth:`Receiving.add` (the write and the hash
        happen while the rest is on the wire). Pass it with the complete data set as
        :attr:`Received.stream`. None when the object cannot be written before it is parsed
        (inline compression stores what it encoded), or the store takes whole objects only
        (an S3 upload is one request)."""
        writer = writer_of(self.store)
        if writer is None or self.mode is not CompressionMode.BACKGROUND or not _known_transfer_syntax(transfer_syntax_uid):
            return None
        head = part10.file_meta(
            transfer_syntax_uid=transfer_syntax_uid,
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            source_aet=source_aet,
        )
        return Receiving(self, writer, head, (transfer_syntax_uid, sop_class_uid, sop_instance_uid, source_aet))

    def store_received(self, received: Received) -> StoreResult:
        """Ingest one received object; raises :class:`RejectedInstance` (nothing stored),
        :class:`storage.errors.ObjectStoreError` or :class:`storage.errors.IndexUnavailable`."""
        stream = received.stream
        try:
            return self._store_received(received, stream)
        finally:
            if stream is not None:
                stream.abandon()  # unless used: then the write is settled as any other

    def _store_received(self, received: Received, stream: Receiving | None) -> StoreResult:
        self.check_size(len(received.dataset))
        if self._uncertain:
            self.settle_uncertain()
        ts = received.transfer_syntax_uid
        if not _known_transfer_syntax(ts):
            raise MalformedDataset(f"unknown transfer syntax {ts[:64]!r}")
        write: _Write | None = None
        sop_class_uid, sop_instance_uid = received.expected_sop_class_uid, received.expected_sop_instance_uid
        if self.mode is CompressionMode.BACKGROUND and sop_class_uid and sop_instance_uid:
            # The object as it will be stored is known from the DIMSE request alone: it is
            # written beside the parsing (or was, as it arrived); a dataset that turns out not
            # to match the request, or a duplicate, deletes it again. Its hash is the received
            # one too.
            if stream is not None and stream.made_for == (ts, sop_class_uid, sop_instance_uid, received.source.aet):
                write = stream.finish(lambda: _as_file(received, sop_class_uid, sop_instance_uid))
            else:
                write = self._start_write(_as_file(received, sop_class_uid, sop_instance_uid), ts)
        try:
            return self._store(received, write)
        except IndexCommitUncertain:
            raise  # _store kept the object
        except BaseException:
            if write is not None:
                write.discard()
            raise

    def _store(self, received: Received, write: _Write | None) -> StoreResult:
        ts, size = received.transfer_syntax_uid, len(received.dataset)
        scanned = part10.scan(received.dataset, ts)
        has_pixels = scanned.has_pixels
        attrs = self._parse(scanned)
        self._check_expected(received, attrs)

        # The received hash is the sha256 of the object as it is stored when kept as received
        # (file meta + the dataset as it arrived): an object kept so is hashed once, and the
        # same hash is its stored one. Hashing 0.5 MB takes ~0.3 ms and releases the GIL: it
        # runs beside the parsing and the index statements.
        if write is not None:
            file_bytes, received_sha = write.content, write.sha256
        else:
            as_received = _as_file(received, attrs.sop_class_uid, attrs.sop_instance_uid)
            file_bytes, received_sha = (lambda: as_received), self._hash(as_received)
        # With the write already under way, the index is asked once, inside the transaction;
        # otherwise a duplicate found here saves writing (and compressing) it.
        speculative = write is not None
        existing = None if speculative else self.index.get_instance(attrs.sop_instance_uid)
        if existing is not None and existing.received_sha256 == received_sha():
            log.info("duplicate of %s from %s: already stored, nothing written", attrs.sop_instance_uid, received.source.aet)
            self._audit_duplicate(attrs, received.source)
            if write is not None:
                write.discard()
            return self._result(Outcome.DUPLICATE, attrs, existing.stored_transfer_syntax)

        # Another hash is not always other content: the same dataset from another AE (its
        # title is in the file meta), or sent again in another transfer syntax.
        if existing is not None and self._same_as_stored(existing, file_bytes()):
            # Same attributes and pixels, other bytes: another transfer syntax, or a sender
            # that re-encodes (DCMTK writes sequences with explicit lengths, for one).
            log.info("%s resent with other encoding: same content, nothing written", attrs.sop_instance_uid)
            self._audit_duplicate(attrs, received.source)
            if write is not None:
                write.discard()
            return self._result(Outcome.DUPLICATE, attrs, existing.stored_transfer_syntax)
        target = self.policy.target_for(
            received_transfer_syntax=ts,
            modality=attrs.series.get("modality"),
            sop_class_uid=attrs.sop_class_uid,
            has_pixels=has_pixels,
        )
        # The object to write when it is not kept as received: what inline compression encoded.
        encoded: bytes | None = None
        stored_ts, pending, note = ts, False, ""
        job_target: str | None = None
        if target is not None:
            if self.mode is CompressionMode.INLINE:
                result = codecs.compress_object(file_bytes(), target)
                if result.data is not None:
                    encoded, stored_ts = result.data, target
                else:
                    note = result.note
            else:
                pending, job_target = True, target
        elif has_pixels and ts not in codecs.UNCOMPRESSED:
            # Kept as received; the background worker checks the compressed stream decodes.
            pending, job_target = True, ts

        if write is None:
            # Hashed and written (and fsynced) by helper threads while this one prepares the
            # index transaction, which commits only once the write is durable.
            if encoded is None:
                write = self._start_write(file_bytes(), stored_ts, received_sha)
            else:
                write = self._start_write(encoded, stored_ts)
        try:
            known = existing
            while True:
                try:
                    outcome = self._commit(
                        attrs,
                        lambda: StoredObject("", received_sha(), size, ts),
                        write.stored,
                        received.source,
                        pending,
                        job_target,
                        note,
                        look_first=existing is not None,
                        known=known,
                        durable=write.durable,
                    )
                    break
                except _UnexpectedVersion as exc:
                    # Another version is stored than the one compared with above (or none was):
                    # compare with it outside the transaction, then try again.
                    if self._same_as_stored(exc.row, file_bytes()):
                        log.info("%s resent with other encoding: same content, nothing written", attrs.sop_instance_uid)
                        self._audit_duplicate(attrs, received.source)
                        write.discard()
                        return self._result(Outcome.DUPLICATE, attrs, exc.row.stored_transfer_syntax)
                    known = exc.row
            if outcome is Outcome.DUPLICATE:
                write.discard()
            elif pending and self.on_queued is not None:
                self.on_queued()
        except IndexCommitUncertain:
            self._keep_uncertain(write)
            raise
        except BaseException:
            if not speculative:  # the caller discards a speculative write
                write.discard()
            raise
        return self._result(outcome, attrs, stored_ts)

    def _start_write(self, data: bytes, transfer_syntax_uid: str, sha: Callable[[], str] | None = None) -> _Write:
        key = new_key()
        digest = self._hash(data) if sha is None else sha
        future = self._writer.submit(self.store.put, key, data)
        return _Write(self, key, len(data), lambda: data, transfer_syntax_uid, digest, future)

    def _hash(self, data: bytes) -> Callable[[], str]:
        """The sha256 of ``data``, computed on a helper thread when it is worth a hand-off."""
        if len(data) < _HASH_INLINE_BELOW:
            digest = sha256(data)
            return lambda: digest
        return self._writer.submit(sha256, data).result

    # --- steps ---------------------------------------------------------------------------------
    @staticmethod
    def _parse(scanned: part10.Scanned) -> InstanceAttributes:
        """The index attributes, read from the element bytes the structure walk located."""
        attrs = extract(RawElements(scanned))
        described = all(attrs.instance.get(k) for k in ("rows", "columns", "bits_allocated"))
        float_pixels = 0x7FE00008 in scanned.elements or 0x7FE00009 in scanned.elements
        if described and not scanned.has_pixels and not float_pixels:
            # A dataset cut exactly between two elements parses; an image without its pixels
            # is what such a cut most often leaves.
            raise MalformedDataset("the image attributes are present but Pixel Data is missing (truncated?)")
        return attrs

    @staticmethod
    def _check_expected(received: Received, attrs: InstanceAttributes) -> None:
        if received.expected_sop_class_uid and attrs.sop_class_uid != received.expected_sop_class_uid:
            raise SOPClassMismatch(
                f"dataset SOP Class {attrs.sop_class_uid} does not match the negotiated "
                f"{received.expected_sop_class_uid}"
            )
        if received.expected_sop_instance_uid and attrs.sop_instance_uid != received.expected_sop_instance_uid:
            raise SOPClassMismatch(
                f"dataset SOP Instance UID {attrs.sop_instance_uid} does not match the request's "
                f"{received.expected_sop_instance_uid}"
            )

    def _commit(
        self,
        attrs: InstanceAttributes,
        received: Callable[[], StoredObject],
        stored: Callable[[], StoredObject],
        source: Source,
        pending: bool,
        job_target: str | None,
        note: str,
        *,
        look_first: bool,
        known: Any,
        durable: Callable[[], object],
    ) -> Outcome:
        """Commit the index rows once the object is durable.

        ``known`` is the stored version the new content was compared with (or None); finding
        another one raises :class:`_UnexpectedVersion`. Without ``look_first`` (a lookup just
        before saw no row, or a C-STORE's write started at once: most are new instances) the
        instance is not looked up: a row stored before or meanwhile makes the insert fail,
        and the retry looks."""
        flags = "charset-replaced" if any("replacement" in w for w in attrs.warnings) else ""
        for attempt in range(3):
            try:
                with self.index.write() as conn:
                    look = look_first or attempt > 0
                    existing = self.index.find_instance(conn, attrs.sop_instance_uid) if look else None
                    if existing is not None and existing.received_sha256 == received().sha256:
                        durable()
                        return Outcome.DUPLICATE
                    if existing is not None and (
                        known is None or (known.pk, known.version) != (existing.pk, existing.version)
                    ):
                        raise _UnexpectedVersion(existing)
                    hierarchy = self.index.upsert_hierarchy(conn, attrs) if existing is None else None
                    new = NewInstance(attrs, received(), stored(), source, pending, flags, note)
                    if existing is None:
                        pk = self.index.insert_instance(conn, new, hierarchy)
                        outcome = Outcome.STORED
                    else:
                        pk = self.index.replace_instance(conn, existing, new)
                        outcome = Outcome.REPLACED
                        log.warning(
                            "instance %s replaced by new content from %s: version %d kept until purged",
                            attrs.sop_instance_uid,
                            source.aet or source.host,
                            existing.version,
                        )
                    if job_target is not None:
                        self.index.enqueue_compression(conn, pk, new.stored.key, job_target)
                    self.index.audit(
                        conn,
                        "instance.store" if outcome is Outcome.STORED else "instance.replace",
                        "success",
                        actor=source.aet,
                        actor_host=source.host,
                        study_instance_uid=attrs.study["study_instance_uid"],
                        series_instance_uid=attrs.series["series_instance_uid"],
                        sop_instance_uid=attrs.sop_instance_uid,
                        detail={"warnings": list(attrs.warnings)} if attrs.warnings else None,
                    )
                    durable()  # raises if the write failed: the transaction rolls back
                    return outcome
            except (InstanceAlreadyExists, IndexConflict):
                # Lost an insert race with another association (same instance created
                # concurrently), or the database broke a deadlock by aborting us: look again.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _same_as_stored(self, existing: object, file_bytes: bytes) -> bool:
        try:
            stored = self.store.read(existing.object_key)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - an unreadable original is replaced, never trusted
            return False
        return codecs.same_content(stored, file_bytes)

    def _audit_duplicate(self, attrs: InstanceAttributes, source: Source) -> None:
        self.index.record_audit(
            "instance.store",
            "duplicate",
            actor=source.aet,
            actor_host=source.host,
            study_instance_uid=attrs.study["study_instance_uid"],
            sop_instance_uid=attrs.sop_instance_uid,
        )

    def _forget(self, key: str) -> None:
        try:
            self.store.delete(key)
        except Exception:  # noqa: BLE001 - verify reports what this could not clean
            log.exception("could not delete unreferenced object %s", key)

    @staticmethod
    def _result(outcome: Outcome, attrs: InstanceAttributes, stored_ts: str) -> StoreResult:
        return StoreResult(
            outcome=outcome,
            sop_instance_uid=attrs.sop_instance_uid,
            sop_class_uid=attrs.sop_class_uid,
            study_instance_uid=str(attrs.study["study_instance_uid"]),
            stored_transfer_syntax=stored_ts,
            warnings=attrs.warnings,
        )


def _as_file(received: Received, sop_class_uid: str, sop_instance_uid: str) -> bytes:
    """The object as it is stored when kept as received: the dataset behind a file meta."""
    return part10.build_file(
        received.dataset,
        transfer_syntax_uid=received.transfer_syntax_uid,
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid,
        source_aet=received.source.aet,
    )


class _UnexpectedVersion(Exception):
    """The index holds a version of the instance this ingest has not compared with."""

    def __init__(self, row: Any) -> None:
        super().__init__(row.sop_instance_uid)
        self.row = row


@dataclass
class _Write:
    """An object being hashed and written (made durable) by helper threads."""

    ingest: Ingest
    key: str
    size: int
    content: Callable[[], bytes]  # the object's bytes (built again if they were streamed)
    transfer_syntax_uid: str
    sha256: Callable[[], str]
    future: futures.Future[None]

    def stored(self) -> StoredObject:
        return StoredObject(self.key, self.sha256(), self.size, self.transfer_syntax_uid)

    def durable(self) -> None:
        """Wait for the write; raises what it raised."""
        self.future.result()

    def discard(self) -> None:
        """Wait for the write to end, then delete the object (if it was written at all)."""
        futures.wait([self.future])
        self.ingest._forget(self.key)


def describe_rejection(exc: RejectedInstance) -> str:
    return f"{type(exc).__name__}: {exc.reason}"


def _known_transfer_syntax(uid: str) -> bool:
    return uid in TRANSFER_SYNTAXES or _STANDARD_TS.fullmatch(uid) is not None


class Receiving:
    """A C-STORE's object written while its data set arrives (:meth:`Ingest.receiving`).

    Each fragment is hashed and written as it comes; :meth:`finish` hands the commit (fsync,
    rename) to a helper thread, :meth:`abandon` drops the file. A write that fails is
    remembered and raised when the object is committed: the C-STORE then fails as for any
    object store error."""

    def __init__(
        self,
        ingest: Ingest,
        writer: Callable[[str], ObjectWriter],
        head: bytes,
        made_for: tuple[str, str, str, str],
    ) -> None:
        self._ingest = ingest
        self.made_for = made_for  # (transfer syntax, SOP class, SOP instance, source AE)
        self.key = new_key()
        self._hash = hashlib.sha256(head)
        self.size = len(head)
        self._error: ObjectStoreError | None = None
        self._writer: ObjectWriter | None = None
        self._open = True
        try:
            self._writer = writer(self.key)
            self._writer.write(head)
        except ObjectStoreError as exc:
            self._error, self._writer = exc, None

    def add(self, data: bytes | memoryview) -> None:
        self._hash.update(data)
        self.size += len(data)
        if self._writer is not None:
            try:
                self._writer.write(data)
            except ObjectStoreError as exc:  # the writer aborted itself
                self._error, self._writer = exc, None

    def finish(self, content: Callable[[], bytes]) -> _Write:
        """The object is complete: make it durable on a helper thread."""
        digest = self._hash.hexdigest()
        future = self._ingest._writer.submit(self._commit)
        self._open = False
        return _Write(self._ingest, self.key, self.size, content, self.made_for[0], lambda: digest, future)

    def _commit(self) -> None:
        if self._error is not None:
            raise self._error
        assert self._writer is not None
        self._writer.commit()

    def abandon(self) -> None:
        """Drop the object (nothing happens once :meth:`finish` took it)."""
        if self._open:
            self._open = False
            if self._writer is not None:
                self._writer.abort()
