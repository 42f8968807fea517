"""The index fails under an ingest: nothing is acknowledged that is not committed, nothing
committed loses its object, and the archive recovers without being rebuilt.

* A COMMIT whose answer is lost (the connection dropped as the server committed, or before it
  did) -- on SQLite and PostgreSQL, by making the driver's commit fail after or instead of
  committing.
* A PostgreSQL server stopped (fast shutdown) and crashed (SIGKILL) under an open archive,
  then started again: ingests fail with IndexUnavailable while it is down and succeed again
  afterwards on the same engine (the pool reconnects).
* SQLite's WAL, synced after COMMIT (outside the write lock), failing to sync: the commit is
  uncertain, as when its answer is lost.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from filmless.bootstrap import Archive, build_archive
from filmless.settings import load_settings
from storage import part10
from storage.errors import IndexCommitUncertain, IndexUnavailable
from storage.index import Source, schema
from storage.ingest import CompressionMode, Outcome, Received
from storage.verify import verify
from tests.integration.conftest import counts, object_keys, rows
from tests.postgres import PostgresServer, postgres_bindir
from tests.unit.support import small_ct, to_part10

SOURCE = Source(aet="CT01", host="10.0.0.5")


def _cstore(data: bytes) -> Received:
    split = part10.split(data)
    ds = dcmread(BytesIO(data), stop_before_pixels=True)
    return Received(
        split.dataset,
        split.transfer_syntax_uid,
        SOURCE,
        expected_sop_class_uid=str(ds.SOPClassUID),
        expected_sop_instance_uid=str(ds.SOPInstanceUID),
    )


def _ct(n: int, seed: int) -> list[bytes]:
    return [to_part10(ds) for ds in small_ct(n, size=32, seed=seed)]


def _lose_the_commit_answer(archive: Archive, monkeypatch: pytest.MonkeyPatch, *, committed: bool) -> None:
    """Make the next commits fail as when the connection drops: after committing, or before."""
    dialect = archive.index.engine.dialect
    original = dialect.do_commit

    def do_commit(dbapi_connection: Any) -> None:
        if committed:
            original(dbapi_connection)
        raise dialect.loaded_dbapi.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(dialect, "do_commit", do_commit)


@pytest.mark.parametrize("committed", [True, False], ids=["committed", "not-committed"])
@pytest.mark.parametrize("mode", list(CompressionMode))
def test_a_commit_whose_answer_is_lost(
    make_archive: Callable[..., Archive], monkeypatch: pytest.MonkeyPatch, committed: bool, mode: CompressionMode
) -> None:
    archive = make_archive(compression={"mode": mode})
    (data,) = _ct(1, seed=5)
    _lose_the_commit_answer(archive, monkeypatch, committed=committed)
    with pytest.raises(IndexCommitUncertain):
        archive.ingest.store_received(_cstore(data))  # the sender gets a failure status
    monkeypatch.undo()
    # Either way the object is still there: had the commit happened, deleting it would lose
    # an instance the index lists.
    assert len(object_keys(archive)) == 1
    assert counts(archive)["instance"] == (1 if committed else 0)
    assert archive.ingest.settle_uncertain(min_age=0) == 1
    assert len(object_keys(archive)) == (1 if committed else 0)
    assert verify(archive.index, archive.store).ok
    # The sender tries again: stored now, or found stored.
    outcome = archive.ingest.store_received(_cstore(data)).outcome
    assert outcome is (Outcome.DUPLICATE if committed else Outcome.STORED)
    archive.compressor().drain()
    assert counts(archive)["instance"] == 1 and verify(archive.index, archive.store).ok


def test_objects_of_unknown_commits_are_settled_by_the_next_ingest(
    make_archive: Callable[..., Archive], monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = make_archive()
    first, second = _ct(2, seed=6)
    _lose_the_commit_answer(archive, monkeypatch, committed=False)
    with pytest.raises(IndexCommitUncertain):
        archive.ingest.store_received(_cstore(first))
    monkeypatch.undo()
    monkeypatch.setattr("storage.ingest._SETTLE_AFTER", 0.0)
    assert archive.ingest.store_received(_cstore(second)).outcome is Outcome.STORED
    assert {r.object_key for r in rows(archive, schema.instance)} == object_keys(archive)


# --------------------------------------------------------------- PostgreSQL stops and returns


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[PostgresServer]:
    """A durable PostgreSQL server of this test's own (it is stopped and crashed)."""
    if postgres_bindir() is None:
        pytest.skip("no PostgreSQL server installed")
    with PostgresServer(durable=True) as server:
        yield server


