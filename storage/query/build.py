"""From a query identifier (a pydicom Dataset) to a :class:`Query` (pure, no database).

:func:`build_query` reads the Query/Retrieve Level, checks the identifier against the
information model's hierarchy (PS3.4 C.4.1.2.1 and C.6: keys of the query level, the unique
keys of the levels above with one value each, nothing of the levels below), turns each key
value into a constraint (PS3.4 C.2.2.2) and records which attributes to return.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from storage.query.constraints import (
    Constraint,
    DateTimePair,
    EmptyValue,
    SequenceItem,
    SingleValue,
    SomeValue,
    TextRule,
    UIDList,
    Universal,
)
from storage.query.errors import (
    KeyBelowLevel,
    MissingQueryLevel,
    MissingUniqueKey,
    NonUniqueKeyAbove,
    SequenceKeyError,
    UnknownQueryLevel,
    UnsupportedKey,
    tag_text,
)
from storage.query.identifier import element_text, has_value, keyword_of, vr_of
from storage.query.keys import (
    COMMON_KEYS,
    DATE_TIME_PAIRS,
    QUERY_RETRIEVE_LEVEL,
    SPECIFIC_CHARACTER_SET,
    InformationModel,
    KeySpec,
    QueryLevel,
)
from storage.query.parse import WILDCARD_VRS, make_range, parse_range, parse_value, trim_lower

if TYPE_CHECKING:
    from sqlalchemy import Select
    from sqlalchemy.sql.elements import ColumnElement

@dataclass(frozen=True)
class MatchOptions:
    """How the archive matches; the front doors set these from configuration and from what
    the association negotiated."""

    pn_case_insensitive: bool = True
    """Person names ignore case (PS3.4 C.2.2.2.1 allows it for PN only)."""
    pn_accent_insensitive: bool = True
    """Person names ignore accents and case, through the index's ``*_folded`` keys
    (``nguyen*`` finds ``Nguyễn^Văn Đức``); a PN key without a folded column falls back to
    case-insensitive matching."""
    case_insensitive_keywords: frozenset[str] = frozenset()
    """Other text keys (AE, CS, LO, LT, SH, ST, UC, UR, UT VRs) to match case-insensitively,
    by keyword; the standard's default for them is case-sensitive (PS3.4 C.2.2.2.1)."""
    combined_datetime: bool = False
    """Combined date and time Range Matching (PS3.4 C.2.2.2.5.4; C-FIND extended negotiation)."""
    relational: bool = False
    """Relational queries (extended negotiation; QIDO-RS behaves so): no unique keys needed
    above the query level, and keys of the levels above may be matched."""
    empty_value_matching: bool = True
    """``""`` matches empty values (PS3.4 C.2.2.2, Empty Value Matching)."""
    multiple_value_matching: bool = True
    """Backslash-separated values match any one of them (PS3.4 C.2.2.2, Multiple Value Matching)."""
    strict: bool = False
    """Refuse identifiers the archive would otherwise answer leniently: unsupported matching
    keys (:class:`UnsupportedKey`) and empty keys of other levels."""
    retrieve_ae_title: str | None = None
    """Returned as Retrieve AE Title (0008,0054) when the identifier asks for it."""

    def rule_for(self, keyword: str, vr: str, *, folded: bool = False) -> TextRule:
        """The text rule of a key (PS3.4 C.2.2.2.1 and C.2.2.2.4)."""
        if vr == "PN":
            if self.pn_accent_insensitive:
                return TextRule.ACCENT_INSENSITIVE if folded else TextRule.CASE_INSENSITIVE
            return TextRule.CASE_INSENSITIVE if self.pn_case_insensitive else TextRule.EXACT
        if vr in WILDCARD_VRS and keyword in self.case_insensitive_keywords:
            return TextRule.CASE_INSENSITIVE
        return TextRule.EXACT


