"""DICOM matching for C-FIND, QIDO-RS and the modality worklist: pure constraints compiled to
SQL over the index (one core, two front doors).

Typical use by a front door::

    query = build_query(identifier, STUDY_ROOT, MatchOptions(retrieve_ae_title="FILMLESS"))
    with index.read() as conn:
        for row in conn.execute(query.select(limit=500)):
            yield query.response(row._mapping)

:func:`build_query` raises a :class:`QueryError` for identifiers that break the rules.
"""

from storage.query.build import (
    DEFAULT_OPTIONS,
    Condition,
    IgnoredKey,
    MatchOptions,
    Query,
    ReturnKey,
    build_query,
)
from storage.query.constraints import (
    AnyOf,
    Constraint,
    DateTimePair,
    EmptyValue,
    Number,
    Range,
    SequenceItem,
    SingleValue,
    SomeValue,
    TextRule,
    UIDList,
    Universal,
    Wildcard,
)
from storage.query.errors import (
    IdentifierError,
    InvalidKeyValue,
    InvalidRange,
    KeyBelowLevel,
    MissingQueryLevel,
    MissingUniqueKey,
    NonUniqueKeyAbove,
    QueryError,
    SequenceKeyError,
    UnknownQueryLevel,
    UnsupportedKey,
    UnsupportedMatching,
)
from storage.query.keys import PATIENT_ROOT, STUDY_ROOT, InformationModel, KeySpec, LevelSpec, QueryLevel
from storage.query.parse import parse_value
from storage.query.response import record_from_row, response_identifier
from storage.query.sql import compile_constraint, select_for, where_clauses

__all__ = [
    "DEFAULT_OPTIONS",
    "PATIENT_ROOT",
    "STUDY_ROOT",
    "AnyOf",
    "Condition",
    "Constraint",
    "DateTimePair",
    "EmptyValue",
    "IdentifierError",
    "IgnoredKey",
    "InformationModel",
    "InvalidKeyValue",
    "InvalidRange",
    "KeyBelowLevel",
    "KeySpec",
    "LevelSpec",
    "MatchOptions",
    "MissingQueryLevel",
    "MissingUniqueKey",
    "NonUniqueKeyAbove",
    "Number",
    "Query",
    "QueryError",
    "QueryLevel",
    "Range",
    "ReturnKey",
    "SequenceItem",
    "SequenceKeyError",
    "SingleValue",
    "SomeValue",
    "TextRule",
    "UIDList",
    "Universal",
    "UnknownQueryLevel",
    "UnsupportedKey",
    "UnsupportedMatching",
    "Wildcard",
    "build_query",
    "compile_constraint",
    "parse_value",
    "record_from_row",
    "response_identifier",
    "select_for",
    "where_clauses",
]
