"""Building the SQLAlchemy engine for the index, with the settings each backend needs.

SQLite: WAL journal (readers never block the writer), every write transaction made durable
before it is reported committed (a committed ingest survives power loss: a success status is a
promise), foreign keys on, a generous busy timeout, and ``BEGIN IMMEDIATE`` for write
transactions so that concurrent writers queue on the lock instead of deadlocking on a
read-to-write upgrade.

Durability without holding the lock: ``synchronous=NORMAL``, then :meth:`WriteLock.make_durable`
fdatasyncs the WAL file once the transaction has committed and the write lock is released.
``synchronous=FULL`` would fsync the WAL inside COMMIT, while the write lock is held: with
several receiver processes that lock is the queue of every ingest, and measured with two
processes and four associations ~1 ms of each ~2 ms hold was that fsync (moving it out gave
~6 % more instances/s). It is as durable: COMMIT has written the transaction's frames to the
WAL, and an fdatasync of the file afterwards flushes them (and every frame before them); a
frame reaches the database file only through a checkpoint, which with ``synchronous=NORMAL``
syncs the WAL before and the database file after; and a later transaction cannot be durable
without this one, WAL frames being valid only in order. Until the sync returns, the caller has
not been told the transaction committed (the ingest's success status waits for it).

PostgreSQL (psycopg 3; ``postgresql://`` URLs use it too): READ COMMITTED, the server's
durable commit (``synchronous_commit`` as the server has it, on by default), connections
checked before use (``pool_pre_ping``: after the server restarted, the pool reconnects instead
of failing the next ingest), a connect timeout and TCP keepalives (a server that vanished is
noticed within a minute), and no process-wide write lock: concurrent ingests are kept apart by
row locks and unique constraints (see :mod:`storage.index.repository`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import QueuePool

WRITE_OPTION = "filmless_write"


def index_url(url: str | URL) -> URL:
    """``url`` parsed, with PostgreSQL URLs that name no driver (``postgresql://``,
    ``postgres://``) set to psycopg 3, the driver filmless installs."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def create_index_engine(url: str | URL, *, echo: bool = False) -> Engine:
    """Create the engine for ``url`` (``sqlite:///path`` or ``postgresql://...``)."""
    url = index_url(url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        engine = create_engine(
            url,
            echo=echo,
            connect_args={"check_same_thread": False, "timeout": 60},
            # A connection is used by one thread at a time (checked out per transaction);
            # pooling saves the connect and PRAGMAs on every ingest.
            poolclass=QueuePool,
            pool_size=8,
            max_overflow=56,
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    if backend == "postgresql":
        connect_args: dict[str, Any] = {}
        if url.get_driver_name() == "psycopg":
            connect_args = {
                "connect_timeout": 10,
                "application_name": "filmless",
                "keepalives": 1,
                "keepalives_idle": 30,
                "keepalives_interval": 10,
                "keepalives_count": 3,
            }
        return create_engine(
            url,
            echo=echo,
            isolation_level="READ COMMITTED",
            pool_pre_ping=True,
            # Connections are held for one transaction; up to 32 at once per process (the
            # default max_associations), within PostgreSQL's default max_connections of 100
            # for the receiver and a compression worker or two.
            pool_size=8,
            max_overflow=24,
            pool_recycle=3600,
            connect_args=connect_args,
        )
    raise ValueError(f"unsupported index URL {url.render_as_string(hide_password=True)!r}: use sqlite:/// or postgresql://")


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's own is deferred only).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        # Durable all the same: Index.write() syncs the WAL after each write transaction
        # (see the module docstring and WriteLock.make_durable).
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    sql = "BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE_OPTION) else "BEGIN"
    # On the DB-API connection: exec_driver_sql's execution context costs ~0.1 ms of Python,
    # on every transaction. Errors are wrapped as SQLAlchemy wraps them.
    dbapi = conn.dialect.loaded_dbapi
    try:
        conn.connection.dbapi_connection.execute(sql).close()  # type: ignore[union-attr]
    except dbapi.Error as exc:
        raise DBAPIError.instance(sql, None, exc, dbapi.Error) from exc


class WriteLock:
    """Serialises SQLite write transactions across threads and processes without polling.

    SQLite's own busy handler waits for a locked database by sleeping 1, 2, 5, 10... ms at a
    time, so concurrent writers (pynetdicom runs one thread per association; several
    processes may share the file) lose milliseconds per transaction. A thread lock plus an
    ``flock`` on a side file make each writer wait exactly as long as the current one writes.
    PostgreSQL needs none of this: :func:`write_lock_for` returns a no-op lock for it.
    """

    def __init__(self, path: str | None, database: str | None = None) -> None:
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        if path is not None:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
        self._database = database

    def __enter__(self) -> WriteLock:
        self._thread_lock.acquire()
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except BaseException:
                self._thread_lock.release()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def make_durable(self) -> None:
        """Flush the write transactions committed so far to disk (fdatasync of the WAL; of
        the database file if a checkpoint has removed the WAL meanwhile). Called without the
        lock, after each write transaction: raises :class:`OSError` if the disk failed."""
        if self._database is None:
            return  # in memory: nothing to make durable
        for path in (self._database + "-wal", self._database):
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                if exc.errno == errno.ENOENT and path.endswith("-wal"):
                    continue  # checkpointed into the database file and removed
                raise
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
            return


class NoLock:
    """PostgreSQL's: no lock, and its COMMIT is durable by itself."""

    def __enter__(self) -> NoLock:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def close(self) -> None:
        return None

    def make_durable(self) -> None:
        return None


def write_lock_for(engine: Engine) -> WriteLock | NoLock:
    if engine.dialect.name != "sqlite":
        return NoLock()
    database = engine.url.database
    if not database or database == ":memory:":
        return WriteLock(None)
    return WriteLock(database + ".writelock", database)