@dataclass(frozen=True)
class Condition:
    """A constraint on one key, or on a DA/TM pair matched as one range."""

    keys: tuple[KeySpec, ...]
    constraint: Constraint

    def matches(self, record: Mapping[str, object]) -> bool:
        """``record`` maps keywords to values as the index stores them."""
        if len(self.keys) == 1:
            return self.constraint.matches(record.get(self.keys[0].keyword))
        return self.constraint.matches(tuple(record.get(k.keyword) for k in self.keys))


@dataclass(frozen=True)
class ReturnKey:
    """An attribute asked for in the identifier (``key`` is None outside the model). Keys the
    index does not hold (no ``key``, or no column) are not returned (PS3.4 C.2.2.1.3).
    ``item_keywords`` name the item keys a sequence returns (empty: every key the index holds)."""

    tag: int
    keyword: str
    vr: str
    key: KeySpec | None = None
    item_keywords: tuple[str, ...] = ()


@dataclass(frozen=True)
class IgnoredKey:
    """A key that was not used for matching, and why (for logs and QIDO-RS warnings)."""

    tag: int
    reason: str


@dataclass(frozen=True)
class Query:
    """A checked query: the level, the constraints and the return keys."""

    model: InformationModel
    level: QueryLevel
    conditions: tuple[Condition, ...]
    return_keys: tuple[ReturnKey, ...]
    options: MatchOptions
    ignored: tuple[IgnoredKey, ...] = ()

    def matches(self, record: Mapping[str, object]) -> bool:
        """Whether an entity (keywords -> stored values) matches every condition."""
        return all(c.matches(record) for c in self.conditions)

    def where(self) -> list[ColumnElement[bool]]:
        """The SQL where-clauses of the conditions (see :mod:`storage.query.sql`)."""
        from storage.query.sql import where_clauses

        return where_clauses(self)

    def select(self, *, limit: int | None = None, offset: int | None = None) -> Select[Any]:
        """The SELECT of the return keys over the joined index tables of the level."""
        from storage.query.sql import select_for

        return select_for(self, limit=limit, offset=offset)

    def response(self, row: Mapping[str, Any]) -> Dataset:
        """A response identifier from one row of :meth:`select`."""
        from storage.query.response import response_identifier

        return response_identifier(self, row)


DEFAULT_OPTIONS = MatchOptions()


