"""The versions of the index schema: alembic migrations, and indexes made before them.

A database is in one of these states (:func:`inspect`):

* empty (no filmless table): the migrations create the schema;
* made before alembic (``filmless_meta`` without ``alembic_version``; SQLite data directories
  of earlier filmless versions): adopted in place -- the columns of schema version 2 are added
  to a version 1 index, tables it lacks are created -- then stamped with the first revision;
* at a revision this filmless knows: upgraded to the head if behind;
* at a revision this filmless does not know, or with a ``filmless_meta`` schema version above
  :data:`SCHEMA_VERSION`: made by a newer filmless, and refused.

:func:`ensure` does what the state asks, in the caller's transaction (SQLite and PostgreSQL
both change their schema transactionally: a failed upgrade leaves the index as it was). On
PostgreSQL a transaction-level advisory lock makes processes that start together on the same
database take turns.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import Connection

from storage.errors import IndexUnavailable
from storage.index.schema import SCHEMA_VERSION, meta, metadata

log = logging.getLogger("filmless.index")

SCRIPT_LOCATION = Path(__file__).resolve().parent / "migrations"
BASELINE = "0001"
"""The first revision: schema version 2, where indexes made before alembic are stamped."""

_ADVISORY_LOCK = 0x66696C6D  # "film": the key of the schema lock on PostgreSQL
# Added to application_entity by schema version 2 (per-AE permissions): name, default.
_VERSION_2_COLUMNS = (
    ("may_echo", True),
    ("may_store", True),
    ("may_find", True),
    ("may_move", True),
    ("may_get", True),
    ("ascii_only", False),
)


def alembic_config(url: str | None = None, *, connection: Connection | None = None) -> Config:
    """An alembic configuration for the index migrations, on ``url`` or on ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    """The newest revision this filmless knows."""
    revision = _script().get_current_head()
    assert revision is not None
    return revision


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands."""

    revision: str | None
    """The alembic revision recorded in the database (None: none)."""
    schema_version: int | None
    """``filmless_meta``'s schema version (None: no filmless_meta)."""
    head: str
    """The newest revision this filmless knows."""

    @property
    def empty(self) -> bool:
        return self.revision is None and self.schema_version is None

    @property
    def before_alembic(self) -> bool:
        return self.revision is None and self.schema_version is not None

    @property
    def newer(self) -> bool:
        """Made by a newer filmless than this one."""
        if self.schema_version is not None and self.schema_version > SCHEMA_VERSION:
            return True
        return self.revision is not None and not _known(self.revision)

    @property
    def current(self) -> bool:
        return self.revision == self.head and not self.newer

    def describe(self) -> str:
        if self.empty:
            return "empty (no filmless schema)"
        if self.before_alembic:
            return f"schema version {self.schema_version}, made before migrations"
        version = f" (schema version {self.schema_version})" if self.schema_version is not None else ""
        if self.newer:
            return f"revision {self.revision}{version}, newer than this filmless (head {self.head})"
        if self.current:
            return f"revision {self.revision}{version}, up to date"
        return f"revision {self.revision}{version}, behind this filmless (head {self.head})"


def _known(revision: str) -> bool:
    try:
        return _script().get_revision(revision) is not None
    except CommandError:
        return False


def inspect(conn: Connection) -> SchemaState:
    """The state of the database ``conn`` is connected to."""
    revision = MigrationContext.configure(conn).get_current_revision()
    schema_version: int | None = None
    if sa.inspect(conn).has_table(meta.name):
        value = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
        schema_version = int(value) if value is not None else 1
    return SchemaState(revision, schema_version, head())


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK})


def ensure(conn: Connection) -> tuple[SchemaState, SchemaState]:
    """Bring the database of ``conn`` (in a transaction the caller commits) to the head, or
    raise :class:`IndexUnavailable` for an index made by a newer filmless. Returns the states
    before and after."""
    _lock(conn)
    before = inspect(conn)
    if before.newer:
        raise IndexUnavailable(
            f"the index is at {before.describe()}: upgrade filmless, or point it at another index"
        )
    if before.current:
        return before, before
    if before.before_alembic:
        _adopt(conn, before)
    config = alembic_config(connection=conn)
    if before.empty:
        log.info("creating the index schema (revision %s)", before.head)
    else:
        log.warning("index schema: %s; upgrading to revision %s", before.describe(), before.head)
    command.upgrade(config, "head")
    after = inspect(conn)
    return before, after


def _adopt(conn: Connection, state: SchemaState) -> None:
    """Make an index created before alembic (schema version 1 or 2) the first revision."""
    log.warning("index schema version %s predates migrations: adopting it", state.schema_version)
    assert state.schema_version is not None
    inspector = sa.inspect(conn)
    if state.schema_version < 2 and inspector.has_table("application_entity"):
        operations = Operations(MigrationContext.configure(conn))
        present = {c["name"] for c in inspector.get_columns("application_entity")}
        for name, default in _VERSION_2_COLUMNS:
            if name not in present:
                server_default = sa.true() if default else sa.false()
                column: sa.Column[bool] = sa.Column(name, sa.Boolean(), server_default=server_default, nullable=False)
                operations.add_column("application_entity", column)
    # Tables a version 1 index may lack were created on start-up by earlier filmless
    # versions (create_all); create them the same way.
    metadata.create_all(conn, checkfirst=True)
    conn.execute(sa.update(meta).where(meta.c.key == "schema_version").values(value="2"))
    if conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).first() is None:
        conn.execute(sa.insert(meta).values(key="schema_version", value="2"))
    MigrationContext.configure(conn).stamp(_script(), BASELINE)