@pytest.mark.parametrize("how", ["stop", "crash"])
def test_postgresql_stops_under_an_open_archive(
    pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    for name in [n for n in os.environ if n.startswith("FILMLESS_")]:
        monkeypatch.delenv(name)
    archive = build_archive(load_settings({"data": tmp_path / "data", "index": pg.create_database("filmless")}))
    try:
        files = _ct(12, seed=7)
        for data in files[:4]:
            assert archive.ingest.store_received(_cstore(data)).outcome is Outcome.STORED
        pg.stop() if how == "stop" else pg.crash()
        for data in files[4:8]:
            with pytest.raises(IndexUnavailable):
                archive.ingest.store_received(_cstore(data))
        with pytest.raises(IndexUnavailable):
            archive.compressor().run_once()
        pg.start()  # same port, same cluster; the archive is not rebuilt
        for data in files[4:]:
            assert archive.ingest.store_received(_cstore(data)).outcome is Outcome.STORED
        archive.compressor().drain()
        assert counts(archive)["instance"] == 12
        assert {r.object_key for r in rows(archive, schema.instance)} == object_keys(archive)
        assert verify(archive.index, archive.store).ok
    finally:
        archive.close()


# ------------------------------------------------------- SQLite: the WAL synced after COMMIT


def _sqlite_only(archive: Archive) -> None:
    if archive.index.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL's COMMIT is durable by itself")


def test_sqlite_commits_are_synced_once_the_write_lock_is_released(
    make_archive: Callable[..., Archive], monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = make_archive()
    _sqlite_only(archive)
    (data,) = _ct(1, seed=7)
    events: list[str] = []
    lock_type = type(archive.index._write_lock)
    real_exit, real_sync = lock_type.__exit__, os.fdatasync

    def exit_and_note(self: Any, *exc: object) -> None:
        real_exit(self, *exc)
        events.append("unlock")

    def sync_and_note(fd: int) -> None:
        events.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_sync(fd)

    monkeypatch.setattr(lock_type, "__exit__", exit_and_note)
    monkeypatch.setattr("storage.index.engine.os.fdatasync", sync_and_note)
    assert archive.ingest.store_received(_cstore(data)).outcome is Outcome.STORED
    database = os.path.realpath(str(archive.index.engine.url.database))
    # The ingest's transaction: its lock released, then the WAL flushed, before the success.
    assert events[-2:] == ["unlock", database + "-wal"], events
    with archive.index.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL: COMMIT itself does not sync


def test_a_commit_that_cannot_be_made_durable_is_uncertain(
    make_archive: Callable[..., Archive], monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = make_archive()
    _sqlite_only(archive)
    (data,) = _ct(1, seed=8)

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("storage.index.engine.os.fdatasync", failing)
    with pytest.raises(IndexCommitUncertain, match="durable"):
        archive.ingest.store_received(_cstore(data))  # the sender gets a failure status
    monkeypatch.undo()
    # Committed but perhaps not on disk: the row stands, and its object is kept.
    assert counts(archive)["instance"] == 1 and len(object_keys(archive)) == 1
    assert archive.ingest.settle_uncertain(min_age=0) == 1
    assert len(object_keys(archive)) == 1 and verify(archive.index, archive.store).ok
    assert archive.ingest.store_received(_cstore(data)).outcome is Outcome.DUPLICATE
