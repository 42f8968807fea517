"""C-MOVE and C-GET SCP (PS3.4 C.4.2 and C.4.3): Patient Root and Study Root.

Both resolve the identifier's unique keys to stored instances and send each with a C-STORE
sub-operation: C-MOVE over a new association to a destination from the AE registry, C-GET
over the requestor's own association (on the storage contexts it proposed with the SCP role).
Each instance goes out in its stored transfer syntax when the receiver accepted it, otherwise
decoded to native little endian with pixels bit-identical to what was received
(:mod:`storage.retrieve`).

These run in place of pynetdicom's own Q/R retrieve service (see
:meth:`dicom_node.reactor.EventDrivenAssociation._serve_request`) because that one can only
refuse before it has associated with the destination, cannot choose the transfer syntax per
sub-association, and re-encodes every dataset.

Responses: a pending response after each sub-operation (remaining, completed, failed, warning
counts); the final one is Success, "Sub-operations complete - one or more failures or warnings"
(B000) or, when none succeeded, "Unable to perform sub-operations" (A702), with the Failed SOP
Instance UID List. C-CANCEL stops between two sub-operations (Cancel, FE00). Refusals: unknown
move destination (A801), identifier without the level's unique key (A900), nothing stored
under the keys (C000 "Unable to process", with a reason), not authorised (0124).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.dsutils import decode, encode
from pynetdicom.presentation import PresentationContext, build_context

from dicom_node.access import NotAuthorized, Peer, require
from dicom_node.status import QRStatus, error_comment
from storage.errors import ArchiveError
from storage.index import ApplicationEntity, Index, RetrievableInstance
from storage.retrieve import NATIVE_TARGETS, Retriever

log = logging.getLogger("filmless.dicom.retrieve")

PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
RETRIEVE_SOP_CLASSES = {
    PATIENT_ROOT_MOVE: "PATIENT",
    STUDY_ROOT_MOVE: "STUDY",
    PATIENT_ROOT_GET: "PATIENT",
    STUDY_ROOT_GET: "STUDY",
}
_MAX_SUBOPERATIONS = 65535  # the counts are US (PS3.7 9.3.2.2)
_MAX_CONTEXTS = 128  # presentation context IDs are odd numbers 1-255 (PS3.8 9.3.2.2)


class RetrieveRefused(Exception):
    """The request is refused before any sub-operation; ``status`` is the final status."""

    def __init__(self, status: QRStatus, reason: str, tag: int | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.tag = tag


@dataclass(frozen=True)
class RetrieveKeys:
    """The unique keys of a retrieve identifier (PS3.4 C.4.2.2.1)."""

    level: str
    patient_id: str | None = None
    study_uids: tuple[str, ...] = ()
    series_uids: tuple[str, ...] = ()
    sop_instance_uids: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"level": self.level}
        for name in ("patient_id", "study_uids", "series_uids", "sop_instance_uids"):
            value = getattr(self, name)
            if value:
                out[name] = value if isinstance(value, str) else list(value)
        return out


_LEVEL_KEY = {
    "PATIENT": ("PatientID", 0x00100020),
    "STUDY": ("StudyInstanceUID", 0x0020000D),
    "SERIES": ("SeriesInstanceUID", 0x0020000E),
    "IMAGE": ("SOPInstanceUID", 0x00080018),
}
_LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")


def retrieve_keys(identifier: Dataset, root: str) -> RetrieveKeys:
    """Read the level and the unique keys; raise :class:`RetrieveRefused` (A900) when the
    identifier does not name what to retrieve."""
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in _LEVELS or (root == "STUDY" and level == "PATIENT"):
        raise RetrieveRefused(
            QRStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            f"Query/Retrieve Level {level or '(empty)'!r} is not valid for the {root} root model",
            0x00080052,
        )

    def values(keyword: str) -> tuple[str, ...]:
        raw = identifier.get(keyword)
        if raw is None or raw == "":
            return ()
        items = raw if isinstance(raw, (list, tuple)) or type(raw).__name__ == "MultiValue" else [raw]
        return tuple(str(v).strip() for v in items if str(v).strip())

    keyword, tag = _LEVEL_KEY[level]
    own = values(keyword)
    if not own or any(v in ("*", "?") or "*" in v or "?" in v for v in own):
        raise RetrieveRefused(
            QRStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            f"a {level} retrieve needs {keyword} with one or more values (no wildcards)",
            tag,
        )
    patient = values("PatientID")
    keys: dict[str, Any] = {"level": level, "patient_id": patient[0] if patient else None}
    keys["study_uids"] = values("StudyInstanceUID") if level != "PATIENT" else ()
    keys["series_uids"] = values("SeriesInstanceUID") if level in ("SERIES", "IMAGE") else ()
    keys["sop_instance_uids"] = values("SOPInstanceUID") if level == "IMAGE" else ()
    return RetrieveKeys(**keys)


@dataclass
class _Progress:
    total: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        return self.total - self.completed - self.failed - self.warning

    def fail(self, uid: str) -> None:
        self.failed += 1
        self.failed_uids.append(uid)

    def as_detail(self) -> dict[str, int]:
        return {"completed": self.completed, "failed": self.failed, "warning": self.warning, "remaining": self.remaining}


class RetrieveService:
    """Serves C-MOVE and C-GET requests (called on the association's reactor thread)."""

    def __init__(self, index: Index, retriever: Retriever, ae: AE, *, ae_title: str) -> None:
        self.index = index
        self.retriever = retriever
        self.ae = ae
        self.ae_title = ae_title

    # --- entry point --------------------------------------------------------------------------
    def serve(self, assoc: Association, req: C_MOVE | C_GET, context: PresentationContext) -> None:
        is_move = isinstance(req, C_MOVE)
        service = "move" if is_move else "get"
        op = _Operation(assoc, req, context)
        started = time.perf_counter()
        audit: dict[str, Any] = {"model": str(req.AffectedSOPClassUID)}
        peer: Peer | None = None
        try:
            peer = require(assoc, service)
            identifier = op.identifier()
            keys = retrieve_keys(identifier, RETRIEVE_SOP_CLASSES[str(req.AffectedSOPClassUID)])
            audit.update(keys.describe())
            if is_move:
                destination = self._destination(cast(C_MOVE, req))  # unknown: A801 before anything else
                audit["destination"] = destination.ae_title
            items = self._locate(keys)
            if is_move:
                self._move(op, items, peer, destination)
            else:
                self._get(assoc, op, items, peer)
            outcome = op.outcome
        except NotAuthorized as exc:
            op.final(QRStatus.NOT_AUTHORIZED, comment=str(exc))
            outcome = "refused"
            audit["reason"] = str(exc)
        except RetrieveRefused as exc:
            who = f"{peer.ae_title}@{peer.host}" if peer else "?"
            log.warning("C-%s from %s refused (%s): %s", service.upper(), who, exc.status.name, exc.reason)
            op.final(exc.status, comment=exc.reason, offending=exc.tag)
            outcome = "refused"
            audit["reason"] = exc.reason
        except Exception as exc:  # noqa: BLE001 - answer the requestor whatever happened
            log.exception("C-%s failed unexpectedly", service.upper())
            op.final(QRStatus.UNABLE_TO_PROCESS, comment=error_comment(exc))
            outcome = "failure"
            audit["reason"] = f"{type(exc).__name__}: {exc}"[:400]
        if op.progress is not None:
            audit.update(op.progress.as_detail())
        audit["ms"] = round((time.perf_counter() - started) * 1000, 1)
        study = audit.get("study_uids")
        try:
            self.index.record_audit(
                f"dicom.{service}",
                outcome,
                actor=peer.ae_title if peer else assoc.requestor.ae_title.strip(),
                actor_host=peer.host if peer else assoc.requestor.address,
                study_instance_uid=study[0] if study and len(study) == 1 else None,
                detail=audit,
            )
        except Exception:  # noqa: BLE001 - the answer was given; the failure is logged
            log.exception("could not write the audit event of a C-%s", service.upper())

    def _locate(self, keys: RetrieveKeys) -> list[RetrievableInstance]:
        try:
            items = self.retriever.locate(
                patient_id=keys.patient_id,
                study_uids=keys.study_uids,
                series_uids=keys.series_uids,
                sop_instance_uids=keys.sop_instance_uids,
                limit=_MAX_SUBOPERATIONS + 1,
            )
        except ArchiveError as exc:
            raise RetrieveRefused(QRStatus.UNABLE_TO_CALCULATE_MATCHES, f"index unavailable: {exc}") from exc
        if not items:
            raise RetrieveRefused(QRStatus.UNABLE_TO_PROCESS, "no stored instance matches the identifier")
        if len(items) > _MAX_SUBOPERATIONS:
            raise RetrieveRefused(
                QRStatus.OUT_OF_RESOURCES,
                f"more than {_MAX_SUBOPERATIONS} instances; retrieve by study or series",
            )
        return items

    # --- C-MOVE -------------------------------------------------------------------------------
    def _destination(self, req: C_MOVE) -> ApplicationEntity:
        destination = str(req.MoveDestination or "").strip()
        try:
            known = self.index.get_ae(destination)
        except ArchiveError as exc:
            raise RetrieveRefused(QRStatus.UNABLE_TO_PERFORM_SUBOPERATIONS, f"AE registry unavailable: {exc}") from exc
        if known is None:
            raise RetrieveRefused(
                QRStatus.MOVE_DESTINATION_UNKNOWN,
                f"move destination {destination!r} is not in the AE registry",
            )
        return known

    def _move(self, op: _Operation, items: list[RetrievableInstance], peer: Peer, known: ApplicationEntity) -> None:
        destination = known.ae_title
        contexts = _contexts_for(items)
        store_assoc = self.ae.associate(known.host, known.port, contexts=contexts, ae_title=destination)
        if not store_assoc.is_established:
            raise RetrieveRefused(
                QRStatus.UNABLE_TO_PERFORM_SUBOPERATIONS,
                f"could not associate with {destination} at {known.host}:{known.port}",
            )
        log.info("C-MOVE from %s: %d instance(s) to %s", peer.ae_title, len(items), destination)
        try:
            self._send_all(op, items, store_assoc, lambda cx: True, originator=peer.ae_title)
        finally:
            if store_assoc.is_established:
                store_assoc.release()

    # --- C-GET --------------------------------------------------------------------------------
    def _get(self, assoc: Association, op: _Operation, items: list[RetrievableInstance], peer: Peer) -> None:
        log.info("C-GET from %s: %d instance(s)", peer.ae_title, len(items))
        self._send_all(op, items, assoc, lambda cx: bool(cx.as_scu), originator=None)

    # --- the sub-operations -------------------------------------------------------------------
    def _send_all(
        self,
        op: _Operation,
        items: list[RetrievableInstance],
        target: Association,
        usable: Any,
        *,
        originator: str | None,
    ) -> None:
        progress = op.start(len(items))
        msg_id = op.message_id
        # The contexts are fixed once the association is up: which syntaxes each SOP class may use.
        accepted_by_class: dict[str, list[str]] = {}
        for cx in target.accepted_contexts:
            if usable(cx):
                accepted_by_class.setdefault(str(cx.abstract_syntax), []).append(str(cx.transfer_syntax[0]))
        for position, item in enumerate(items):
            if op.cancelled():
                op.final(QRStatus.CANCEL, failed_list=True)
                return
            if not target.is_established:
                for rest in items[position:]:
                    progress.fail(rest.sop_instance_uid)
                log.error("the receiving association ended; %d sub-operation(s) not performed", progress.failed)
                break
            accepted = accepted_by_class.get(item.sop_class_uid, [])
            msg_id = msg_id % 65535 + 1
            try:
                if not accepted:
                    raise ArchiveError(f"the receiver accepted no presentation context for SOP class {item.sop_class_uid}")
                outgoing = self.retriever.outgoing(item, accepted)
                kwargs: dict[str, Any] = {"msg_id": msg_id}
                if originator is not None:
                    kwargs.update(originator_aet=originator, originator_id=op.message_id)
                status = target.send_c_store(outgoing.dataset, **kwargs)
                code = int(status.Status) if "Status" in status else None
            except ArchiveError as exc:
                log.warning("sub-operation for %s not performed: %s", item.sop_instance_uid, exc)
                progress.fail(item.sop_instance_uid)
            except Exception as exc:  # noqa: BLE001 - one instance must not end the retrieve
                log.warning("sub-operation for %s failed: %s", item.sop_instance_uid, exc)
                progress.fail(item.sop_instance_uid)
            else:
                if code == 0x0000:
                    progress.completed += 1
                elif code is not None and (code & 0xF000 == 0xB000 or code == 0x0107 or code == 0x0116):
                    progress.warning += 1
                else:
                    log.warning(
                        "the receiver refused %s: status %s", item.sop_instance_uid, f"0x{code:04X}" if code is not None else "none"
                    )
                    progress.fail(item.sop_instance_uid)
            if progress.remaining:
                op.pending()
        if progress.failed or progress.warning:
            if progress.completed or progress.warning:
                op.final(QRStatus.SUBOPERATIONS_WARNING, failed_list=True)
            else:
                op.final(QRStatus.UNABLE_TO_PERFORM_SUBOPERATIONS, failed_list=True, comment="no sub-operation succeeded")
        else:
            op.final(QRStatus.SUCCESS)


class _Operation:
    """One C-MOVE / C-GET request: its responses and progress."""

    def __init__(self, assoc: Association, req: C_MOVE | C_GET, context: PresentationContext) -> None:
        self.assoc = assoc
        self.req = req
        self.context_id = int(context.context_id or 0)
        self.transfer_syntax = context.transfer_syntax[0]
        self.message_id = int(req.MessageID or 0)
        self.progress: _Progress | None = None
        self.outcome = "success"

    def identifier(self) -> Dataset:
        ts = self.transfer_syntax
        try:
            ds = decode(cast(BytesIO, self.req.Identifier), ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
        except Exception as exc:  # noqa: BLE001 - undecodable identifier
            raise RetrieveRefused(QRStatus.UNABLE_TO_PROCESS, f"cannot decode the identifier: {exc}") from exc
        if ds is None:
            raise RetrieveRefused(QRStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "the request has no identifier")
        return ds

    def start(self, total: int) -> _Progress:
        self.progress = _Progress(total)
        return self.progress

    def cancelled(self) -> bool:
        return self.message_id in self.assoc.dimse.cancel_req

    def _response(self, status: int) -> C_MOVE | C_GET:
        rsp = C_MOVE() if isinstance(self.req, C_MOVE) else C_GET()
        rsp.MessageIDBeingRespondedTo = self.req.MessageID
        rsp.AffectedSOPClassUID = self.req.AffectedSOPClassUID
        rsp.Status = status
        return rsp

    def _counts(self, rsp: C_MOVE | C_GET, *, remaining: bool) -> None:
        p = self.progress
        if p is None:
            return
        if remaining:
            rsp.NumberOfRemainingSuboperations = p.remaining
        rsp.NumberOfCompletedSuboperations = p.completed
        rsp.NumberOfFailedSuboperations = p.failed
        rsp.NumberOfWarningSuboperations = p.warning

    def pending(self) -> None:
        rsp = self._response(int(QRStatus.PENDING))
        self._counts(rsp, remaining=True)
        self._send(rsp)

    def final(
        self,
        status: QRStatus,
        *,
        failed_list: bool = False,
        comment: str | None = None,
        offending: int | None = None,
    ) -> None:
        rsp = self._response(int(status))
        p = self.progress
        if status is QRStatus.CANCEL and p is not None:
            self._counts(rsp, remaining=True)  # PS3.4 C.4.2.3.1: remaining is sent on cancel
        else:
            self._counts(rsp, remaining=False)
        if comment and status not in (QRStatus.SUCCESS, QRStatus.CANCEL):
            cast(Any, rsp).ErrorComment = error_comment(ValueError(comment))
        if offending is not None:
            cast(Any, rsp).OffendingElement = [offending]
        if failed_list and p is not None and p.failed_uids:
            ds = Dataset()
            ds.FailedSOPInstanceUIDList = p.failed_uids
            ts = self.transfer_syntax
            encoded = encode(ds, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
            if encoded is not None:
                rsp.Identifier = BytesIO(encoded)
        self.outcome = {
            QRStatus.SUCCESS: "success",
            QRStatus.CANCEL: "cancelled",
            QRStatus.SUBOPERATIONS_WARNING: "partial",
        }.get(status, "failure")
        self._send(rsp)

    def _send(self, rsp: C_MOVE | C_GET) -> None:
        if self.assoc.is_established:
            self.assoc.dimse.send_msg(rsp, self.context_id)


def _contexts_for(items: Sequence[RetrievableInstance]) -> list[PresentationContext]:
    """For each SOP class: a context with each stored (compressed) syntax on its own, so the
    destination can accept it as it is, and one with the native syntaxes to fall back on."""
    native = [str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)]
    by_class: dict[str, set[str]] = {}
    for item in items:
        by_class.setdefault(item.sop_class_uid, set()).add(item.stored_transfer_syntax)
    contexts: list[PresentationContext] = []
    for sop_class, stored in sorted(by_class.items()):
        contexts.append(build_context(sop_class, native))
    for sop_class, stored in sorted(by_class.items()):
        for ts in sorted(stored - set(NATIVE_TARGETS)):
            if len(contexts) >= _MAX_CONTEXTS:
                break
            contexts.append(build_context(sop_class, [ts]))
    return contexts[:_MAX_CONTEXTS]
