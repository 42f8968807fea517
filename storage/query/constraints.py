"""Matching constraints (pure): one key value of a query identifier, and ``matches(value)``.

Each constraint implements one matching type of PS3.4 C.2.2.2 and says whether an entity's
attribute value (as the index stores it: Unicode NFC text, ``None`` when absent) matches. The
same constraint is compiled to SQL in :mod:`storage.query.sql`; tests check both agree.

Text rules (PS3.4 C.2.2.2.1 and C.2.2.2.4): matching is case-sensitive, except for person
names, where the standard lets the archive be insensitive to case and accents. The rule in
force for a key is a :class:`TextRule`, chosen by :mod:`storage.query.build` from the options.
"""

from __future__ import annotations

import enum
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

from storage.text import fold, nfc


class TextRule(enum.Enum):
    """How characters compare (PS3.4 C.2.2.2.1: case-sensitive except where the standard lets
    person names be matched insensitively to case, accents or other encoding variants)."""

    EXACT = "exact"
    """Code point for code point (after Unicode NFC on both sides)."""
    CASE_INSENSITIVE = "case-insensitive"
    """Each query character matches itself and its one-character case variants."""
    ACCENT_INSENSITIVE = "accent-insensitive"
    """Both sides folded with :func:`storage.text.fold` (accents and case removed, đ -> d)."""


@lru_cache(maxsize=4096)
def case_variants(ch: str) -> frozenset[str]:
    """``ch`` and every character reachable from it by one-character case mappings.

    Mappings that change the length (``ß`` -> ``SS``) are left out, so a case-insensitive
    pattern still matches character for character (the SQL side uses character classes)."""
    seen = {ch}
    todo = [ch]
    while todo:
        current = todo.pop()
        for mapped in (current.lower(), current.upper(), current.title(), current.casefold()):
            if len(mapped) == 1 and mapped not in seen:
                seen.add(mapped)
                todo.append(mapped)
    return frozenset(seen)


def prepare_text(value: str, rule: TextRule) -> str:
    """The query text as it is compared: NFC, or folded for :attr:`TextRule.ACCENT_INSENSITIVE`.

    Wild card characters pass through :func:`storage.text.fold` unchanged."""
    return fold(value) if rule is TextRule.ACCENT_INSENSITIVE else nfc(value)


@lru_cache(maxsize=1024)
def _regex(pattern: str, rule: TextRule, wildcards: bool) -> re.Pattern[str]:
    parts: list[str] = []
    for ch in pattern:
        if wildcards and ch == "*":
            parts.append(".*")
        elif wildcards and ch == "?":
            parts.append(".")
        elif rule is TextRule.CASE_INSENSITIVE and len(variants := case_variants(ch)) > 1:
            parts.append("[" + "".join(re.escape(v) for v in sorted(variants)) + "]")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts), re.DOTALL)


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


class Constraint(ABC):
    """One key's matching rule. ``matches(None)`` (attribute absent) is False unless the
    constraint is universal or asks for an empty value."""

    @property
    def is_universal(self) -> bool:
        return False

    @abstractmethod
    def matches(self, value: object) -> bool:
        """Whether an entity whose attribute holds ``value`` matches."""


@dataclass(frozen=True)
class Universal(Constraint):
    """PS3.4 C.2.2.2.3 Universal Matching: a zero-length value (or ``*``) matches everything;
    the key is only a return key."""

    @property
    def is_universal(self) -> bool:
        return True

    def matches(self, value: object) -> bool:
        return True


@dataclass(frozen=True)
class EmptyValue(Constraint):
    """PS3.4 C.2.2.2 Empty Value Matching: a value of two QUOTATION MARKs (``""``) matches
    entities whose attribute is absent or zero length."""

    def matches(self, value: object) -> bool:
        if value is None:
            return True
        if isinstance(value, (str, bytes, list, tuple)):
            return len(value) == 0
        return False


@dataclass(frozen=True)
class SingleValue(Constraint):
    """PS3.4 C.2.2.2.1 Single Value Matching of a string (text, code, UID, date, time).

    ``value`` is already prepared for ``rule`` (NFC, or folded). Case-sensitive unless the
    rule says otherwise (person names; see :class:`TextRule`)."""

    value: str
    rule: TextRule = TextRule.EXACT

    def matches(self, value: object) -> bool:
        text = _text(value)
        if text is None:
            return False
        if self.rule is TextRule.EXACT:
            return nfc(text) == self.value
        if self.rule is TextRule.ACCENT_INSENSITIVE:
            return fold(text) == self.value
        return _regex(self.value, self.rule, False).fullmatch(nfc(text)) is not None


