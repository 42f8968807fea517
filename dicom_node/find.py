"""C-FIND SCP (PS3.4 C.4.1): Patient Root and Study Root Query/Retrieve Information Models.

A thin adapter over :mod:`storage.query`: the identifier becomes a :class:`Query`, the index
answers it, and each match goes back as a pending response with Specific Character Set
ISO_IR 192 (or, for AEs registered as ASCII-only, transliterated to plain ASCII).

- C-CANCEL is honoured between two matches (final status Cancel, FE00).
- At most ``max_matches`` matches are returned: the query then ends with "Refused: Out of
  resources" (A700) and an Error Comment saying the list was cut, after the first matches.
- Identifiers that break the model's rules fail with "Identifier does not match SOP Class"
  (A900) or "Unable to process" (C000), naming the attribute in Offending Element.
- SOP Class Extended Negotiation (PS3.4 C.5.1.1.1): relational queries, combined date-time
  matching and fuzzy semantic matching of person names are accepted when proposed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pynetdicom.events import Event

from dicom_node.access import NotAuthorized, Peer, require
from dicom_node.status import QRStatus as Status, failure_response
from storage.errors import ArchiveError
from storage.index import Index
from storage.query import (
    PATIENT_ROOT,
    STUDY_ROOT,
    IdentifierError,
    InformationModel,
    MatchOptions,
    QueryError,
    build_query,
)
from storage.text import transliterate

log = logging.getLogger("filmless.dicom.find")

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
MODELS: dict[str, InformationModel] = {PATIENT_ROOT_FIND: PATIENT_ROOT, STUDY_ROOT_FIND: STUDY_ROOT}

PENDING = int(Status.PENDING)
PENDING_WARNING = int(Status.PENDING_WARNING)
CANCEL = int(Status.CANCEL)

_TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC"})


def handle_sop_extended(event: Event) -> dict[str, bytes]:
    """Accept the C-FIND extended negotiation we implement (PS3.4 C.5.1.1.1, Table C.5-1):
    byte 1 relational-queries, byte 2 combined date-time matching, byte 3 fuzzy semantic
    matching of person names; byte 4 (timezone query adjustment) is declined."""
    accepted: dict[str, bytes] = {}
    for uid, info in (getattr(event, "app_info", None) or {}).items():
        if str(uid) not in MODELS or not info:
            continue
        reply = bytearray(info[:3])
        reply.extend(b"\x00" * (3 - len(reply)))
        accepted[str(uid)] = bytes(1 if b else 0 for b in reply)
    return accepted


def negotiated_options(event: Event, sop_class_uid: str) -> tuple[bool, bool]:
    """(relational, combined date-time) as agreed for ``sop_class_uid`` on this association."""
    try:
        info = event.assoc.acceptor.sop_class_extended.get(UID(sop_class_uid)) or b""
    except Exception:  # noqa: BLE001 - no extended negotiation happened
        info = b""
    relational = len(info) > 0 and info[0] == 1
    combined = len(info) > 1 and info[1] == 1
    return relational, combined


class FindService:
    """The C-FIND handler, bound to EVT_C_FIND."""

    def __init__(self, index: Index, *, ae_title: str, max_matches: int) -> None:
        self.index = index
        self.ae_title = ae_title
        self.max_matches = max_matches

    def handle(self, event: Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        # pynetdicom stops iterating at the first final (non-pending) status: anything to do
        # at the end (the audit event) happens before that yield.
        started = time.perf_counter()
        request = event.request
        sop_class = str(request.AffectedSOPClassUID)
        try:
            peer = require(event.assoc, "find")
        except NotAuthorized as exc:
            yield failure_response(Status.NOT_AUTHORIZED, exc), None
            return
        audit: dict[str, Any] = {"model": sop_class}
        model = MODELS.get(sop_class)
        if model is None:
            log.warning("C-FIND for unsupported SOP class %s from %s", sop_class, peer.ae_title)
            self._audit(peer, "failure", audit, "SOP class not supported")
            yield failure_response(Status.SOP_CLASS_NOT_SUPPORTED, ValueError("SOP class not supported")), None
            return
        try:
            identifier = event.identifier
            audit["keys"] = _keys_for_audit(identifier)
            relational, combined = negotiated_options(event, sop_class)
            options = MatchOptions(
                retrieve_ae_title=self.ae_title, relational=relational, combined_datetime=combined
            )
            query = build_query(identifier, model, options)
            audit["level"] = str(query.level)
            limit = self.max_matches or None
            with self.index.read() as conn:
                rows = conn.execute(query.select(limit=limit + 1 if limit else None)).fetchall()
            responses = [query.response(cast(Mapping[str, Any], row._mapping)) for row in rows[: limit or len(rows)]]
        except QueryError as exc:
            status = (
                Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS if isinstance(exc, IdentifierError) else Status.UNABLE_TO_PROCESS
            )
            log.warning("C-FIND from %s@%s refused (%s): %s", peer.ae_title, peer.host, status.name, exc.reason)
            self._audit(peer, "failure", audit, exc.reason)
            yield failure_response(status, exc, offending=exc.tag), None
            return
        except ArchiveError as exc:
            log.error("C-FIND from %s@%s failed: %s", peer.ae_title, peer.host, exc)
            self._audit(peer, "failure", audit, str(exc))
            yield failure_response(Status.OUT_OF_RESOURCES, exc), None
            return
        except Exception as exc:  # noqa: BLE001 - a bad identifier or a bug: answer, never hang
            log.exception("C-FIND from %s@%s failed unexpectedly", peer.ae_title, peer.host)
            self._audit(peer, "failure", audit, f"{type(exc).__name__}: {exc}")
            yield failure_response(Status.UNABLE_TO_PROCESS, exc), None
            return

        pending = PENDING_WARNING if any("not matched" in i.reason for i in query.ignored) else PENDING
        cut = limit is not None and len(rows) > limit
        sent = 0
        for response in responses:
            if event.is_cancelled:
                log.info("C-FIND from %s@%s cancelled after %d matches", peer.ae_title, peer.host, sent)
                self._audit(peer, "cancelled", audit, None, matches=sent, started=started)
                yield CANCEL, None
                return
            if peer.ascii_only:
                response = _ascii(response)
            yield pending, response
            sent += 1
        if cut:
            reason = f"more than {limit} matches: the first {limit} were sent; narrow the query"
            log.warning("C-FIND from %s@%s: %s", peer.ae_title, peer.host, reason)
            self._audit(peer, "truncated", audit, reason, matches=sent, started=started)
            yield failure_response(Status.OUT_OF_RESOURCES, ValueError(reason)), None
            return
        self._audit(peer, "success", audit, None, matches=sent, started=started)
        yield int(Status.SUCCESS), None

    def _audit(
        self,
        peer: Peer,
        outcome: str,
        detail: dict[str, Any],
        reason: str | None,
        *,
        matches: int | None = None,
        started: float | None = None,
    ) -> None:
        if reason:
            detail["reason"] = reason
        if matches is not None:
            detail["matches"] = matches
        if started is not None:
            detail["ms"] = round((time.perf_counter() - started) * 1000, 1)
        try:
            self.index.record_audit("dicom.find", outcome, actor=peer.ae_title, actor_host=peer.host, detail=detail)
        except Exception:  # noqa: BLE001 - the answer was given; the failure is logged
            log.exception("could not write the audit event of a C-FIND from %s", peer.ae_title)


def _keys_for_audit(identifier: Dataset) -> dict[str, str]:
    """The identifier's non-empty keys, as text (what was searched for)."""
    keys: dict[str, str] = {}
    for elem in identifier:
        if elem.VR == "SQ" or elem.tag.group in (0x0000, 0x0002) or elem.value in (None, "", b""):
            continue
        keys[elem.keyword or str(elem.tag)] = str(elem.value)[:200]
    return keys


def _ascii(response: Dataset) -> Dataset:
    """The response in the default character repertoire (no Specific Character Set)."""
    out = Dataset()
    for elem in response:
        if elem.tag == 0x00080005:
            continue
        if elem.VR == "SQ":
            elem.value = [_ascii(item) for item in elem.value]
        elif elem.VR in _TEXT_VRS and elem.value not in (None, ""):
            if isinstance(elem.value, (list, tuple, MultiValue)):
                elem.value = [transliterate(str(v)) for v in elem.value]
            else:
                elem.value = transliterate(str(elem.value))
        out.add(elem)
    return out
