"""Reading one key value of a query identifier into a :class:`Constraint` (pure).

Which matching type applies follows from the VR and the value (PS3.4 C.2.2.2): an empty value
is Universal Matching, ``""`` Empty Value Matching, ``*``/``?`` in a text VR Wild Card
Matching, ``a-b`` in DA/TM/DT Range Matching, backslashes in a UI List of UID Matching (in
other VRs Multiple Value Matching), anything else Single Value Matching.
"""

from __future__ import annotations

import datetime as dt
import re

from storage.query.constraints import (
    AnyOf,
    Constraint,
    EmptyValue,
    Number,
    Range,
    SingleValue,
    TextRule,
    UIDList,
    Universal,
    Wildcard,
    prepare_text,
    successor,
)
from storage.query.errors import InvalidKeyValue, InvalidRange, UnsupportedMatching, tag_text

WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
"""VRs that take Wild Card Matching (PS3.4 C.2.2.2.4)."""
DATE_TIME_VRS = frozenset({"DA", "TM", "DT"})
"""VRs that take Range Matching (PS3.4 C.2.2.2.5)."""
INTEGER_VRS = frozenset({"IS", "US", "UL", "SS", "SL", "SV", "UV"})
DECIMAL_VRS = frozenset({"DS", "FL", "FD"})
SINGLE_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})
"""VRs whose value is one text in which a backslash is content, not a value separator; only
trailing spaces are padding (PS3.5 6.2)."""

_TM = r"(?:[01]\d|2[0-3])(?:[0-5]\d(?:(?:[0-5]\d|60)(?:\.\d{1,6})?)?)?"
_DT = rf"\d{{4}}(?:(?:0[1-9]|1[0-2])(?:(?:0[1-9]|[12]\d|3[01])(?:{_TM})?)?)?"
_OFFSET = r"[+-](?:0\d|1[0-4])[0-5]\d"  # -12:00 to +14:00 in practice
_SINGLE = {
    "DA": re.compile(r"\d{8}"),
    "TM": re.compile(_TM),
    "DT": re.compile(rf"(?P<value>{_DT})(?P<offset>{_OFFSET})?"),
}
_DT_RANGE = re.compile(rf"(?P<lo>{_DT})?(?P<lo_offset>{_OFFSET})?\s*-\s*(?P<hi>{_DT})?(?P<hi_offset>{_OFFSET})?")
_UID = re.compile(r"(?:0|[1-9]\d*)(?:\.(?:0|[1-9]\d*))*")


def _where(tag: int | None) -> str:
    return f" in {tag_text(tag)}" if tag is not None else ""


def _check_calendar(value: str, tag: int | None) -> None:
    """The YYYYMMDD part of a DA or DT, when it is complete, names a real day."""
    if len(value) >= 8:
        try:
            dt.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
        except ValueError:
            raise InvalidKeyValue(f"{value[:8]!r} is not a calendar date{_where(tag)}", tag) from None


def _single_date_time(value: str, vr: str, tag: int | None) -> str:
    match = _SINGLE[vr].fullmatch(value)
    if match is None:
        raise InvalidKeyValue(f"{value!r} is not a valid {vr} value{_where(tag)}", tag)
    if vr == "DT" and match.group("offset"):
        raise UnsupportedMatching(f"DT values with a UTC offset are not supported{_where(tag)}", tag)
    if vr in ("DA", "DT"):
        _check_calendar(value, tag)
    return value


def trim_lower(bound: str, vr: str) -> str:
    """A lower bound without trailing zero components (``103000.000`` -> ``1030``): the same
    instant, and also a lower bound for stored values of less precision (``1030``)."""
    if vr == "DA":
        return bound
    if "." in bound:
        bound = bound.rstrip("0").rstrip(".")
    shortest = 2 if vr == "TM" else 8
    while len(bound) > shortest and bound.endswith("00"):
        bound = bound[:-2]
    return bound


def parse_range(value: str, vr: str, tag: int | None = None) -> tuple[str | None, str | None] | None:
    """The bounds of a range value of a DA, TM or DT key (PS3.4 C.2.2.2.5), as written (not yet
    trimmed or checked for order); None when ``value`` is not a range."""
    if vr == "DT":
        # "-" is both the range separator and a UTC offset sign: "2024-2025" is read as a
        # range, "20240301-0700" (which would be a reversed range) as one DT with an offset.
        match = _DT_RANGE.fullmatch(value)
        with_offset = match is not None and bool(match.group("lo_offset") or match.group("hi_offset"))
        if match is not None and not with_offset:
            lo, hi = match.group("lo"), match.group("hi")
            reversed_ = lo is not None and hi is not None and not trim_lower(lo, vr) < successor(hi)
            if reversed_ and _SINGLE["DT"].fullmatch(value):
                return None
        elif _SINGLE["DT"].fullmatch(value):
            return None
        elif with_offset:
            raise UnsupportedMatching(f"DT ranges with a UTC offset are not supported{_where(tag)}", tag)
        elif "-" in value:
            raise InvalidRange(f"{value!r} is not a valid DT range{_where(tag)}", tag)
        else:
            raise InvalidKeyValue(f"{value!r} is not a valid DT value{_where(tag)}", tag)
    else:
        if "-" not in value:
            return None
        if value.count("-") > 1:
            raise InvalidRange(f"{value!r} is not a valid {vr} range{_where(tag)}", tag)
        lo, hi = (part.strip() or None for part in value.split("-"))
    for bound in (lo, hi):
        if bound is not None:
            try:
                _single_date_time(bound, vr, tag)
            except InvalidKeyValue as exc:
                raise InvalidRange(f"{value!r} is not a valid {vr} range{_where(tag)}: {exc.reason}", tag) from None
    return lo, hi