class _Builder:
    def __init__(self, identifier: Dataset, model: InformationModel, options: MatchOptions) -> None:
        self.ds = identifier
        self.model = model
        self.options = options
        self.level_index = self._level_index()
        self.conditions: list[Condition] = []
        self.returns: dict[int, ReturnKey] = {}
        self.ignored: list[IgnoredKey] = []
        self.single_above: set[int] = set()

    def _level_index(self) -> int:
        text = element_text(self.ds, QUERY_RETRIEVE_LEVEL, "CS").strip()
        if not text:
            raise MissingQueryLevel("Query/Retrieve Level (0008,0052) is missing", QUERY_RETRIEVE_LEVEL)
        try:
            level = QueryLevel(text)
        except ValueError:
            raise UnknownQueryLevel(f"unknown Query/Retrieve Level {text[:20]!r}", QUERY_RETRIEVE_LEVEL) from None
        index = self.model.index_of(level)
        if index is None:
            raise UnknownQueryLevel(f"the {self.model.name} model has no {level} level", QUERY_RETRIEVE_LEVEL)
        return index

    def _ignore(self, tag: int, reason: str) -> None:
        if self.options.strict:
            raise UnsupportedKey(f"{keyword_of(tag)} {tag_text(tag)}: {reason}", tag)
        self.ignored.append(IgnoredKey(tag, reason))

    def build(self) -> Query:
        combined = self._combined_pairs()
        for element_tag in sorted(self.ds.keys()):
            tag = int(element_tag)
            if tag >> 16 in (0x0000, 0x0002) or tag & 0xFFFF == 0:
                continue  # command, file meta and group length elements
            if tag in (SPECIFIC_CHARACTER_SET, QUERY_RETRIEVE_LEVEL):
                continue
            if Tag(tag).is_private_creator:
                continue
            if Tag(tag).is_private:
                if has_value(self.ds, tag):
                    self._ignore(tag, "private attributes are not matched")
                continue
            self._key(tag, combined)
        for condition in combined.values():
            if not any(c is condition for c in self.conditions):
                self.conditions.append(condition)
        self._check_unique_keys_above()
        level = self.model.levels[self.level_index]
        return Query(
            model=self.model,
            level=level.level,
            conditions=tuple(self.conditions),
            return_keys=tuple(self.returns[t] for t in sorted(self.returns)),
            options=self.options,
            ignored=tuple(self.ignored),
        )

    def _key(self, tag: int, combined: Mapping[int, Condition]) -> None:
        located = self.model.locate(tag)
        if located is None:
            self.returns[tag] = ReturnKey(tag, keyword_of(tag), vr_of(tag))
            if tag not in COMMON_KEYS and has_value(self.ds, tag):
                self._ignore(tag, f"not a key of the {self.model.name} model")
            elif tag in COMMON_KEYS and has_value(self.ds, tag):
                self._ignore(tag, "answered from configuration, not matched")
            return
        index, key = located
        if index > self.level_index:
            if has_value(self.ds, tag) or self.options.strict:
                level = self.model.levels[index].level
                raise KeyBelowLevel(
                    f"{key.keyword} {tag_text(tag)} is a {level} key, below the query level "
                    f"{self.model.levels[self.level_index].level}",
                    tag,
                )
            self.ignored.append(IgnoredKey(tag, "a key of a lower level; not returned"))
            return
        item_keywords: tuple[str, ...] = ()
        if tag in combined:
            constraint = combined[tag].constraint
        elif key.vr == "SQ":
            constraint, item_keywords = self._sequence(key)
        else:
            rule = self.options.rule_for(key.keyword, key.vr, folded=key.folded is not None)
            constraint = parse_value(
                element_text(self.ds, tag, key.vr),
                key.vr,
                rule=rule,
                tag=tag,
                empty_value_matching=self.options.empty_value_matching,
                multiple_value_matching=self.options.multiple_value_matching,
            )
            if key.children is not None and not constraint.is_universal and not isinstance(constraint, EmptyValue):
                constraint = SomeValue(constraint)
        if index < self.level_index:
            self._check_above(index, key, constraint)
        self.returns[tag] = ReturnKey(tag, key.keyword, key.vr, key, item_keywords)
        if constraint.is_universal or tag in combined:
            return
        if not key.can_match:
            self._ignore(tag, "the index does not hold this attribute; not matched")
            return
        self.conditions.append(Condition((key,), constraint))

    def _check_above(self, index: int, key: KeySpec, constraint: Constraint) -> None:
        """PS3.4 C.4.1.2.1: above the query level, only unique keys, each with one value."""
        if self.options.relational:
            return
        level = self.model.levels[index]
        if key.tag == level.unique.tag:
            single = isinstance(constraint, SingleValue) or (
                isinstance(constraint, UIDList) and len(constraint.uids) == 1
            )
            if not single:
                raise MissingUniqueKey(
                    f"{key.keyword} {tag_text(key.tag)} must hold a single value above the query level", key.tag
                )
            self.single_above.add(index)
        elif not constraint.is_universal or self.options.strict:
            raise NonUniqueKeyAbove(
                f"{key.keyword} {tag_text(key.tag)} is a {level.level} key but not its unique key; "
                "only unique keys may be matched above the query level",
                key.tag,
            )

    def _check_unique_keys_above(self) -> None:
        for index in range(self.level_index + 1):
            unique = self.model.levels[index].unique
            if index < self.level_index and not self.options.relational and index not in self.single_above:
                raise MissingUniqueKey(
                    f"{unique.keyword} {tag_text(unique.tag)} is required with a single value for a "
                    f"{self.model.levels[self.level_index].level} query",
                    unique.tag,
                )
            # The unique keys of the query level and above are always returned.
            self.returns.setdefault(unique.tag, ReturnKey(unique.tag, unique.keyword, unique.vr, unique))

    def _sequence(self, key: KeySpec) -> tuple[Constraint, tuple[str, ...]]:
        """PS3.4 C.2.2.2.6: a sequence key holds one item, whose keys are matched (an empty
        item, or no item, is Universal Matching)."""
        items = list(self.ds[key.tag].value or [])
        if not items:
            return Universal(), ()
        if len(items) > 1:
            raise SequenceKeyError(f"{key.keyword} {tag_text(key.tag)} must hold exactly one item", key.tag)
        item = items[0]
        fields: list[tuple[str, Constraint]] = []
        requested: list[str] = []
        for element_tag in sorted(item.keys()):
            item_tag = int(element_tag)
            if item_tag & 0xFFFF == 0:
                continue
            item_key = key.items.item_key(keyword_for_tag(item_tag)) if key.items is not None else None
            if item_key is None:
                if has_value(item, item_tag):
                    self._ignore(key.tag, f"item key {keyword_of(item_tag)} {tag_text(item_tag)} is not matched")
                continue
            requested.append(item_key.keyword)
            rule = self.options.rule_for(item_key.keyword, item_key.vr)
            constraint = parse_value(
                element_text(item, item_tag, item_key.vr),
                item_key.vr,
                rule=rule,
                tag=item_tag,
                empty_value_matching=self.options.empty_value_matching,
                multiple_value_matching=self.options.multiple_value_matching,
            )
            fields.append((item_key.keyword, constraint))
        sequence = SequenceItem(tuple(fields))
        return (Universal() if sequence.is_universal else sequence), tuple(requested)

    def _combined_pairs(self) -> dict[int, Condition]:
        """PS3.4 C.2.2.2.5.4: a DA and a TM key both holding the same form of range become one
        range over the concatenated values (only with the combined datetime option)."""
        combined: dict[int, Condition] = {}
        if not self.options.combined_datetime:
            return combined
        for date_keyword, time_keyword in DATE_TIME_PAIRS:
            date_loc = self.model.locate(int(Tag(date_keyword)))
            time_loc = self.model.locate(int(Tag(time_keyword)))
            if date_loc is None or time_loc is None or date_loc[0] != time_loc[0]:
                continue
            date_key, time_key = date_loc[1], time_loc[1]
            if date_key.tag not in self.ds or time_key.tag not in self.ds:
                continue
            if not (date_key.can_match and time_key.can_match):
                continue
            date_text = element_text(self.ds, date_key.tag, "DA").strip()
            time_text = element_text(self.ds, time_key.tag, "TM").strip()
            dates = parse_range(date_text, "DA", date_key.tag) if date_text else None
            times = parse_range(time_text, "TM", time_key.tag) if time_text else None
            if dates is None or times is None:
                continue
            if (dates[0] is None, dates[1] is None) != (times[0] is None, times[1] is None):
                continue  # different forms: matched separately
            if dates == (None, None):
                continue
            lower = trim_lower(f"{dates[0]}{times[0]}", "DT") if dates[0] else None
            upper = f"{dates[1]}{times[1]}" if dates[1] else None
            pair = DateTimePair(make_range(lower, upper, "DT", date_key.tag, text=f"{date_text} {time_text}"))
            condition = Condition((date_key, time_key), pair)
            combined[date_key.tag] = combined[time_key.tag] = condition
        return combined


def build_query(
    identifier: Dataset,
    model: InformationModel,
    options: MatchOptions = DEFAULT_OPTIONS,
) -> Query:
    """Check ``identifier`` against ``model`` and turn it into a :class:`Query`.

    Raises a :class:`storage.query.errors.QueryError`: :class:`MissingQueryLevel`,
    :class:`UnknownQueryLevel`, :class:`KeyBelowLevel`, :class:`NonUniqueKeyAbove`,
    :class:`MissingUniqueKey`, :class:`SequenceKeyError` (the identifier breaks the model's
    rules), :class:`InvalidKeyValue` / :class:`InvalidRange` (a value's syntax),
    :class:`UnsupportedMatching` or, with ``options.strict``, :class:`UnsupportedKey`.
    """
    return _Builder(identifier, model, options).build()
