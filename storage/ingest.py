"""Ingest: the one path by which an object enters the archive (C-STORE, STOW-RS, import).

The order is fixed (dicom-server's StoreOrchestrator does the same):

1. check size and framing, walk the element structure (truncation), parse the header,
   extract and validate the index attributes;
2. an instance already stored with identical content is a success that stores nothing;
3. write the object durably (``ObjectStore.put``: atomic and fsynced) -- in ``background``
   compression mode as received, in ``inline`` mode already in its stored transfer syntax;
4. commit the index row (and, in background mode, the compression job) in one transaction;
5. only then return: the caller's success status is a promise that the object is durable and
   every query finds it. A failure in 3 or 4 leaves nothing behind (the object is deleted).
"""

from __future__ import annotations

import enum
import re
from concurrent import futures
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO

from pydicom.filereader import read_dataset
from pydicom.uid import AllTransferSyntaxes, DeflatedExplicitVRLittleEndian

from storage import codecs, part10
from storage.attributes import InstanceAttributes, extract
from storage.codecs import CompressionPolicy, sha256
from storage.errors import (
    InstanceAlreadyExists,
    MalformedDataset,
    ObjectTooLarge,
    RejectedInstance,
    SOPClassMismatch,
)
from storage.index import Index, NewInstance, Source, StoredObject
from storage.objects import ObjectStore, new_key

