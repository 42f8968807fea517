"""storage.query: key values -> constraints -> ``matches`` (pure, no database), and the
identifier rules of the information models (PS3.4 C.2.2.2, C.4.1.2.1, C.6)."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydicom import config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from storage.errors import ArchiveError
from storage.query import (
    PATIENT_ROOT,
    STUDY_ROOT,
    AnyOf,
    DateTimePair,
    EmptyValue,
    IdentifierError,
    InvalidKeyValue,
    InvalidRange,
    KeyBelowLevel,
    MatchOptions,
    MissingQueryLevel,
    MissingUniqueKey,
    NonUniqueKeyAbove,
    Number,
    QueryError,
    QueryLevel,
    Range,
    SequenceItem,
    SequenceKeyError,
    SingleValue,
    SomeValue,
    TextRule,
    UIDList,
    Universal,
    UnknownQueryLevel,
    UnsupportedKey,
    UnsupportedMatching,
    Wildcard,
    build_query,
    parse_value,
    record_from_row,
    response_identifier,
)
from storage.query.constraints import case_variants, successor
from storage.query.parse import normalise_person_name, trim_lower
from storage.text import fold
from tests.fixtures.synthetic import VIETNAMESE_PATIENTS

PROPERTY = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
EXACT, CI, AI = TextRule.EXACT, TextRule.CASE_INSENSITIVE, TextRule.ACCENT_INSENSITIVE


# --- which matching type a value asks for (PS3.4 C.2.2.2) -----------------------------------
@pytest.mark.parametrize(
    ("vr", "value", "expected"),
    [
        # Universal Matching (C.2.2.2.3)
        ("PN", "", Universal()),
        ("LO", "   ", Universal()),
        ("CS", "*", Universal()),
        ("LO", "***", Universal()),
        ("UI", "", Universal()),
        ("DA", "", Universal()),
        ("DA", "-", Universal()),
        ("DA", "*", Universal()),
        ("IS", "", Universal()),
        ("IS", "*", Universal()),
        ("CS", "\\", Universal()),
        ("CS", "CT\\*", Universal()),
        # Empty Value Matching
        ("LO", '""', EmptyValue()),
        ("DA", '""', EmptyValue()),
        ("UI", '""', EmptyValue()),
        # Single Value Matching (C.2.2.2.1)
        ("LO", "ABC", SingleValue("ABC")),
        ("LO", " ABC ", SingleValue("ABC")),
        ("CS", "CT", SingleValue("CT")),
        ("SH", "A%_\\", SingleValue("A%_")),
        ("LT", " a\\b ", SingleValue(" a\\b")),
        ("ST", "x\\y", SingleValue("x\\y")),
        ("UT", "tail  ", SingleValue("tail")),
        ("AS", "045Y", SingleValue("045Y")),
        ("DA", "20240301", SingleValue("20240301")),
        ("TM", "1030", SingleValue("1030")),
        ("TM", "103000.123", SingleValue("103000.123")),
        ("DT", "20240301103000", SingleValue("20240301103000")),
        ("DT", "2024", SingleValue("2024")),
        ("PN", "Nguyễn^Văn Đức^^", SingleValue("nguyen^van duc", AI)),
        ("PN", "Nguyen^Van=", SingleValue("nguyen^van", AI)),
        ("IS", "7", Number(7)),
        ("IS", "007", Number(7)),
        ("IS", "+7", Number(7)),
        ("DS", "1.5", Number(1.5)),
        ("US", "512", Number(512)),
        # Wild Card Matching (C.2.2.2.4)
        ("PN", "nguyen*", Wildcard("nguyen*", AI)),
        ("PN", "NGUYỄN*", Wildcard("nguyen*", AI)),
        ("LO", "A*B?", Wildcard("A*B?")),
        ("CS", "C?", Wildcard("C?")),
        ("AE", "CT*", Wildcard("CT*")),
        ("SH", "?", Wildcard("?")),
        ("UC", "*x", Wildcard("*x")),
        ("LO", "50%_*", Wildcard("50%_*")),
        # List of UID Matching (C.2.2.2.2)
        ("UI", "1.2.3", UIDList(("1.2.3",))),
        ("UI", "1.2.3\\1.2.4", UIDList(("1.2.3", "1.2.4"))),
        ("UI", "1.2.3\\1.2.3", UIDList(("1.2.3",))),
        ("UI", "1.2.3\\\\1.2.4\\", UIDList(("1.2.3", "1.2.4"))),
        ("UI", "1.2.3\x00", UIDList(("1.2.3",))),
        ("UI", "0.0", UIDList(("0.0",))),
        # Range Matching (C.2.2.2.5)
        ("DA", "20240101-20241231", Range("20240101", "20241231")),
        ("DA", "20240101-", Range("20240101", None)),
        ("DA", "-20241231", Range(None, "20241231")),
        ("DA", "20240101 - 20240101", Range("20240101", "20240101")),
        ("TM", "0800-1700", Range("08", "1700")),
        ("TM", "083000-", Range("0830", None)),
        ("TM", "-1700", Range(None, "1700")),
        ("TM", "083000.000-0900", Range("0830", "0900")),
        ("TM", "080000.5-", Range("080000.5", None)),
        ("DT", "2024-2025", Range("2024", "2025")),
        ("DT", "20240301080000-20240301170000", Range("2024030108", "20240301170000")),
        ("DT", "20240301000000-", Range("20240301", None)),
        ("DT", "-202403", Range(None, "202403")),
        ("DT", "202403011030-", Range("202403011030", None)),
        # Multiple Value Matching
        ("CS", "CT\\MR", AnyOf((SingleValue("CT"), SingleValue("MR")))),
        ("CS", "CT\\CT", SingleValue("CT")),
        ("CS", "CT\\M?", AnyOf((SingleValue("CT"), Wildcard("M?")))),
        ("DA", "20240101\\20240102", AnyOf((SingleValue("20240101"), SingleValue("20240102")))),
        ("IS", "1\\2", AnyOf((Number(1), Number(2)))),
        ("LO", "a\\", SingleValue("a")),
    ],
)
def test_value_to_constraint(vr: str, value: str, expected: object) -> None:
    rule = AI if vr == "PN" else EXACT
    assert parse_value(value, vr, rule=rule) == expected


@pytest.mark.parametrize(
    ("vr", "value", "error"),
    [
        ("UI", "1.2.*", InvalidKeyValue),
        ("UI", "1.2.?", InvalidKeyValue),
        ("UI", "1.2.3\\1.2.*", InvalidKeyValue),
        ("UI", "1..2", InvalidKeyValue),
        ("UI", "1.02", InvalidKeyValue),
        ("UI", "abc", InvalidKeyValue),
        ("UI", "1." + "2" * 70, InvalidKeyValue),
        ("DA", "2024030", InvalidKeyValue),
        ("DA", "2024.03.01", InvalidKeyValue),
        ("DA", "20240230", InvalidKeyValue),
        ("DA", "20241301", InvalidKeyValue),
        ("DA", "2024031*", InvalidKeyValue),
        ("DA", "20240301-20240230", InvalidRange),
        ("DA", "20240301-2024", InvalidRange),
        ("DA", "20240302-20240301", InvalidRange),
        ("DA", "2024-01-01", InvalidRange),
        ("DA", "20240101--20240102", InvalidRange),
        ("TM", "25", InvalidKeyValue),
        ("TM", "10:30", InvalidKeyValue),
        ("TM", "1", InvalidKeyValue),
        ("TM", "106", InvalidKeyValue),
        ("TM", "1061", InvalidKeyValue),
        ("TM", "103000.1234567", InvalidKeyValue),
        ("TM", "1700-0800", InvalidRange),
        ("TM", "2300-0100", InvalidRange),
        ("TM", "12-11", InvalidRange),
        ("TM", "ab-", InvalidRange),
        ("DT", "2024x", InvalidKeyValue),
        ("DT", "20241301", InvalidKeyValue),
        ("DT", "20240230", InvalidKeyValue),
        ("DT", "2025-2024", InvalidRange),
        ("DT", "2024-20x", InvalidRange),
        ("IS", "1*", InvalidKeyValue),
        ("IS", "abc", InvalidKeyValue),
        ("IS", "1.5", InvalidKeyValue),
        ("DS", "one", InvalidKeyValue),
        ("US", "-", InvalidKeyValue),
    ],
)
def test_invalid_values_are_refused(vr: str, value: str, error: type[QueryError]) -> None:
    with pytest.raises(error) as raised:
        parse_value(value, vr, tag=0x00080020)
    assert isinstance(raised.value, ArchiveError)
    assert raised.value.tag == 0x00080020 and raised.value.reason


@pytest.mark.parametrize(
    "value",
    ["20240301120000+0700", "20240301-0700", "20240301+0700-20240302+0700", "-20240302+0000"],
)
def test_utc_offsets_in_datetime_queries_are_unsupported(value: str) -> None:
    with pytest.raises(UnsupportedMatching):
        parse_value(value, "DT")


def test_multiple_values_can_be_refused() -> None:
    with pytest.raises(UnsupportedMatching):
        parse_value("CT\\MR", "CS", multiple_value_matching=False)
    assert parse_value('""', "LO", empty_value_matching=False) == SingleValue('""')


# --- matches(value) -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("vr", "query", "rule", "value", "expected"),
    [
        # single values are case-sensitive outside PN (C.2.2.2.1)
        ("CS", "CT", EXACT, "CT", True),
        ("CS", "CT", EXACT, "ct", False),
        ("CS", "CT", EXACT, "CT ", False),
        ("CS", "CT", EXACT, None, False),
        ("CS", "CT", EXACT, "", False),
        ("LO", "Bệnh viện", EXACT, "Bệnh viện", True),
        ("LO", "Bệnh viện", EXACT, "bệnh viện", False),
        ("LO", "Bệnh viện", EXACT, "Benh vien", False),
        ("LO", unicodedata.normalize("NFD", "Bệnh viện"), EXACT, "Bệnh viện", True),
        ("LO", "Bệnh viện", EXACT, unicodedata.normalize("NFD", "Bệnh viện"), True),
        ("LO", "Bệnh viện", CI, "BỆNH VIỆN", True),
        ("LO", "Bệnh viện", CI, "bệnh viện", True),
        ("LO", "Bệnh viện", CI, "Benh vien", False),
        ("LO", "straße", CI, "STRASSE", False),
        ("LO", "ǅ", CI, "ǆ", True),
        ("LO", "100%", EXACT, "100%", True),
        ("LO", "100%", EXACT, "1000", False),
        ("LO", "a_b", EXACT, "axb", False),
        ("LO", "a_b", EXACT, "a_b", True),
        ("LO", "a\\b", EXACT, "a\\b", False),  # two values: "a" or "b"
        ("LO", "a\\b", EXACT, "b", True),
        ("LT", "a\\b", EXACT, "a\\b", True),  # LT is one text
        ("LO", "[x]", EXACT, "[x]", True),
        ("LO", "[x]", EXACT, "x", False),
        # person names: accent- and case-insensitive by default
        ("PN", "Nguyễn^Văn Đức", AI, "Nguyễn^Văn Đức", True),
        ("PN", "nguyen^van duc", AI, "Nguyễn^Văn Đức", True),
        ("PN", "NGUYEN^VAN DUC", AI, "Nguyễn^Văn Đức", True),
        ("PN", "Nguyen^Van Duc^^", AI, "Nguyễn^Văn Đức", True),
        ("PN", "Nguyễn^Văn", AI, "Nguyễn^Văn Đức", False),
        ("PN", "nguyen*", AI, "Nguyễn^Văn Đức", True),
        ("PN", "NGUYỄN*", AI, "Nguyen^Van Duc", True),
        ("PN", "*duc", AI, "Nguyễn^Văn Đức", True),
        ("PN", "*^van*", AI, "Nguyễn^Văn Đức", True),
        ("PN", "nguy?n*", AI, "Nguyễn^Văn Đức", True),
        ("PN", "dang*", AI, "Đặng^Quốc Bảo", True),
        ("PN", "đặng*", AI, "Dang^Quoc Bao", True),
        ("PN", "tran*", AI, "Nguyễn^Văn Đức", False),
        ("PN", "nguyen*", AI, None, False),
        ("PN", "weiss*", AI, "Weiß^Anna", True),
        ("PN", "Yamada*", AI, "Yamada^Tarou=山田^太郎", True),
        ("PN", "Yamada^Tarou", AI, "Yamada^Tarou=山田^太郎", False),
        # case-insensitive without accent folding
        ("PN", "nguyễn*", CI, "NGUYỄN^VĂN ĐỨC", True),
        ("PN", "nguyen*", CI, "Nguyễn^Văn Đức", False),
        ("PN", "đức", CI, "ĐỨC", True),
        ("PN", "Nguyễn^Văn Đức", CI, "nguyễn^văn đức", True),
        # exact person names
        ("PN", "Nguyễn*", EXACT, "Nguyễn^Văn Đức", True),
        ("PN", "nguyễn*", EXACT, "Nguyễn^Văn Đức", False),
        # wild cards (C.2.2.2.4)
        ("LO", "A*", EXACT, "A", True),
        ("LO", "A*", EXACT, "ABC", True),
        ("LO", "A*", EXACT, "BA", False),
        ("LO", "*A", EXACT, "BA", True),
        ("LO", "A?C", EXACT, "ABC", True),
        ("LO", "A?C", EXACT, "AC", False),
        ("LO", "A?C", EXACT, "ABBC", False),
        ("LO", "A?C", EXACT, "AễC", True),
        ("LO", "?", EXACT, "", False),
        ("LO", "a*b*c", EXACT, "abc", True),
        ("LO", "a*b*c", EXACT, "a-b-c", True),
        ("LO", "a*b*c", EXACT, "a-c-b", False),
        ("LO", "50%_*", EXACT, "50%_off", True),
        ("LO", "50%_*", EXACT, "50x_off", False),
        ("LO", "50%_*", EXACT, "50%xoff", False),
        ("LO", "a\\*", EXACT, "x", True),  # "a" or "*" (universal)
        ("LO", "*.*", EXACT, "a.b", True),
        ("LO", "*.*", EXACT, "ab", False),
        ("LO", "[*", EXACT, "[x", True),
        ("LO", "[*", EXACT, "x", False),
        ("LO", "*\n*", EXACT, "a\nb", True),
        ("LO", "ct*", EXACT, "CT head", False),
        ("LO", "ct*", CI, "CT head", True),
        ("CS", "C?", EXACT, "CT", True),
        ("CS", "C?", EXACT, "CTA", False),
        # UIDs (C.2.2.2.2)
        ("UI", "1.2.3", EXACT, "1.2.3", True),
        ("UI", "1.2.3", EXACT, "1.2.30", False),
        ("UI", "1.2.3\\1.2.4", EXACT, "1.2.4", True),
        ("UI", "1.2.3\\1.2.4", EXACT, "1.2.5", False),
        ("UI", "1.2.3", EXACT, None, False),
        # dates (C.2.2.2.5.1)
        ("DA", "20240301", EXACT, "20240301", True),
        ("DA", "20240301", EXACT, "20240302", False),
        ("DA", "20240301-20240305", EXACT, "20240301", True),
        ("DA", "20240301-20240305", EXACT, "20240303", True),
        ("DA", "20240301-20240305", EXACT, "20240305", True),
        ("DA", "20240301-20240305", EXACT, "20240306", False),
        ("DA", "20240301-20240305", EXACT, "20240229", False),
        ("DA", "20240301-", EXACT, "20991231", True),
        ("DA", "20240301-", EXACT, "20240229", False),
        ("DA", "-20240301", EXACT, "19000101", True),
        ("DA", "-20240301", EXACT, "20240301", True),
        ("DA", "-20240301", EXACT, "20240302", False),
        ("DA", "-20240301", EXACT, "", False),
        ("DA", "-20240301", EXACT, None, False),
        ("DA", "20240301-", EXACT, None, False),
        # times (C.2.2.2.5.2)
        ("TM", "0800-1700", EXACT, "0800", True),
        ("TM", "0800-1700", EXACT, "08", True),
        ("TM", "0800-1700", EXACT, "080000.000", True),
        ("TM", "0800-1700", EXACT, "075959.999999", False),
        ("TM", "0800-1700", EXACT, "1700", True),
        ("TM", "0800-1700", EXACT, "170059.999", True),
        ("TM", "0800-1700", EXACT, "1701", False),
        ("TM", "0800-1700", EXACT, "17", True),
        ("TM", "0830-", EXACT, "08", False),
        ("TM", "0830-", EXACT, "0830", True),
        ("TM", "0830-", EXACT, "235959", True),
        ("TM", "-0830", EXACT, "0830", True),
        ("TM", "-0830", EXACT, "083059", True),
        ("TM", "-0830", EXACT, "0831", False),
        ("TM", "-0830", EXACT, "00", True),
        ("TM", "103000", EXACT, "103000", True),
        ("TM", "103000", EXACT, "1030", False),
        # datetimes (C.2.2.2.5.3)
        ("DT", "2024-2024", EXACT, "20241231235959", True),
        ("DT", "2024-2024", EXACT, "2025", False),
        ("DT", "202403011000-202403011800", EXACT, "20240301", False),
        ("DT", "202403011000-202403011800", EXACT, "20240301100000", True),
        ("DT", "202403011000-202403011800", EXACT, "20240301180059.9", True),
        ("DT", "202403011000-202403011800", EXACT, "202403011801", False),
        ("DT", "20240301-", EXACT, "2024030100", True),
        # numbers
        ("IS", "7", EXACT, 7, True),
        ("IS", "7", EXACT, "007", True),
        ("IS", "7", EXACT, 8, False),
        ("IS", "7", EXACT, None, False),
        ("IS", "7", EXACT, "x", False),
        ("DS", "1.5", EXACT, 1.5, True),
        ("IS", "1\\2", EXACT, 2, True),
        # empty values
        ("LO", '""', EXACT, None, True),
        ("LO", '""', EXACT, "", True),
        ("LO", '""', EXACT, "x", False),
        ("IS", '""', EXACT, 0, False),
        ("IS", '""', EXACT, None, True),
        # universal
        ("LO", "", EXACT, None, True),
        ("LO", "*", EXACT, "anything", True),
        ("DA", "", EXACT, None, True),
    ],
)
def test_matches(vr: str, query: str, rule: TextRule, value: object, expected: bool) -> None:
    assert parse_value(query, vr, rule=rule).matches(value) is expected


@pytest.mark.parametrize("patient", VIETNAMESE_PATIENTS, ids=lambda p: p.patient_id)
@pytest.mark.parametrize(
    "query",
    [
        lambda name: name,
        lambda name: name.upper(),
        lambda name: fold(name),
        lambda name: fold(name).upper(),
        lambda name: unicodedata.normalize("NFD", name),
        lambda name: fold(name.split("^")[0]) + "*",
        lambda name: "*" + fold(name.split("^")[-1]).upper(),
        lambda name: name.split("^")[0] + "^*",
        lambda name: "?" + name[1:],
    ],
    ids=["same", "upper", "folded", "folded-upper", "nfd", "family*", "*given", "family^*", "?rest"],
)
def test_person_names_match_however_they_are_typed(patient: Any, query: Any) -> None:
    constraint = parse_value(query(patient.name), "PN", rule=AI)
    assert constraint.matches(patient.name)
    others = [p.name for p in VIETNAMESE_PATIENTS if p is not patient]
    assert not any(constraint.matches(other) for other in others)


@pytest.mark.parametrize(
    ("ch", "variants"),
    [("a", "aA"), ("A", "aA"), ("ễ", "ễỄ"), ("Đ", "đĐ"), ("1", "1"), ("*", "*"), ("ß", "ß"), ("ẞ", "ßẞ"), ("ǅ", "Ǆǅǆ")],
)
def test_case_variants(ch: str, variants: str) -> None:
    assert case_variants(ch) == frozenset(variants)


@pytest.mark.parametrize(
    ("bound", "vr", "trimmed"),
    [
        ("20240301", "DA", "20240301"),
        ("103000", "TM", "1030"),
        ("000000", "TM", "00"),
        ("103000.000000", "TM", "1030"),
        ("103000.500", "TM", "103000.5"),
        ("1030", "TM", "1030"),
        ("20240301000000", "DT", "20240301"),
        ("2024030110", "DT", "2024030110"),
        ("2000", "DT", "2000"),
    ],
)
def test_lower_bounds_lose_trailing_zero_components(bound: str, vr: str, trimmed: str) -> None:
    assert trim_lower(bound, vr) == trimmed


@pytest.mark.parametrize(
    ("name", "normalised"),
    [("A^B^^", "A^B"), ("A^B^^^^=", "A^B"), ("A^B=C^D=", "A^B=C^D"), ("A^ ", "A"), ("=", ""), ("A", "A")],
)
def test_person_name_normalisation(name: str, normalised: str) -> None:
    assert normalise_person_name(name) == normalised


def test_range_needs_a_bound() -> None:
    with pytest.raises(ValueError):
        Range(None, None)


# --- properties -------------------------------------------------------------------------------
_ALPHABET = "aAbBzZ09 ^.-%_[]\\\nễỄđĐßẞǅ"
texts = st.text(alphabet=st.sampled_from(_ALPHABET), max_size=12)
patterns = st.text(alphabet=st.sampled_from(_ALPHABET.replace("\\", "") + "**??"), max_size=8)
# With at least one wildcard by construction: filtering plain patterns out with assume()
# rejected so many examples that Hypothesis's filter_too_much health check failed now and then.
wildcard_patterns = st.tuples(patterns, st.sampled_from("*?"), patterns).map("".join)


def _wildcard_oracle(pattern: str, value: str) -> bool:
    """A straightforward dynamic-programming matcher for ``*`` and ``?``."""
    n, m = len(pattern), len(value)
    table = [[False] * (m + 1) for _ in range(n + 1)]
    table[0][0] = True
    for i in range(1, n + 1):
        table[i][0] = table[i - 1][0] and pattern[i - 1] == "*"
        for j in range(1, m + 1):
            p = pattern[i - 1]
            if p == "*":
                table[i][j] = table[i - 1][j] or table[i][j - 1]
            else:
                table[i][j] = table[i - 1][j - 1] and (p == "?" or p == value[j - 1])
    return table[n][m]


@PROPERTY
@given(wildcard_patterns, texts)
def test_wildcards_agree_with_an_oracle(pattern: str, value: str) -> None:
    assume(set(pattern) != {"*"})
    assert Wildcard(pattern).matches(value) == _wildcard_oracle(pattern, value)


@PROPERTY
@given(patterns, texts)
def test_case_insensitive_equals_exact_on_variants(pattern: str, value: str) -> None:
    """Case-insensitive matching is exact matching after mapping every character with case
    variants to one representative."""
    representative = {c: min(case_variants(c)) for c in set(pattern + value)}
    # Only where the variant relation is symmetric on these characters.
    assume(all(case_variants(v) == case_variants(c) for c in representative for v in case_variants(c)))
    mapped_pattern = "".join(representative[c] if c not in "*?" else c for c in pattern)
    mapped_value = "".join(representative[c] for c in value)
    assert Wildcard(pattern, CI).matches(value) == _wildcard_oracle(mapped_pattern, mapped_value)


@PROPERTY
@given(texts)
def test_a_value_matches_itself_in_every_rule(value: str) -> None:
    assume("*" not in value and "?" not in value)
    for rule in TextRule:
        assert SingleValue(fold(value) if rule is AI else unicodedata.normalize("NFC", value), rule).matches(value)


@PROPERTY
@given(texts)
def test_accent_insensitive_is_matching_of_folded_values(value: str) -> None:
    other = fold(value).upper()
    assert SingleValue(fold(other), AI).matches(value)


dates = st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2099, 12, 31))


@PROPERTY
@given(dates, dates, dates)
def test_date_ranges_agree_with_calendar_dates(a: dt.date, b: dt.date, value: dt.date) -> None:
    lo, hi = min(a, b), max(a, b)
    text = f"{lo:%Y%m%d}-{hi:%Y%m%d}"
    assert parse_value(text, "DA").matches(f"{value:%Y%m%d}") == (lo <= value <= hi)
    assert parse_value(f"{lo:%Y%m%d}-", "DA").matches(f"{value:%Y%m%d}") == (lo <= value)
    assert parse_value(f"-{hi:%Y%m%d}", "DA").matches(f"{value:%Y%m%d}") == (value <= hi)


times = st.times()


@PROPERTY
@given(times, times, times)
def test_time_ranges_agree_with_clock_times(a: dt.time, b: dt.time, value: dt.time) -> None:
    lo, hi = min(a, b), max(a, b)
    text = f"{lo:%H%M%S.%f}-{hi:%H%M%S.%f}"
    assert parse_value(text, "TM").matches(f"{value:%H%M%S.%f}") == (lo <= value <= hi)
    # A bound of minute precision includes the whole minute.
    minute = parse_value(f"-{hi:%H%M}", "TM")
    assert minute.matches(f"{value:%H%M%S}") == (value.replace(second=0, microsecond=0) <= hi.replace(second=0, microsecond=0))


@PROPERTY
@given(st.lists(st.sampled_from(["CT", "MR", "US", "ct", "C%", "SR"]), min_size=1, max_size=3), texts)
def test_multiple_values_match_any_one(values: list[str], candidate: str) -> None:
    constraint = parse_value("\\".join(values), "CS")
    assert constraint.matches(candidate) == any(parse_value(v, "CS").matches(candidate) for v in values)


def test_successor() -> None:
    assert successor("1030") == "1031"
    assert successor("2024123") == "2024124"
    assert successor("19") == "1:"


# --- identifiers and the information models ---------------------------------------------------
def _item(**keys: Any) -> Dataset:
    """A dataset of keys as an SCU would send them (values pydicom would warn about included)."""
    ds = Dataset()
    for keyword, value in keys.items():
        tag = Tag(keyword)
        ds.add(DataElement(tag, dictionary_VR(tag), value, validation_mode=config.IGNORE))
    return ds


def _identifier(level: str | None, **keys: Any) -> Dataset:
    return _item(**keys) if level is None else _item(QueryRetrieveLevel=level, **keys)


def test_a_study_query() -> None:
    ds = _identifier(
        "STUDY", PatientName="nguyen*", PatientID="", StudyDate="20240101-", StudyInstanceUID="",
        ModalitiesInStudy="CT", NumberOfStudyRelatedInstances=None, AccessionNumber="",
    )
    query = build_query(ds, STUDY_ROOT)
    assert query.level is QueryLevel.STUDY
    by_key = {c.keys[0].keyword: c.constraint for c in query.conditions}
    assert by_key == {
        "PatientName": Wildcard("nguyen*", AI),
        "StudyDate": Range("20240101", None),
        "ModalitiesInStudy": SomeValue(SingleValue("CT")),
    }
    assert [rk.keyword for rk in query.return_keys] == [
        "StudyDate", "AccessionNumber", "ModalitiesInStudy", "PatientName", "PatientID",
        "StudyInstanceUID", "NumberOfStudyRelatedInstances",
    ]
    assert query.ignored == ()
    assert query.matches({"PatientName": "Nguyễn^Văn Đức", "StudyDate": "20240301", "ModalitiesInStudy": "CT\\SR"})
    assert not query.matches({"PatientName": "Nguyễn^Văn Đức", "StudyDate": "20240301", "ModalitiesInStudy": "MR"})


@pytest.mark.parametrize(
    ("options", "rule"),
    [
        (MatchOptions(), AI),
        (MatchOptions(pn_accent_insensitive=False), CI),
        (MatchOptions(pn_accent_insensitive=False, pn_case_insensitive=False), EXACT),
        (MatchOptions(pn_case_insensitive=False), AI),
    ],
)
def test_person_name_options(options: MatchOptions, rule: TextRule) -> None:
    query = build_query(_identifier("PATIENT", PatientName="Nguyễn*", PatientID=""), PATIENT_ROOT, options)
    [condition] = query.conditions
    assert isinstance(condition.constraint, Wildcard) and condition.constraint.rule is rule


def test_person_names_without_a_folded_column_fall_back_to_case_insensitive() -> None:
    ds = _identifier("SERIES", StudyInstanceUID="1.2.3", PerformingPhysicianName="võ*")
    conditions = {c.keys[0].keyword: c.constraint for c in build_query(ds, STUDY_ROOT).conditions}
    assert conditions["PerformingPhysicianName"] == Wildcard("võ*", CI)


def test_case_insensitive_keywords() -> None:
    options = MatchOptions(case_insensitive_keywords=frozenset({"StudyDescription", "StudyDate"}))
    ds = _identifier("STUDY", StudyDescription="ct*", StudyDate="20240101")
    constraints = {c.keys[0].keyword: c.constraint for c in build_query(ds, STUDY_ROOT, options).conditions}
    assert constraints == {"StudyDescription": Wildcard("ct*", CI), "StudyDate": SingleValue("20240101")}


@pytest.mark.parametrize(
    ("model", "level", "keys", "error"),
    [
        (STUDY_ROOT, None, {"PatientName": "x"}, MissingQueryLevel),
        (STUDY_ROOT, "", {}, MissingQueryLevel),
        (STUDY_ROOT, "PATIENT", {}, UnknownQueryLevel),
        (STUDY_ROOT, "FRAME", {}, UnknownQueryLevel),
        (STUDY_ROOT, "study", {}, UnknownQueryLevel),
        (PATIENT_ROOT, "INSTANCE", {}, UnknownQueryLevel),
        # keys below the level
        (STUDY_ROOT, "STUDY", {"Modality": "CT"}, KeyBelowLevel),
        (STUDY_ROOT, "STUDY", {"SOPInstanceUID": "1.2"}, KeyBelowLevel),
        (PATIENT_ROOT, "PATIENT", {"StudyDate": "20240101"}, KeyBelowLevel),
        (STUDY_ROOT, "SERIES", {"StudyInstanceUID": "1.2", "InstanceNumber": "1"}, KeyBelowLevel),
        # unique keys above: required, one value
        (STUDY_ROOT, "SERIES", {}, MissingUniqueKey),
        (STUDY_ROOT, "SERIES", {"StudyInstanceUID": ""}, MissingUniqueKey),
        (STUDY_ROOT, "SERIES", {"StudyInstanceUID": "1.2\\1.3"}, MissingUniqueKey),
        (STUDY_ROOT, "IMAGE", {"StudyInstanceUID": "1.2"}, MissingUniqueKey),
        (STUDY_ROOT, "IMAGE", {"SeriesInstanceUID": "1.2.1"}, MissingUniqueKey),
        (PATIENT_ROOT, "STUDY", {}, MissingUniqueKey),
        (PATIENT_ROOT, "STUDY", {"PatientID": "BN*"}, MissingUniqueKey),
        (PATIENT_ROOT, "STUDY", {"PatientID": "A\\B"}, MissingUniqueKey),
        (PATIENT_ROOT, "SERIES", {"PatientID": "BN1"}, MissingUniqueKey),
        # other keys above may not be matched (they may be returned)
        (STUDY_ROOT, "SERIES", {"StudyInstanceUID": "1.2", "StudyDate": "20240101"}, NonUniqueKeyAbove),
        (STUDY_ROOT, "SERIES", {"StudyInstanceUID": "1.2", "PatientName": "x*"}, NonUniqueKeyAbove),
        (PATIENT_ROOT, "STUDY", {"PatientID": "BN1", "PatientName": "x"}, NonUniqueKeyAbove),
        # sequences hold one item
        (STUDY_ROOT, "STUDY", {"OtherPatientIDsSequence": [Dataset(), Dataset()]}, SequenceKeyError),
        # values
        (STUDY_ROOT, "STUDY", {"StudyDate": "2024"}, InvalidKeyValue),
        (STUDY_ROOT, "STUDY", {"StudyDate": "20240102-20240101"}, InvalidRange),
        (STUDY_ROOT, "STUDY", {"StudyInstanceUID": "1.2.*"}, InvalidKeyValue),
    ],
)
def test_identifiers_that_break_the_rules(
    model: Any, level: str | None, keys: dict[str, Any], error: type[QueryError]
) -> None:
    with pytest.raises(error) as raised:
        build_query(_identifier(level, **keys), model)
    assert raised.value.reason
    if issubclass(error, (KeyBelowLevel, NonUniqueKeyAbove, MissingUniqueKey)):
        assert isinstance(raised.value, IdentifierError) and raised.value.tag is not None


@pytest.mark.parametrize(
    ("model", "level", "keys"),
    [
        (STUDY_ROOT, "SERIES", {}),
        (STUDY_ROOT, "SERIES", {"StudyDate": "20240101", "PatientName": "x*"}),
        (STUDY_ROOT, "IMAGE", {"StudyInstanceUID": "1.2\\1.3", "Modality": "CT"}),
        (PATIENT_ROOT, "IMAGE", {"PatientName": "nguyen*"}),
    ],
)
def test_relational_queries_relax_the_hierarchy(model: Any, level: str, keys: dict[str, Any]) -> None:
    query = build_query(_identifier(level, **keys), model, MatchOptions(relational=True))
    assert len(query.conditions) == len(keys)


def test_empty_keys_of_other_levels_are_tolerated_unless_strict() -> None:
    ds = _identifier("SERIES", StudyInstanceUID="1.2", PatientName="", SOPInstanceUID="")
    query = build_query(ds, STUDY_ROOT)
    assert "PatientName" in [rk.keyword for rk in query.return_keys]
    assert "SOPInstanceUID" not in [rk.keyword for rk in query.return_keys]
    assert [i.tag for i in query.ignored] == [0x00080018]
    with pytest.raises(NonUniqueKeyAbove):
        build_query(_identifier("SERIES", StudyInstanceUID="1.2", PatientName=""), STUDY_ROOT, MatchOptions(strict=True))
    with pytest.raises(KeyBelowLevel):
        build_query(_identifier("SERIES", StudyInstanceUID="1.2", SOPInstanceUID=""), STUDY_ROOT, MatchOptions(strict=True))


@pytest.mark.parametrize(
    ("keys", "tag"),
    [
        ({"PatientWeight": "70"}, 0x00101030),  # a standard key the index does not hold
        ({"ImageType": "ORIGINAL"}, 0x00080008),  # held but not matched
        ({"ContentLabel": "X"}, 0x00700080),  # not a key of the model
        ({"RetrieveAETitle": "ME"}, 0x00080054),
    ],
)
def test_unsupported_keys_are_ignored_or_refused(keys: dict[str, Any], tag: int) -> None:
    level = "IMAGE" if "ImageType" in keys else "STUDY"
    extra = {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3"} if level == "IMAGE" else {}
    query = build_query(_identifier(level, **extra, **keys), STUDY_ROOT)
    assert [i.tag for i in query.ignored] == [tag]
    assert tag in [rk.tag for rk in query.return_keys]
    assert all(c.keys[0].tag != tag for c in query.conditions)
    with pytest.raises(UnsupportedKey) as raised:
        build_query(_identifier(level, **extra, **keys), STUDY_ROOT, MatchOptions(strict=True))
    assert raised.value.tag == tag


def test_private_keys_are_ignored() -> None:
    ds = _identifier("STUDY")
    block = ds.private_block(0x0009, "FILMLESS SYNTH", create=True)
    block.add_new(0x01, "LO", "value")
    query = build_query(ds, STUDY_ROOT)
    assert query.conditions == () and len(query.ignored) == 1


def test_unique_keys_of_the_level_and_above_are_always_returned() -> None:
    query = build_query(_identifier("IMAGE", StudyInstanceUID="1.2", SeriesInstanceUID="1.2.3"), STUDY_ROOT)
    assert [rk.keyword for rk in query.return_keys] == ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]
    query = build_query(_identifier("STUDY", PatientID="BN1"), PATIENT_ROOT)
    assert {rk.keyword for rk in query.return_keys} == {"PatientID", "StudyInstanceUID"}


def test_sequence_matching() -> None:
    ds = _identifier(
        "STUDY", OtherPatientIDsSequence=[_item(PatientID="0010*", IssuerOfPatientID="VN-CCCD", TypeOfPatientID="")]
    )
    [condition] = build_query(ds, STUDY_ROOT).conditions
    assert condition.constraint == SequenceItem(
        (("PatientID", Wildcard("0010*")), ("IssuerOfPatientID", SingleValue("VN-CCCD")), ("TypeOfPatientID", Universal()))
    )
    items = [{"PatientID": "001058012345", "IssuerOfPatientID": "VN-CCCD", "TypeOfPatientID": "TEXT"}]
    assert condition.constraint.matches(items)
    assert not condition.constraint.matches([{**items[0], "IssuerOfPatientID": "VN-BHYT"}])
    assert not condition.constraint.matches([])
    assert not condition.constraint.matches(None)
    # one item matching everything is needed, not every key matched by some item
    split = [{"PatientID": "001058012345", "IssuerOfPatientID": "X"}, {"PatientID": "9", "IssuerOfPatientID": "VN-CCCD"}]
    assert not condition.constraint.matches(split)


@pytest.mark.parametrize("value", [[], [Dataset()], [_item(PatientID="")]])
def test_empty_sequence_keys_are_return_keys(value: list[Dataset]) -> None:
    query = build_query(_identifier("STUDY", OtherPatientIDsSequence=value), STUDY_ROOT)
    assert query.conditions == ()
    assert "OtherPatientIDsSequence" in [rk.keyword for rk in query.return_keys]


def test_unsupported_sequences_and_item_keys() -> None:
    ds = _identifier(
        "STUDY",
        ProcedureCodeSequence=[_item(CodeValue="X")],
        OtherPatientIDsSequence=[_item(PatientID="1", IssuerOfPatientIDQualifiersSequence=[_item(UniversalEntityID="u")])],
    )
    query = build_query(ds, STUDY_ROOT)
    assert sorted(i.tag for i in query.ignored) == [0x00081032, 0x00101002]
    [condition] = query.conditions
    assert condition.constraint == SequenceItem((("PatientID", SingleValue("1")),))


@pytest.mark.parametrize(
    ("date", "time", "combined"),
    [
        ("20240301-20240305", "1000-1800", Range("2024030110", "202403051800")),
        ("20240301-", "2200-", Range("2024030122", None)),
        ("-20240305", "-0600", Range(None, "202403050600")),
        ("20240301-20240302", "2200-0200", Range("2024030122", "202403020200")),
        ("20240301-20240305", "1000-", None),
        ("20240301-20240305", "1000", None),
        ("20240301", "1000-1800", None),
    ],
)
def test_combined_date_time_ranges(date: str, time: str, combined: Range | None) -> None:
    ds = _identifier("STUDY", StudyDate=date, StudyTime=time)
    conditions = build_query(ds, STUDY_ROOT, MatchOptions(combined_datetime=True)).conditions
    if combined is None:
        assert len(conditions) == 2
        return
    [condition] = conditions
    assert [k.keyword for k in condition.keys] == ["StudyDate", "StudyTime"]
    assert condition.constraint == DateTimePair(combined)


def test_combined_ranges_match_as_one_datetime() -> None:
    ds = _identifier("STUDY", StudyDate="20240301-20240305", StudyTime="1000-1800")
    combined = build_query(ds, STUDY_ROOT, MatchOptions(combined_datetime=True))
    separate = build_query(ds, STUDY_ROOT)
    evening = {"StudyDate": "20240302", "StudyTime": "2100"}
    assert combined.matches(evening) and not separate.matches(evening)
    for record, expected in [
        ({"StudyDate": "20240301", "StudyTime": "0959"}, False),
        ({"StudyDate": "20240301", "StudyTime": "1000"}, True),
        ({"StudyDate": "20240305", "StudyTime": "1800"}, True),
        ({"StudyDate": "20240305", "StudyTime": "1801"}, False),
        ({"StudyDate": "20240303", "StudyTime": None}, True),
        ({"StudyDate": None, "StudyTime": "1200"}, False),
    ]:
        assert combined.matches(record) is expected


def test_reversed_time_is_an_error_without_combination() -> None:
    ds = _identifier("STUDY", StudyDate="20240301-20240302", StudyTime="2200-0200")
    with pytest.raises(InvalidRange):
        build_query(ds, STUDY_ROOT)
    with pytest.raises(InvalidRange):
        build_query(_identifier("STUDY", StudyDate="20240302-20240302", StudyTime="2200-0200"), STUDY_ROOT, MatchOptions(combined_datetime=True))


def test_values_are_read_from_raw_elements() -> None:
    """Identifiers from the network hold raw elements: malformed numbers are query errors
    (not pydicom warnings), and text is decoded with the identifier's character set."""
    ds = _identifier("IMAGE", StudyInstanceUID="1.2", SeriesInstanceUID="1.2.3")
    ds[0x00200013] = RawDataElement(Tag(0x00200013), "IS", 2, b"1*", 0, False, True)
    with pytest.raises(InvalidKeyValue):
        build_query(ds, STUDY_ROOT)
    ds = _identifier("STUDY")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds[0x00100010] = RawDataElement(Tag(0x00100010), "PN", 6, "Jérô*".encode("latin-1") + b" ", 0, False, True)
    [condition] = build_query(ds, STUDY_ROOT).conditions
    assert condition.constraint == Wildcard("jero*", AI)


