"""DIMSE statuses by name, and the one table that turns domain errors into them.

C-STORE statuses: PS3.4 B.2.3 (Storage Service Class); general ones: PS3.7 C.
"""

from __future__ import annotations

import enum

from pydicom.dataset import Dataset

from storage.errors import (
    ArchiveError,
    IndexUnavailable,
    MalformedDataset,
    MissingAttribute,
    NotDicom,
    ObjectStoreError,
    ObjectTooLarge,
    SOPClassMismatch,
)


class Status(enum.IntEnum):
    SUCCESS = 0x0000
    # PS3.4 B.2.3: Refused: Out of Resources (A7xx), Error: Data Set does not match SOP Class
    # (A9xx), Error: Cannot understand (Cxxx).
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    # PS3.7 C.5: general failure statuses.
    PROCESSING_FAILURE = 0x0110
    NOT_AUTHORIZED = 0x0124


class QRStatus(enum.IntEnum):
    """Query/Retrieve statuses (PS3.4 C.4.1.1.4 C-FIND, C.4.2.1.5 C-MOVE, C.4.3.1.4 C-GET;
    PS3.7 C.5 for the general ones)."""

    SUCCESS = 0x0000
    PENDING = 0xFF00
    PENDING_WARNING = 0xFF01  # C-FIND: an optional key was not supported for matching
    CANCEL = 0xFE00
    SUBOPERATIONS_WARNING = 0xB000  # sub-operations complete, one or more failures or warnings
    OUT_OF_RESOURCES = 0xA700
    UNABLE_TO_CALCULATE_MATCHES = 0xA701
    UNABLE_TO_PERFORM_SUBOPERATIONS = 0xA702
    MOVE_DESTINATION_UNKNOWN = 0xA801
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    UNABLE_TO_PROCESS = 0xC000
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    NOT_AUTHORIZED = 0x0124


# The translation table: the first matching class wins, so subclasses come first.
_TABLE: tuple[tuple[type[ArchiveError], Status], ...] = (
    (ObjectTooLarge, Status.OUT_OF_RESOURCES),
    (SOPClassMismatch, Status.DATASET_DOES_NOT_MATCH_SOP_CLASS),
    (NotDicom, Status.CANNOT_UNDERSTAND),
    (MalformedDataset, Status.CANNOT_UNDERSTAND),
    (MissingAttribute, Status.CANNOT_UNDERSTAND),
    # Transient: the store or the index is down; the modality should retry later.
    (ObjectStoreError, Status.OUT_OF_RESOURCES),
    (IndexUnavailable, Status.OUT_OF_RESOURCES),
)


def status_for(exc: BaseException) -> Status:
    """The DIMSE status for a failure; anything unexpected is a processing failure."""
    for cls, status in _TABLE:
        if isinstance(exc, cls):
            return status
    return Status.PROCESSING_FAILURE


def error_comment(exc: BaseException) -> str:
    """The Error Comment (0000,0902): LO, at most 64 characters, ASCII."""
    text = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    # LO excludes control characters and the value separator "\\" (PS3.5 6.2).
    text = " ".join(text.replace("\\", "/").split())
    return text.encode("ascii", "replace").decode("ascii")[:64]


def failure_response(status: int, exc: BaseException, *, offending: int | None = None) -> Dataset:
    """The status dataset a handler returns for a failure: Status, Error Comment and, when
    one attribute is at fault, Offending Element."""
    rsp = Dataset()
    rsp.Status = int(status)
    rsp.ErrorComment = error_comment(exc)
    if offending is not None:
        rsp.OffendingElement = [offending]
    return rsp