@dataclass(frozen=True)
class Wildcard(Constraint):
    """PS3.4 C.2.2.2.4 Wild Card Matching (AE, CS, LO, LT, PN, SH, ST, UC, UR, UT): ``*``
    matches any sequence of characters (also none), ``?`` any single character.

    ``pattern`` is prepared for ``rule``; every other character is literal, so SQL LIKE and
    GLOB metacharacters in it (``%``, ``_``, ``[``, ``\\``) match only themselves."""

    pattern: str
    rule: TextRule = TextRule.EXACT

    def matches(self, value: object) -> bool:
        text = _text(value)
        if text is None:
            return False
        prepared = prepare_text(text, self.rule) if self.rule is TextRule.ACCENT_INSENSITIVE else nfc(text)
        return _regex(self.pattern, self.rule, True).fullmatch(prepared) is not None

    @property
    def prefix(self) -> str:
        """The literal characters before the first wild card (what an index can seek on)."""
        return re.split(r"[*?]", self.pattern, maxsplit=1)[0]


@dataclass(frozen=True)
class UIDList(Constraint):
    """PS3.4 C.2.2.2.2 List of UID Matching: a backslash-separated list of UIDs matches an
    entity whose UID is any one of them (one UID is Single Value Matching)."""

    uids: tuple[str, ...]

    def matches(self, value: object) -> bool:
        text = _text(value)
        return text is not None and text in self.uids


@dataclass(frozen=True)
class Number(Constraint):
    """PS3.4 C.2.2.2.1 Single Value Matching of a number (IS, DS, US, UL, SS, SL): numeric
    equality, so ``"007"`` matches 7."""

    value: int | float

    def matches(self, value: object) -> bool:
        if value is None or isinstance(value, bool):
            return False
        try:
            return float(str(value)) == float(self.value)
        except ValueError:
            return False


def successor(bound: str) -> str:
    """The smallest string greater than every string that starts with ``bound``
    (``"1030"`` -> ``"1031"``): ``v < successor(b)`` is ``v[:len(b)] <= b``."""
    return bound[:-1] + chr(ord(bound[-1]) + 1)


@dataclass(frozen=True)
class Range(Constraint):
    """PS3.4 C.2.2.2.5 Range Matching of DA, TM and DT values (``a-b``, ``a-``, ``-b``).

    Values compare as strings, which orders DICOM dates and times chronologically. A bound
    stands for the whole interval its precision names: ``-1030`` includes 10:30:59, and
    ``-2024`` (DT) all of 2024. ``lower`` has its trailing zero components removed (``103000``
    -> ``1030``) so that a less precise stored value at that instant (``1030``) still matches.
    Absent and zero-length values never match a range.
    """

    lower: str | None
    upper: str | None

    def __post_init__(self) -> None:
        if self.lower is None and self.upper is None:
            raise ValueError("a range needs at least one bound")

    @property
    def upper_limit(self) -> str | None:
        """Exclusive upper limit (:func:`successor` of ``upper``)."""
        return successor(self.upper) if self.upper else None

    def matches(self, value: object) -> bool:
        text = _text(value)
        if not text:
            return False
        if self.lower is not None and text < self.lower:
            return False
        limit = self.upper_limit
        return limit is None or text < limit


@dataclass(frozen=True)
class DateTimePair(Constraint):
    """PS3.4 C.2.2.2.5.4 combined date and time Range Matching (an extended negotiation
    option; C.2.2.2.5.2 in older editions): a DA and a TM key with the same form of range
    (e.g. StudyDate ``20240301-20240305`` and StudyTime ``1000-1800``) are matched as one DT
    range over the concatenated values (``202403011000-202403051800``).

    ``matches`` takes the pair ``(date, time)``; a missing time counts as the whole day."""

    range: Range

    def matches(self, value: object) -> bool:
        if not isinstance(value, tuple) or len(value) != 2:
            return False
        date, time = value
        if not date:
            return False
        return self.range.matches(f"{date}{time or ''}")


@dataclass(frozen=True)
class AnyOf(Constraint):
    """PS3.4 C.2.2.2 Multiple Value Matching: a key value with several values (backslash
    separated) matches an entity that matches any one of them."""

    alternatives: tuple[Constraint, ...]

    def matches(self, value: object) -> bool:
        return any(c.matches(value) for c in self.alternatives)


@dataclass(frozen=True)
class SomeValue(Constraint):
    """A multi-valued attribute (ModalitiesInStudy, SOPClassesInStudy) matches when one of its
    values matches ``inner`` (the Study level's Modalities in Study key of PS3.4 C.6: "CT"
    finds a study holding CT and MR). The value is the backslash-joined list the index stores."""

    inner: Constraint

    def matches(self, value: object) -> bool:
        if value is None:
            return False
        values = value if isinstance(value, (list, tuple)) else str(value).split("\\")
        return any(v != "" and self.inner.matches(v) for v in values)


@dataclass(frozen=True)
class SequenceItem(Constraint):
    """PS3.4 C.2.2.2.6 Sequence Matching: the key's one item holds keys; an entity matches
    when one item of its sequence matches every one of them (``fields``: item keyword ->
    constraint). An empty item is Universal Matching of the sequence."""

    fields: tuple[tuple[str, Constraint], ...]

    @property
    def is_universal(self) -> bool:
        return all(c.is_universal for _, c in self.fields)

    def matches(self, value: object) -> bool:
        if self.is_universal:
            return True
        if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
            return False
        return any(
            isinstance(item, Mapping) and all(c.matches(item.get(name)) for name, c in self.fields)
            for item in value
        )