def test_response_identifier_and_record() -> None:
    ds = _identifier(
        "STUDY", PatientName="", StudyDate="", ModalitiesInStudy="", NumberOfStudyRelatedSeries=None,
        OtherPatientIDsSequence=[_item(PatientID="")], PatientWeight="", RetrieveAETitle="",
        InstanceAvailability="", ReferencedStudySequence=[], StudyInstanceUID="",
    )
    query = build_query(ds, STUDY_ROOT, MatchOptions(retrieve_ae_title="FILMLESS"))
    row = {
        "PatientName": "Nguyễn^Văn Đức",
        "StudyDate": "20240301",
        "ModalitiesInStudy": "CT\\SR",
        "NumberOfStudyRelatedSeries": 2,
        "OtherPatientIDsSequence": '[{"id": "001058012345", "issuer": "VN-CCCD", "type": "TEXT"}]',
        "StudyInstanceUID": "1.2.3",
    }
    response = response_identifier(query, row)
    assert response.SpecificCharacterSet == "ISO_IR 192"
    assert response.QueryRetrieveLevel == "STUDY"
    assert str(response.PatientName) == "Nguyễn^Văn Đức"
    assert list(response.ModalitiesInStudy) == ["CT", "SR"]
    assert response.NumberOfStudyRelatedSeries == 2
    assert response.RetrieveAETitle == "FILMLESS" and response.InstanceAvailability == "ONLINE"
    # Standard keys the index does not hold are left out (PS3.4 C.2.2.1.3).
    assert "PatientWeight" not in response and "ReferencedStudySequence" not in response
    [item] = response.OtherPatientIDsSequence
    assert item.PatientID == "001058012345" and "IssuerOfPatientID" not in item
    assert set(response.keys()) == {Tag(t) for t in (
        0x00080005, 0x00080052, 0x00100010, 0x00080020, 0x00080061, 0x00201206, 0x00101002,
        0x00080054, 0x00080056, 0x0020000D,
    )}
    record = record_from_row(query, row)
    assert record["OtherPatientIDsSequence"] == [
        {"PatientID": "001058012345", "IssuerOfPatientID": "VN-CCCD", "TypeOfPatientID": "TEXT"}
    ]
    assert re.fullmatch(r"\d+", str(record["NumberOfStudyRelatedSeries"]))


def test_keys_the_index_does_not_hold_are_not_returned() -> None:
    """PS3.4 C.2.2.1.3: an optional key whose existence the SCP does not support shall not be
    returned; a key the index holds comes back zero length when the entity has no value.
    (Found comparing with Orthanc: PatientAge came back empty, as if the age were unknown.)"""
    ds = _identifier(
        "STUDY", StudyInstanceUID="", StudyDescription="", PatientAge="", EthnicGroup="",
        ContentLabel="", TimezoneOffsetFromUTC="", IssuerOfAccessionNumberSequence=[],
    )
    query = build_query(ds, STUDY_ROOT)
    response = response_identifier(query, {"StudyInstanceUID": "1.2.3", "StudyDescription": None})
    assert "StudyDescription" in response and response.StudyDescription in (None, "")
    for keyword in ("PatientAge", "EthnicGroup", "ContentLabel", "TimezoneOffsetFromUTC", "IssuerOfAccessionNumberSequence"):
        assert keyword not in response, keyword