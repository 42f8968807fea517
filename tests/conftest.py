"""Fixtures of every test directory: the PostgreSQL server of the session, and the index
backends (SQLite, PostgreSQL) the index tests run on.

A test that asks for ``index_backend`` (directly or through ``new_index_url``, as the
integration tests' ``make_archive`` does) runs once per backend: ``test_x[sqlite]`` and
``test_x[postgresql]``. The PostgreSQL server (tests/postgres.py) starts on first use, once per
session, on 127.0.0.1 and a free port; each test gets databases of its own, dropped after it.
Without a PostgreSQL server installed the postgresql variants are skipped, except under CI,
where that is an error (``make test`` installs it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from tests.postgres import BACKENDS, PostgresServer, postgres_bindir


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server (no fsync: fast, not crash-safe)."""
    if postgres_bindir() is None:
        message = "no PostgreSQL server installed (scripts/install-test-deps.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=BACKENDS)
def index_backend(request: pytest.FixtureRequest) -> str:
    """The index backend of this run of the test."""
    return str(request.param)


@pytest.fixture
def new_index_url(index_backend: str, request: pytest.FixtureRequest) -> Iterator[Callable[[], str | None]]:
    """A function returning the URL of a new, empty index on the test's backend: a new database
    on the session's PostgreSQL server, or None on SQLite (the archive's default file)."""
    if index_backend == "sqlite":
        yield lambda: None
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    made: list[str] = []

    def new() -> str:
        url = server.create_database()
        made.append(url.rsplit("/", 1)[1])
        return url

    yield new
    for name in made:
        server.drop_database(name)

