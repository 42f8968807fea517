"""storage.query.sql: constraints compiled to SQL, checked without a database.

The pattern translations are compared with independent matchers (Python's ``fnmatch`` is a
GLOB, ``re`` reads the PostgreSQL regular expressions we emit, and a LIKE interpreter is
written here); the statements are compiled for SQLite and PostgreSQL and read as text. Running
them against SQLite is the integration test's job (tests/integration/test_query_index.py).
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydicom import config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from sqlalchemy import Select, column
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from storage.index.schema import patient, study
from storage.query import (
    PATIENT_ROOT,
    STUDY_ROOT,
    EmptyValue,
    MatchOptions,
    Number,
    Range,
    SingleValue,
    TextRule,
    UIDList,
    Universal,
    Wildcard,
    build_query,
    compile_constraint,
)
from storage.query.sql import PK_LABEL, glob_pattern, like_pattern, regex_pattern

PROPERTY = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
EXACT, CI, AI = TextRule.EXACT, TextRule.CASE_INSENSITIVE, TextRule.ACCENT_INSENSITIVE


def _sql(clause: ColumnElement[Any] | Select[Any], dialect: str = "sqlite") -> str:
    d = sqlite.dialect() if dialect == "sqlite" else postgresql.dialect()
    text = str(clause.compile(dialect=d, compile_kwargs={"literal_binds": True}))
    # psycopg's "pyformat" parameter style doubles a literal % in rendered SQL text.
    return text.replace("%%", "%") if dialect == "postgresql" else text


# --- pattern translation ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pattern", "like"),
    [
        ("abc", "abc"),
        ("a*", "a%"),
        ("*a*", "%a%"),
        ("a?c", "a_c"),
        ("100%", "100\\%"),
        ("a_b", "a\\_b"),
        ("a\\b", "a\\\\b"),
        ("50%_*", "50\\%\\_%"),
        ("%*_?", "\\%%\\__"),
        ("\\*", "\\\\%"),
        ("[x]", "[x]"),
        ("Nguyễn*", "Nguyễn%"),
        ("", ""),
    ],
)
def test_like_pattern_escapes_metacharacters(pattern: str, like: str) -> None:
    assert like_pattern(pattern) == like


def test_like_pattern_without_wildcards_and_other_escape() -> None:
    assert like_pattern("a*?%", wildcards=False) == "a*?\\%"
    assert like_pattern("a!%*", escape="!") == "a!!!%%"


@pytest.mark.parametrize(
    ("pattern", "rule", "glob"),
    [
        ("abc", EXACT, "abc"),
        ("a*b?", EXACT, "a*b?"),
        ("[x]", EXACT, "[[]x]"),
        ("a%_\\", EXACT, "a%_\\"),
        ("ab", CI, "[Aa][Bb]"),
        ("a1*", CI, "[Aa]1*"),
        ("đ?", CI, "[Đđ]?"),
        ("ß", CI, "ß"),
        ("^", CI, "^"),
    ],
)
def test_glob_pattern(pattern: str, rule: TextRule, glob: str) -> None:
    assert glob_pattern(pattern, rule) == glob


def test_glob_pattern_without_wildcards() -> None:
    assert glob_pattern("a*?", EXACT, wildcards=False) == "a[*][?]"


@pytest.mark.parametrize(
    ("pattern", "rule", "regex"),
    [
        ("abc", EXACT, "^abc$"),
        ("a*b?", EXACT, "^a.*b.$"),
        ("a.b", EXACT, "^a\\.b$"),
        ("(x)|[y]$^", EXACT, "^\\(x\\)\\|\\[y\\]\\$\\^$"),
        ("a b", EXACT, "^a\\ b$"),
        ("ab", CI, "^[Aa][Bb]$"),
        ("ễ*", CI, "^[Ễễ].*$"),
        ("\\", EXACT, "^\\\\$"),
    ],
)
def test_regex_pattern(pattern: str, rule: TextRule, regex: str) -> None:
    assert regex_pattern(pattern, rule) == regex


def _like_matches(value: str, like: str, escape: str = "\\") -> bool:
    """A LIKE interpreter (case-sensitive, as PostgreSQL's)."""
    parts: list[str] = []
    i = 0
    while i < len(like):
        ch = like[i]
        if ch == escape and i + 1 < len(like):
            parts.append(re.escape(like[i + 1]))
            i += 2
            continue
        parts.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return re.fullmatch("".join(parts), value, re.DOTALL) is not None


_ALPHABET = "aAbB09 ^.-%_[]\\!()$|+\nễỄđĐǅ"
texts = st.text(alphabet=st.sampled_from(_ALPHABET), max_size=10)
patterns = st.text(alphabet=st.sampled_from(_ALPHABET + "**??"), max_size=8)


@PROPERTY
@given(patterns, texts, st.sampled_from([EXACT, CI]))
def test_sql_patterns_agree_with_matches(pattern: str, value: str, rule: TextRule) -> None:
    assume(set(pattern) != {"*"})
    expected = Wildcard(pattern, rule).matches(value)
    assert fnmatch.fnmatchcase(value, glob_pattern(pattern, rule)) == expected
    assert (re.fullmatch(regex_pattern(pattern, rule), value, re.DOTALL) is not None) == expected
    if rule is EXACT:
        assert _like_matches(value, like_pattern(pattern)) == expected


@PROPERTY
@given(texts, texts, st.sampled_from([EXACT, CI]))
def test_single_values_as_patterns(query: str, value: str, rule: TextRule) -> None:
    """Case-insensitive single values compile to a pattern without wild cards."""
    expected = SingleValue(query, rule).matches(value)
    assert fnmatch.fnmatchcase(value, glob_pattern(query, rule, wildcards=False)) == expected
    assert (re.fullmatch(regex_pattern(query, rule, wildcards=False), value, re.DOTALL) is not None) == expected


# --- compiled constraints -----------------------------------------------------------------------
NAME, FOLDED = patient.c.patient_name, patient.c.patient_name_folded


@pytest.mark.parametrize(
    ("constraint", "sqlite_sql", "postgresql_sql"),
    [
        (SingleValue("CT"), "patient.patient_name = 'CT'", "patient.patient_name = 'CT'"),
        (SingleValue("nguyen^van", AI), "patient.patient_name_folded = 'nguyen^van'", "patient.patient_name_folded = 'nguyen^van'"),
        (
            SingleValue("ab", CI),
            "patient.patient_name GLOB '[Aa][Bb]'",
            "patient.patient_name ~ '^[Aa][Bb]$'",
        ),
        (Wildcard("nguyen*", AI), "patient.patient_name_folded GLOB 'nguyen*'", "patient.patient_name_folded LIKE 'nguyen%' ESCAPE '\\'"),
        (Wildcard("50%_*"), "patient.patient_name GLOB '50%_*'", "patient.patient_name LIKE '50\\%\\_%' ESCAPE '\\'"),
        (Wildcard("a?*", CI), "patient.patient_name GLOB '[Aa]?*'", "patient.patient_name ~ '^[Aa]..*$'"),
        (EmptyValue(), "patient.patient_name IS NULL OR patient.patient_name = ''", "patient.patient_name IS NULL OR patient.patient_name = ''"),
        (UIDList(("1.2",)), "patient.patient_name = '1.2'", "patient.patient_name = '1.2'"),
        (UIDList(("1.2", "1.3")), "patient.patient_name IN ('1.2', '1.3')", "patient.patient_name IN ('1.2', '1.3')"),
        (
            Range("20240101", "20241231"),
            "patient.patient_name >= '20240101' AND patient.patient_name < '20241232'",
            "patient.patient_name COLLATE \"C\" >= '20240101' AND patient.patient_name COLLATE \"C\" < '20241232'",
        ),
        (
            Range(None, "1700"),
            "patient.patient_name != '' AND patient.patient_name < '1701'",
            "patient.patient_name != '' AND patient.patient_name COLLATE \"C\" < '1701'",
        ),
        (Range("1030", None), "patient.patient_name >= '1030'", "patient.patient_name COLLATE \"C\" >= '1030'"),
    ],
)
def test_compiled_constraints(constraint: Any, sqlite_sql: str, postgresql_sql: str) -> None:
    clause = compile_constraint(constraint, NAME, FOLDED)
    assert _sql(clause) == sqlite_sql
    assert _sql(clause, "postgresql") == postgresql_sql


def test_numbers_and_empty_numbers() -> None:
    series_number = column("series_number")
    assert _sql(compile_constraint(Number(7), series_number)) == "series_number = 7"
    assert _sql(compile_constraint(EmptyValue(), series_number)) == "series_number IS NULL"


def test_compile_refuses_what_has_no_clause() -> None:
    with pytest.raises(ValueError):
        compile_constraint(Universal(), NAME)
    with pytest.raises(ValueError):
        compile_constraint(Wildcard("a*", AI), NAME)


def test_glob_is_not_compared_with_one() -> None:
    """A bare GLOB term (not ``GLOB ? = 1``) lets SQLite use an index for the prefix."""
    sql = _sql(compile_constraint(Wildcard("nguyen*", AI), NAME, FOLDED).__and__(NAME == "x"))
    assert "= 1" not in sql


# --- whole queries --------------------------------------------------------------------------------
def _identifier(**keys: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        tag = Tag(keyword)
        ds.add(DataElement(tag, dictionary_VR(tag), value, validation_mode=config.IGNORE))
    return ds


@pytest.mark.parametrize(
    ("model", "keys", "from_clause"),
    [
        (PATIENT_ROOT, {"QueryRetrieveLevel": "PATIENT"}, "FROM patient ORDER BY patient.pk"),
        (STUDY_ROOT, {"QueryRetrieveLevel": "STUDY"}, "FROM study JOIN patient ON study.patient_pk = patient.pk"),
        (
            STUDY_ROOT,
            {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": "1.2"},
            "FROM series JOIN study ON series.study_pk = study.pk JOIN patient ON study.patient_pk = patient.pk",
        ),
        (
            PATIENT_ROOT,
            {"QueryRetrieveLevel": "IMAGE", "PatientID": "P", "StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3"},
            "FROM instance JOIN series ON instance.series_pk = series.pk JOIN study ON series.study_pk = study.pk "
            "JOIN patient ON study.patient_pk = patient.pk",
        ),
    ],
)
def test_each_level_selects_from_its_table_and_the_levels_above(model: Any, keys: dict[str, Any], from_clause: str) -> None:
    sql = " ".join(_sql(build_query(_identifier(**keys), model).select()).split())
    assert from_clause in sql
    assert f"AS {PK_LABEL}" in sql


def test_a_study_select() -> None:
    ds = _identifier(
        QueryRetrieveLevel="STUDY", PatientName="nguyen*", StudyDate="20240101-", ModalitiesInStudy="CT\\MR",
        NumberOfPatientRelatedStudies=None, NumberOfStudyRelatedInstances=None, StudyInstanceUID="",
        OtherPatientIDsSequence=[_identifier(PatientID="0010*", IssuerOfPatientID="VN-CCCD")],
    )
    stmt = build_query(ds, STUDY_ROOT).select(limit=10, offset=20)
    sql = " ".join(_sql(stmt).split())
    for fragment in [
        'study.study_date AS "StudyDate"',
        'patient.patient_name AS "PatientName"',
        'study.number_of_instances AS "NumberOfStudyRelatedInstances"',
        'FROM study AS patient_study WHERE patient_study.patient_pk = patient.pk) AS "NumberOfPatientRelatedStudies"',
        "patient.patient_name_folded GLOB 'nguyen*'",
        "study.study_date >= '20240101'",
        "EXISTS (SELECT 1 AS anon_1 FROM series AS study_series WHERE study_series.study_pk = study.pk "
        "AND study_series.number_of_instances > 0 AND (study_series.modality = 'CT' OR study_series.modality = 'MR'))",
        "FROM json_each(patient.other_patient_ids) AS item WHERE json_extract(item.value, '$.id') GLOB '0010*' "
        "AND json_extract(item.value, '$.issuer') = 'VN-CCCD'",
        "ORDER BY study.pk LIMIT 10 OFFSET 20",
    ]:
        assert fragment in sql, fragment
    pg = " ".join(_sql(stmt, "postgresql").split())
    for fragment in [
        "patient.patient_name_folded LIKE 'nguyen%' ESCAPE '\\'",
        "study.study_date COLLATE \"C\" >= '20240101'",
        "FROM json_array_elements(CAST(patient.other_patient_ids AS JSON)) AS item "
        "WHERE (item.value ->> 'id') LIKE '0010%' ESCAPE '\\' AND (item.value ->> 'issuer') = 'VN-CCCD'",
    ]:
        assert fragment in pg, fragment


def test_sop_classes_in_study_match_through_instances() -> None:
    ds = _identifier(QueryRetrieveLevel="STUDY", SOPClassesInStudy="1.2.840.10008.5.1.4.1.1.2")
    sql = " ".join(_sql(build_query(ds, STUDY_ROOT).select()).split())
    assert (
        "EXISTS (SELECT 1 AS anon_1 FROM instance AS class_instance JOIN series AS class_series "
        "ON class_instance.series_pk = class_series.pk WHERE class_series.study_pk = study.pk "
        "AND class_instance.sop_class_uid = '1.2.840.10008.5.1.4.1.1.2')"
    ) in sql


def test_combined_date_time_select() -> None:
    ds = _identifier(QueryRetrieveLevel="STUDY", StudyDate="20240301-20240305", StudyTime="1000-1800")
    stmt = build_query(ds, STUDY_ROOT, MatchOptions(combined_datetime=True)).select()
    sql = " ".join(_sql(stmt).split())
    assert (
        "study.study_date != '' AND study.study_date || coalesce(study.study_time, '') >= '2024030110' "
        "AND study.study_date || coalesce(study.study_time, '') < '202403051801'"
    ) in sql
    pg = " ".join(_sql(stmt, "postgresql").split())
    assert "(study.study_date || coalesce(study.study_time, '')) COLLATE \"C\" >= '2024030110'" in pg


def test_statements_share_one_cache_key_across_values() -> None:
    """Values are bound parameters: queries of the same shape reuse SQLAlchemy's compiled form."""

    def statement(name: str, date: str) -> Select[Any]:
        ds = _identifier(QueryRetrieveLevel="STUDY", PatientName=name, StudyDate=date)
        return build_query(ds, STUDY_ROOT).select()

    first, second = statement("nguyen*", "20240101-"), statement("tran*", "20230101-")
    key1, key2 = first._generate_cache_key(), second._generate_cache_key()
    assert key1 is not None and key2 is not None
    assert key1.key == key2.key
    assert str(first.compile(dialect=sqlite.dialect())) == str(second.compile(dialect=sqlite.dialect()))


def test_unsupported_keys_are_not_selected() -> None:
    ds = _identifier(QueryRetrieveLevel="STUDY", PatientWeight="", StudyInstanceUID="", RetrieveAETitle="")
    stmt = build_query(ds, STUDY_ROOT).select()
    assert [c.name for c in stmt.selected_columns] == [PK_LABEL, "StudyInstanceUID"]


def test_where_returns_one_clause_per_condition() -> None:
    ds = _identifier(QueryRetrieveLevel="STUDY", PatientName="x*", AccessionNumber="A1", StudyDescription="")
    query = build_query(ds, STUDY_ROOT)
    assert len(query.where()) == 2
    assert [_sql(c) for c in query.where()] == [
        "study.accession_number = 'A1'",
        "patient.patient_name_folded GLOB 'x*'",
    ]
    assert study.c.accession_number is query.conditions[0].keys[0].column