log = logging.getLogger("filmless.ingest")
TRANSFER_SYNTAXES = frozenset(str(uid) for uid in AllTransferSyntaxes)
# Every standard transfer syntax lives under 1.2.840.10008.1.2 (PS3.6 Table A-1), including
# ones newer than pydicom's list (HEVC, JPIP referenced, SMPTE ST 2110).
_STANDARD_TS = re.compile(r"1\.2\.840\.10008\.1\.2(\.[0-9]+)*")


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

    def close(self) -> None:
        self._writer.shutdown(wait=True)

    # --- front-door entry points -----------------------------------------------------------
    def store_file(self, data: bytes, source: Source) -> StoreResult:
        """Ingest a Part 10 file (or a bare dataset) as an import or STOW-RS part."""
        if len(data) > self.max_object_size:
            raise ObjectTooLarge(f"object of {len(data)} bytes exceeds the limit of {self.max_object_size}")
        split = part10.split(data)
        return self.store_received(Received(split.dataset, split.transfer_syntax_uid, source))

    def store_received(self, received: Received) -> StoreResult:
        """Ingest one received object; raises :class:`RejectedInstance` (nothing stored),
        :class:`storage.errors.ObjectStoreError` or :class:`storage.errors.IndexUnavailable`."""
        size = len(received.dataset)
        if size > self.max_object_size:
            raise ObjectTooLarge(f"object of {size} bytes exceeds the limit of {self.max_object_size}")
        ts = received.transfer_syntax_uid
        if ts not in TRANSFER_SYNTAXES and not _STANDARD_TS.fullmatch(ts):
            raise MalformedDataset(f"unknown transfer syntax {ts[:64]!r}")
        has_pixels = part10.check_complete(received.dataset, ts)
        attrs = self._parse(received.dataset, ts, has_pixels)
        self._check_expected(received, attrs)

        received_sha = sha256(received.dataset)
        existing = self.index.get_instance(attrs.sop_instance_uid)
        if existing is not None and existing.received_sha256 == received_sha:
            log.info("duplicate of %s from %s: already stored, nothing written", attrs.sop_instance_uid, received.source.aet)
            self._audit_duplicate(attrs, received.source)
            return self._result(Outcome.DUPLICATE, attrs, existing.stored_transfer_syntax)

        file_bytes = part10.build_file(
            received.dataset,
            transfer_syntax_uid=ts,
            sop_class_uid=attrs.sop_class_uid,
            sop_instance_uid=attrs.sop_instance_uid,
            source_aet=received.source.aet,
        )
        if existing is not None and self._same_as_stored(existing, file_bytes):
            # Same attributes and pixels, other bytes: another transfer syntax, or a sender
            # that re-encodes (DCMTK writes sequences with explicit lengths, for one).
            log.info("%s resent with other encoding: same content, nothing written", attrs.sop_instance_uid)
            self._audit_duplicate(attrs, received.source)
            return self._result(Outcome.DUPLICATE, attrs, existing.stored_transfer_syntax)
        received_obj = StoredObject("", received_sha, size, ts)
        target = self.policy.target_for(
            received_transfer_syntax=ts,
            modality=attrs.series.get("modality"),
            sop_class_uid=attrs.sop_class_uid,
            has_pixels=has_pixels,
        )
        data, stored_ts, pending, note = file_bytes, ts, False, ""
        job_target: str | None = None
        if target is not None:
            if self.mode is CompressionMode.INLINE:
                result = codecs.compress_object(file_bytes, target)
                if result.data is not None:
                    data, stored_ts = result.data, target
                else:
                    note = result.note
            else:
                pending, job_target = True, target
        elif has_pixels and ts not in codecs.UNCOMPRESSED:
            # Kept as received; the background worker checks the compressed stream decodes.
            pending, job_target = True, ts

        key = new_key()
        # The object is written (and fsynced) by a helper thread while this one prepares the
        # index transaction; the transaction commits only once the write is durable.
        writing = self._writer.submit(self.store.put, key, data)
        try:
            stored = StoredObject(key, sha256(data), len(data), stored_ts)
            outcome = self._commit(
                attrs, received_obj, stored, received.source, pending, job_target, note, durable=writing.result
            )
        except BaseException:
            futures.wait([writing])
            self._forget(key)
            raise
        if outcome is Outcome.DUPLICATE:
            self._forget(key)
        elif pending and self.on_queued is not None:
            self.on_queued()
        return self._result(outcome, attrs, stored_ts)

    # --- steps ---------------------------------------------------------------------------------
    @staticmethod
    def _parse(dataset: bytes, ts: str, has_pixels: bool) -> InstanceAttributes:
        implicit, little = part10.encoding_of(ts)
        raw = part10.inflate(dataset) if ts == DeflatedExplicitVRLittleEndian else dataset
        try:
            ds = read_dataset(
                BytesIO(raw),
                implicit,
                little,
                stop_when=lambda tag, vr, length: tag == 0x7FE00010,
            )
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types on bad input
            raise MalformedDataset(f"the dataset cannot be parsed: {str(exc)[:200]}") from exc
        attrs = extract(ds)
        described = all(attrs.instance.get(k) for k in ("rows", "columns", "bits_allocated"))
        float_pixels = 0x7FE00008 in ds or 0x7FE00009 in ds
        if described and not has_pixels and not float_pixels:
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
        received: StoredObject,
        stored: StoredObject,
        source: Source,
        pending: bool,
        job_target: str | None,
        note: str,
        *,
        durable: Callable[[], object],
    ) -> Outcome:
        flags = "charset-replaced" if any("replacement" in w for w in attrs.warnings) else ""
        for attempt in range(3):
            try:
                with self.index.write() as conn:
                    existing = self.index.find_instance(conn, attrs.sop_instance_uid)
                    if existing is not None and existing.received_sha256 == received.sha256:
                        durable()
                        return Outcome.DUPLICATE
                    new = NewInstance(attrs, received, stored, source, pending, flags, note)
                    if existing is None:
                        pk = self.index.insert_instance(conn, new)
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
                        self.index.enqueue_compression(conn, pk, stored.key, job_target)
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
            except InstanceAlreadyExists:
                # Lost an insert race with another association (same patient/study/series or
                # instance created concurrently): look again.
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


def describe_rejection(exc: RejectedInstance) -> str:
    return f"{type(exc).__name__}: {exc.reason}"
