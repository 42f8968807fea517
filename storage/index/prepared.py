"""Hot-path statements compiled once per dialect and run on the DB-API cursor.

SQLAlchemy Core costs ~0.1-0.2 ms of Python per ``Connection.execute`` (execution context,
parameter processing for every column, result set-up); the ingest of one instance runs
about ten statements inside its transaction, which made SQLAlchemy a quarter of the
receiving process's GIL time. A :class:`Prepared` statement is the same Core construct,
compiled once for the engine's dialect (so the SQL is still SQLAlchemy's, on SQLite and
PostgreSQL alike), whose parameters go through the same type bind processors
(``TypeEngine.bind_processor``) and Python-side column defaults, executed on the DB-API
cursor of the ``Connection`` -- inside the same transaction.

Only for statements whose result needs no type processing: INSERTs and UPDATEs, and
SELECTs whose values are used as plain ints and strings (:class:`PlainRow`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Insert, Update
from sqlalchemy.sql.elements import ClauseElement


class PlainRow:
    """A result row with attribute access and values as the driver returned them."""

    __slots__ = ("_values",)

    def __init__(self, names: tuple[str, ...], values: Iterable[Any]) -> None:
        object.__setattr__(self, "_values", dict(zip(names, values, strict=True)))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def _asdict(self) -> dict[str, Any]:
        return dict(self._values)


class Prepared:
    """One Core statement, compiled for ``dialect`` with exactly the parameter ``keys``."""

    def __init__(self, statement: ClauseElement, dialect: Dialect, keys: Iterable[str]) -> None:
        keys = tuple(keys)
        defaults: dict[str, Any] = {}
        if isinstance(statement, Insert | Update):
            table = statement.table
            # Scalar Python-side defaults of the columns not given, as Core would add them
            # (on INSERT only; an UPDATE leaves other columns alone).
            if isinstance(statement, Insert):
                for column in table.columns:
                    default = column.default
                    if column.key not in keys and default is not None and default.is_scalar:
                        defaults[column.key] = default.arg
            compiled: Any = statement.compile(dialect=dialect, column_keys=[*keys, *defaults])
        else:
            compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        self._columns: tuple[str, ...] | None = None  # a SELECT's column names, on first use
        # Literal values the statement itself carries (the 1 of "n + 1"), then column defaults.
        fixed = {name: bind.value for name, bind in compiled.binds.items() if not bind.required}
        self._defaults = {**fixed, **defaults}
        self._positional = dialect.positional
        self._names: tuple[str, ...] = tuple(compiled.positiontup or ()) if self._positional else tuple(compiled.binds)
        self._processors: dict[str, Any] = {}
        for name in self._names:
            bind = compiled.binds[name]
            processor = dialect.type_descriptor(bind.type).bind_processor(dialect)
            if processor is not None:
                self._processors[name] = processor
        escaped = getattr(compiled, "escaped_bind_names", None) or {}
        self._escaped: Mapping[str, str] = escaped

    def _parameters(self, params: Mapping[str, Any]) -> Any:
        if self._defaults:
            params = {**self._defaults, **params}
        processors = self._processors
        if self._positional:
            out = []
            for name in self._names:
                value = params[name]
                processor = processors.get(name)
                out.append(processor(value) if processor is not None and value is not None else value)
            return out
        named = {}
        for name in self._names:
            value = params[name]
            processor = processors.get(name)
            named[self._escaped.get(name, name)] = (
                processor(value) if processor is not None and value is not None else value
            )
        return named

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """Run on ``conn``'s DB-API connection (in its transaction); returns the cursor.

        Driver errors are wrapped as SQLAlchemy wraps them (``IntegrityError``,
        ``OperationalError``...), so callers translate them in one place as before."""
        cursor = conn.connection.cursor()
        parameters = self._parameters(params)
        dbapi = conn.dialect.loaded_dbapi
        try:
            cursor.execute(self.sql, parameters)
        except dbapi.Error as exc:
            cursor.close()
            raise DBAPIError.instance(self.sql, parameters, exc, dbapi.Error) from exc
        return cursor

    def first(self, conn: Connection, params: Mapping[str, Any]) -> PlainRow | None:
        cursor = self.execute(conn, params)
        try:
            row = cursor.fetchone()
            if row is None:
                return None
            if self._columns is None:
                self._columns = tuple(d[0] for d in cursor.description)
            return PlainRow(self._columns, row)
        finally:
            cursor.close()

    def run(self, conn: Connection, params: Mapping[str, Any]) -> int:
        """Execute; returns the number of rows affected."""
        cursor = self.execute(conn, params)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def scalar(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """Execute a statement with RETURNING (or a SELECT) and return the first column."""
        cursor = self.execute(conn, params)
        try:
            row = cursor.fetchone()
            return None if row is None else row[0]
        finally:
            cursor.close()


_CACHE: dict[tuple[str, str, str, tuple[str, ...]], Prepared] = {}


def prepared(conn: Connection, name: str, statement: ClauseElement, keys: Iterable[str] = ()) -> Prepared:
    """The statement called ``name`` compiled for ``conn``'s dialect and parameter ``keys``
    (compiled on first use, then cached for the process)."""
    dialect = conn.dialect
    cache_key = (dialect.name, dialect.driver, name, tuple(keys))
    found = _CACHE.get(cache_key)
    if found is None:
        found = _CACHE[cache_key] = Prepared(statement, dialect, cache_key[3])
    return found
