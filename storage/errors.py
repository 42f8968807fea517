"""The archive's domain error tree.

Everything the archive core raises is a :class:`ArchiveError`. The two front doors translate
these, and only these, into protocol answers: ``dicom_node/status.py`` into DIMSE statuses and
``viewer_api/errors.py`` into HTTP problems. Adapters (object stores, the SQL index) translate
vendor exceptions into this tree at their boundary, so no ``sqlalchemy`` or ``OSError`` detail
leaks into the core's callers.
"""

from __future__ import annotations


class ArchiveError(Exception):
    """Base of every error the archive core raises on purpose."""


# --- the object store -------------------------------------------------------------------------
class ObjectStoreError(ArchiveError):
    """The object store failed (I/O error, full disk, unreachable server)."""


class ObjectNotFound(ObjectStoreError):
    """No object is stored under that key."""


class ObjectStoreUnreachable(ObjectStoreError):
    """The object store did not answer, or answered that it cannot serve now (connection
    refused or lost, timeout, HTTP 5xx): worth retrying later, unlike a configuration error
    (a missing bucket, refused credentials)."""


# --- the index --------------------------------------------------------------------------------
class IndexUnavailable(ArchiveError):
    """The metadata index failed (database unreachable, locked, corrupt)."""


class IndexConflict(IndexUnavailable):
    """A concurrent transaction got in the way (a deadlock or serialization failure the
    database resolved by aborting this one): the same transaction may succeed if tried again."""


class IndexCommitUncertain(IndexUnavailable):
    """The index failed while committing (the connection was lost waiting for the answer):
    the transaction may or may not have been committed. What it would reference must be kept
    until the index can be asked again."""


class InstanceAlreadyExists(ArchiveError):
    """An instance with that SOP Instance UID is already indexed (a lost race on insert)."""


# --- what a sender gave us ----------------------------------------------------------------------
class RejectedInstance(ArchiveError):
    """The received object is refused; nothing was stored.

    ``reason`` is a short human sentence that goes to the log and to import summaries.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotDicom(RejectedInstance):
    """The bytes are not a DICOM dataset at all."""


class MalformedDataset(RejectedInstance):
    """The bytes start as DICOM but cannot be parsed completely (truncated, bad lengths)."""


class MissingAttribute(RejectedInstance):
    """A required attribute (Study/Series/SOP Instance UID, SOP Class UID) is absent or empty."""


class SOPClassMismatch(RejectedInstance):
    """The dataset's SOP Class/Instance UID does not match the DIMSE request or context."""


class ObjectTooLarge(RejectedInstance):
    """The object exceeds the configured maximum size."""


# --- codecs -----------------------------------------------------------------------------------
class CodecError(ArchiveError):
    """Pixel data could not be encoded, decoded or verified."""