def make_range(lo: str | None, hi: str | None, vr: str, tag: int | None = None, *, text: str = "") -> Range:
    """A :class:`Range` from parsed bounds; a reversed range is an error (PS3.4 C.2.2.2.5:
    ``a-b`` needs a <= b; a TM range cannot cross midnight)."""
    lower = trim_lower(lo, vr) if lo else None
    if lower is not None and hi is not None and not lower < successor(hi):
        raise InvalidRange(f"range {text or f'{lo}-{hi}'!r} ends before it starts{_where(tag)}", tag)
    return Range(lower, hi)


def _date_time(value: str, vr: str, tag: int | None) -> Constraint:
    if value == "*":
        return Universal()  # lenient: "*" is universal in every VR
    bounds = parse_range(value, vr, tag)
    if bounds is None:
        return SingleValue(_single_date_time(value, vr, tag))
    lo, hi = bounds
    if lo is None and hi is None:
        return Universal()  # "-": no bound at all
    return make_range(lo, hi, vr, tag, text=value)


def _uids(value: str, tag: int | None) -> Constraint:
    if value == "*":
        return Universal()
    uids = [part.strip(" \x00") for part in value.split("\\")]
    uids = [uid for uid in uids if uid]
    if not uids:
        return Universal()
    for uid in uids:
        if "*" in uid or "?" in uid:
            raise InvalidKeyValue(f"wild cards are not allowed in a UID{_where(tag)}", tag)
        if len(uid) > 64 or not _UID.fullmatch(uid):
            raise InvalidKeyValue(f"{uid[:80]!r} is not a valid UID{_where(tag)}", tag)
    return UIDList(tuple(dict.fromkeys(uids)))


def _number(value: str, vr: str, tag: int | None) -> Constraint:
    if value == "*":
        return Universal()
    try:
        return Number(int(value) if vr in INTEGER_VRS else float(value))
    except ValueError:
        raise InvalidKeyValue(f"{value!r} is not a valid {vr} value{_where(tag)}", tag) from None


def normalise_person_name(value: str) -> str:
    """A PN value without the empty trailing components and groups PS3.5 6.2.1.1 allows, as
    the index stores it (``Nguyễn^Văn Đức^^`` -> ``Nguyễn^Văn Đức``)."""
    groups = [g.rstrip("^ ") for g in value.split("=")]
    while len(groups) > 1 and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def _text_value(value: str, vr: str, rule: TextRule) -> Constraint:
    if set(value) == {"*"}:
        return Universal()  # PS3.4 C.2.2.2.4: "*" is equivalent to Universal Matching
    if "*" in value or "?" in value:
        return Wildcard(prepare_text(value, rule), rule)
    if vr == "PN":
        value = normalise_person_name(value)
    return SingleValue(prepare_text(value, rule), rule)


def parse_value(
    value: str,
    vr: str,
    *,
    rule: TextRule = TextRule.EXACT,
    tag: int | None = None,
    empty_value_matching: bool = True,
    multiple_value_matching: bool = True,
) -> Constraint:
    """The constraint a key value of VR ``vr`` asks for (PS3.4 C.2.2.2).

    ``value`` is the decoded value as text (several values joined by backslashes). ``rule``
    applies to text VRs. Raises :class:`InvalidKeyValue` (or :class:`InvalidRange`) for a value
    that is not valid for its VR in a query, :class:`UnsupportedMatching` for valid forms this
    archive does not answer.
    """
    value = value.rstrip(" \x00") if vr in SINGLE_TEXT_VRS else value.strip(" \x00")
    if value == "":
        return Universal()
    if value == '""' and empty_value_matching:
        return EmptyValue()
    if vr == "UI":
        return _uids(value, tag)
    if "\\" in value and vr not in SINGLE_TEXT_VRS:
        parts = [part.strip(" \x00") for part in value.split("\\")]
        parts = [part for part in parts if part]
        if not multiple_value_matching and len(parts) > 1:
            raise UnsupportedMatching(f"multiple values are not supported{_where(tag)}", tag)
        options = list(dict.fromkeys(parse_value(p, vr, rule=rule, tag=tag, empty_value_matching=False) for p in parts))
        if not options or any(o.is_universal for o in options):
            return Universal()
        return options[0] if len(options) == 1 else AnyOf(tuple(options))
    if vr in DATE_TIME_VRS:
        return _date_time(value, vr, tag)
    if vr in INTEGER_VRS or vr in DECIMAL_VRS:
        return _number(value, vr, tag)
    if vr in WILDCARD_VRS:
        return _text_value(value, vr, rule)
    if value == "*":
        return Universal()
    return SingleValue(prepare_text(value, TextRule.EXACT))  # AS and other string VRs
