"""Constraints compiled to SQLAlchemy Core: the one place query matching becomes SQL.

Each constraint of :mod:`storage.query.constraints` becomes a where-clause with the same
meaning as its ``matches``, on SQLite and PostgreSQL alike:

* exact single values are ``=`` and ``IN`` (indexable everywhere);
* wild cards (PS3.4 C.2.2.2.4) and case-insensitive text are a pattern match compiled per
  dialect: SQLite ``GLOB`` (case-sensitive, unlike its ``LIKE``; an index can serve the
  literal prefix), PostgreSQL ``LIKE ... ESCAPE '\\'`` or, for case-insensitive patterns,
  an anchored regular expression with character classes (``[nN]``), which follows Unicode
  case rules where ``lower()`` on SQLite would not;
* ranges (PS3.4 C.2.2.2.5) compare strings bytewise (``COLLATE "C"`` on PostgreSQL);
* accent-insensitive person names compare the folded query with the ``*_folded`` column;
* ModalitiesInStudy / SOPClassesInStudy match through EXISTS over the study's series and
  instances, and OtherPatientIDsSequence items through the JSON functions of each dialect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Boolean, FromClause, Select, String, and_, cast, collate, func, literal, or_, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnClause, ColumnElement, Grouping
from sqlalchemy.sql.visitors import InternalTraversal

from storage.index.schema import instance, patient, series, study
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
    Wildcard,
    case_variants,
)
from storage.query.keys import JsonItems, QueryLevel

if TYPE_CHECKING:
    from storage.query.build import Condition, Query

LIKE_ESCAPE = "\\"
_GLOB_SPECIAL = frozenset("*?[")


# --- pattern translation (pure) ------------------------------------------------------------
def like_pattern(pattern: str, *, wildcards: bool = True, escape: str = LIKE_ESCAPE) -> str:
    """A DICOM pattern as a SQL LIKE pattern: ``*`` -> ``%``, ``?`` -> ``_``; a literal ``%``,
    ``_`` or escape character is escaped so it matches only itself."""
    out: list[str] = []
    for ch in pattern:
        if wildcards and ch == "*":
            out.append("%")
        elif wildcards and ch == "?":
            out.append("_")
        elif ch in ("%", "_", escape):
            out.append(escape + ch)
        else:
            out.append(ch)
    return "".join(out)


def _class(chars: frozenset[str], escape: Any) -> str:
    return "[" + "".join(escape(c) for c in sorted(chars)) + "]"


def glob_pattern(pattern: str, rule: TextRule = TextRule.EXACT, *, wildcards: bool = True) -> str:
    """A DICOM pattern as a SQLite GLOB pattern (``*`` and ``?`` keep their meaning; a
    literal ``*``, ``?`` or ``[`` becomes a one-character class; case-insensitive letters
    become classes of their case variants)."""
    out: list[str] = []
    for ch in pattern:
        if wildcards and ch in "*?":
            out.append(ch)
        elif rule is TextRule.CASE_INSENSITIVE and len(variants := case_variants(ch)) > 1:
            out.append(_class(variants, lambda c: c))
        elif ch in _GLOB_SPECIAL:
            out.append(f"[{ch}]")
        else:
            out.append(ch)
    return "".join(out)


def _regex_literal(ch: str) -> str:
    return ch if ch.isalnum() or not ch.isascii() else "\\" + ch


def regex_pattern(pattern: str, rule: TextRule = TextRule.EXACT, *, wildcards: bool = True) -> str:
    """A DICOM pattern as an anchored POSIX regular expression (PostgreSQL ``~``)."""
    out: list[str] = ["^"]
    for ch in pattern:
        if wildcards and ch == "*":
            out.append(".*")
        elif wildcards and ch == "?":
            out.append(".")
        elif rule is TextRule.CASE_INSENSITIVE and len(variants := case_variants(ch)) > 1:
            out.append(_class(variants, _regex_literal))
        else:
            out.append(_regex_literal(ch))
    out.append("$")
    return "".join(out)


# --- dialect-specific constructs -----------------------------------------------------------
class PatternMatch(ColumnElement[bool]):
    """``expr`` matches a DICOM pattern (wild cards and/or case-insensitive letters)."""

    __visit_name__ = "filmless_pattern_match"
    inherit_cache = True
    _is_implicitly_boolean = True
    type = Boolean()
    _traverse_internals = [
        ("expr", InternalTraversal.dp_clauseelement),
        ("glob_param", InternalTraversal.dp_clauseelement),
        ("like_param", InternalTraversal.dp_clauseelement),
        ("regex_param", InternalTraversal.dp_clauseelement),
        ("case_insensitive", InternalTraversal.dp_boolean),
    ]

    def __init__(self, expr: ColumnElement[Any], pattern: str, rule: TextRule, *, wildcards: bool) -> None:
        self.expr = expr
        self.case_insensitive = rule is TextRule.CASE_INSENSITIVE
        self.glob_param = literal(glob_pattern(pattern, rule, wildcards=wildcards), String)
        lowered = pattern.lower() if self.case_insensitive else pattern
        self.like_param = literal(like_pattern(lowered, wildcards=wildcards), String)
        self.regex_param = literal(regex_pattern(pattern, rule, wildcards=wildcards), String)


@compiles(PatternMatch, "sqlite")
def _pattern_sqlite(element: PatternMatch, compiler: SQLCompiler, **kw: Any) -> str:
    return f"{compiler.process(element.expr, **kw)} GLOB {compiler.process(element.glob_param, **kw)}"


@compiles(PatternMatch, "postgresql")
def _pattern_postgresql(element: PatternMatch, compiler: SQLCompiler, **kw: Any) -> str:
    if element.case_insensitive:
        return f"{compiler.process(element.expr, **kw)} ~ {compiler.process(element.regex_param, **kw)}"
    return compiler.process(element.expr.like(element.like_param, escape=LIKE_ESCAPE), **kw)


@compiles(PatternMatch)
def _pattern_default(element: PatternMatch, compiler: SQLCompiler, **kw: Any) -> str:
    # Other databases: LIKE, whose case rules are the database's (only SQLite and PostgreSQL
    # are supported index backends).
    expr: ColumnElement[Any] = func.lower(element.expr) if element.case_insensitive else element.expr
    return compiler.process(expr.like(element.like_param, escape=LIKE_ESCAPE), **kw)


class Bytewise(ColumnElement[Any]):
    """``expr`` compared code unit by code unit: ``COLLATE "C"`` on PostgreSQL (whose default
    collation may ignore punctuation), as is on SQLite (BINARY)."""

    __visit_name__ = "filmless_bytewise"
    inherit_cache = True
    _traverse_internals = [("expr", InternalTraversal.dp_clauseelement)]

    def __init__(self, expr: ColumnElement[Any]) -> None:
        self.expr = expr
        self.type = expr.type


@compiles(Bytewise, "postgresql")
def _bytewise_postgresql(element: Bytewise, compiler: SQLCompiler, **kw: Any) -> str:
    expr = element.expr if isinstance(element.expr, ColumnClause) else Grouping(element.expr)
    return compiler.process(collate(expr, "C"), **kw)


@compiles(Bytewise)
def _bytewise_default(element: Bytewise, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.expr, **kw)


class ByDialect(ColumnElement[bool]):
    """One of two equivalent conditions, chosen by the dialect compiling it."""

    __visit_name__ = "filmless_by_dialect"
    inherit_cache = True
    _is_implicitly_boolean = True
    type = Boolean()
    _traverse_internals = [
        ("sqlite", InternalTraversal.dp_clauseelement),
        ("postgresql", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, sqlite: ColumnElement[bool], postgresql: ColumnElement[bool]) -> None:
        self.sqlite = sqlite
        self.postgresql = postgresql


@compiles(ByDialect, "sqlite")
def _by_dialect_sqlite(element: ByDialect, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.sqlite, **kw)


@compiles(ByDialect)
def _by_dialect_default(element: ByDialect, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.postgresql, **kw)


# --- constraints to where-clauses ----------------------------------------------------------
def _is_text(expr: ColumnElement[Any]) -> bool:
    return isinstance(expr.type, String)


def compile_constraint(
    constraint: Constraint,
    column: ColumnElement[Any],
    folded: ColumnElement[Any] | None = None,
) -> ColumnElement[bool]:
    """The where-clause of ``constraint`` on ``column`` (``folded``: the accent-folded search
    key of the same attribute, for :attr:`TextRule.ACCENT_INSENSITIVE`)."""
    if constraint.is_universal:
        raise ValueError("universal matching has no where-clause")
    if isinstance(constraint, EmptyValue):
        return or_(column.is_(None), column == "") if _is_text(column) else column.is_(None)
    if isinstance(constraint, (SingleValue, Wildcard)):
        wildcards = isinstance(constraint, Wildcard)
        text = constraint.pattern if isinstance(constraint, Wildcard) else constraint.value
        if constraint.rule is TextRule.ACCENT_INSENSITIVE:
            if folded is None:
                raise ValueError("accent-insensitive matching needs the folded column")
            column, rule = folded, TextRule.EXACT
        else:
            rule = constraint.rule
        if not wildcards and rule is TextRule.EXACT:
            return column == text
        return PatternMatch(column, text, rule, wildcards=wildcards)
    if isinstance(constraint, UIDList):
        uids = list(constraint.uids)
        return column == uids[0] if len(uids) == 1 else column.in_(uids)
    if isinstance(constraint, Number):
        return column == constraint.value
    if isinstance(constraint, Range):
        return _range(Bytewise(column), constraint, column)
    if isinstance(constraint, AnyOf):
        return or_(*(compile_constraint(c, column, folded) for c in constraint.alternatives))
    raise TypeError(f"{type(constraint).__name__} needs its key's context (see condition_clause)")


def _range(expr: ColumnElement[Any], constraint: Range, nonempty: ColumnElement[Any]) -> ColumnElement[bool]:
    clauses: list[ColumnElement[bool]] = []
    if constraint.lower is not None:
        clauses.append(expr >= constraint.lower)
    else:
        clauses.append(nonempty != "")
    if constraint.upper_limit is not None:
        clauses.append(expr < constraint.upper_limit)
    return and_(*clauses)


def _json_items(items: JsonItems, constraint: SequenceItem) -> ColumnElement[bool]:
    """EXISTS an item of the JSON list whose fields match every item key (PS3.4 C.2.2.2.6)."""

    def exists(rows: FromClause, field: Any) -> ColumnElement[bool]:
        clauses: list[ColumnElement[bool]] = []
        for keyword, inner in constraint.fields:
            if inner.is_universal:
                continue
            item_key = items.item_key(keyword)
            assert item_key is not None
            clauses.append(compile_constraint(inner, field(rows, item_key.field)))
        return select(literal(1)).select_from(rows).where(*clauses).exists()

    sqlite_rows = func.json_each(items.column).table_valued("value").alias("item")
    pg_rows = func.json_array_elements(cast(items.column, JSON)).table_valued("value").alias("item")
    return ByDialect(
        exists(sqlite_rows, lambda rows, name: func.json_extract(rows.c.value, f"$.{name}", type_=String)),
        exists(pg_rows, lambda rows, name: rows.c.value.op("->>", return_type=String)(literal(name, String))),
    )


def condition_clause(condition: Condition) -> ColumnElement[bool]:
    """The where-clause of one condition of a query."""
    constraint = condition.constraint
    if isinstance(constraint, DateTimePair):
        date_key, time_key = condition.keys
        assert date_key.column is not None and time_key.column is not None
        joined = date_key.column.concat(func.coalesce(time_key.column, ""))
        return and_(date_key.column != "", _range(Bytewise(joined), constraint.range, date_key.column))
    key = condition.keys[0]
    if isinstance(constraint, SequenceItem):
        assert key.items is not None
        return _json_items(key.items, constraint)
    if isinstance(constraint, SomeValue):
        assert key.children is not None
        children = key.children
        inner = compile_constraint(constraint.inner, children.column)
        return select(literal(1)).select_from(children.from_).where(children.link, inner).exists()
    assert key.column is not None
    return compile_constraint(constraint, key.column, key.folded)


def where_clauses(query: Query) -> list[ColumnElement[bool]]:
    """The where-clauses of every condition of ``query`` (to be joined with AND)."""
    return [condition_clause(c) for c in query.conditions]


LEVEL_TABLES: dict[QueryLevel, tuple[Any, FromClause]] = {
    QueryLevel.PATIENT: (patient, patient),
    QueryLevel.STUDY: (study, study.join(patient, study.c.patient_pk == patient.c.pk)),
    QueryLevel.SERIES: (
        series,
        series.join(study, series.c.study_pk == study.c.pk).join(patient, study.c.patient_pk == patient.c.pk),
    ),
    QueryLevel.IMAGE: (
        instance,
        instance.join(series, instance.c.series_pk == series.c.pk)
        .join(study, series.c.study_pk == study.c.pk)
        .join(patient, study.c.patient_pk == patient.c.pk),
    ),
}
"""The table of each level and the join of it with the levels above (one row per entity)."""

PK_LABEL = "level_pk"
"""The label of the level table's primary key in :func:`select_for` rows (for paging)."""


def select_for(query: Query, *, limit: int | None = None, offset: int | None = None) -> Select[Any]:
    """SELECT the return keys (each labelled with its keyword) of the entities of the query's
    level that match, ordered by the level table's primary key."""
    table, joined = LEVEL_TABLES[query.level]
    columns: list[ColumnElement[Any]] = [table.c.pk.label(PK_LABEL)]
    for rk in query.return_keys:
        if rk.key is not None and rk.key.column is not None:
            columns.append(rk.key.column.label(rk.keyword))
    stmt = select(*columns).select_from(joined).where(*where_clauses(query)).order_by(table.c.pk)
    if limit is not None:
        stmt = stmt.limit(limit)
    if offset is not None:
        stmt = stmt.offset(offset)
    return stmt
