"""Why an identifier cannot be answered: the query branch of the archive's error tree.

Each error carries a human ``reason`` and, where one attribute is at fault, its ``tag`` (the
C-FIND SCP puts it in Offending Element (0000,0901); QIDO-RS names it in the problem detail).
The front doors choose the status; as a guide (PS3.4 C.4.1.1.4 and Table C.4-1):

* :class:`IdentifierError` and its subclasses: the identifier breaks the information model's
  rules -> "Identifier does not match SOP Class" (A900) / HTTP 400.
* :class:`InvalidKeyValue` (bad date, range or UID syntax) -> "Unable to process" (C000-CFFF)
  / HTTP 400.
* :class:`UnsupportedMatching` / :class:`UnsupportedKey`: valid DICOM this archive does not
  answer -> "Unable to process" / HTTP 400 naming the attribute.
"""

from __future__ import annotations

from storage.errors import ArchiveError


def tag_text(tag: int) -> str:
    """``(0010,0010)`` notation of a tag."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class QueryError(ArchiveError):
    """A query identifier the archive refuses; nothing was searched."""

    def __init__(self, reason: str, tag: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.tag = tag


# --- the identifier does not fit the information model -------------------------------------
class IdentifierError(QueryError):
    """The identifier does not follow the information model (PS3.4 C.4.1.1.3.1, C.6)."""


class MissingQueryLevel(IdentifierError):
    """Query/Retrieve Level (0008,0052) is absent or empty (PS3.4 C.4.1.1.3.1)."""


class UnknownQueryLevel(IdentifierError):
    """Query/Retrieve Level names a level the information model does not have."""


class KeyBelowLevel(IdentifierError):
    """A key of a level below the Query/Retrieve Level (PS3.4 C.4.1.2.1: an identifier holds
    keys of its own level and the unique keys of the levels above only)."""


class NonUniqueKeyAbove(IdentifierError):
    """A matching value for a key of a level above that is not that level's unique key, in a
    hierarchical (not relational) query (PS3.4 C.4.1.2.1)."""


class MissingUniqueKey(IdentifierError):
    """The unique key of a level above the query level is absent, or not a single value
    (PS3.4 C.4.1.2.1 hierarchical search: one value per level above)."""


class SequenceKeyError(IdentifierError):
    """A sequence key does not hold exactly one item (PS3.4 C.2.2.2.6)."""


# --- a value the matching rules cannot read ------------------------------------------------
class InvalidKeyValue(QueryError):
    """A key value is not valid for its VR in a query (a malformed date, a wild card in a UID)."""


class InvalidRange(InvalidKeyValue):
    """A range value is malformed or reversed (PS3.4 C.2.2.2.5: ``a-b`` needs a <= b; ranges
    crossing midnight are not supported by the standard)."""


# --- valid DICOM the archive does not answer -----------------------------------------------
class UnsupportedMatching(QueryError):
    """A matching form the archive does not implement (e.g. a DT range with UTC offsets)."""


class UnsupportedKey(QueryError):
    """A matching key the index cannot answer, raised only with ``MatchOptions.strict``;
    otherwise such a key is ignored for matching, and returned only if the index holds it
    (PS3.4 C.2.2.1.3, Optional Keys)."""
