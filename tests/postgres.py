"""A private PostgreSQL server for the tests: Debian's ``initdb`` and ``postgres`` in a fresh
temporary directory, listening on ``127.0.0.1`` and a free port only.

PostgreSQL refuses to run as root; as root the programs are started through ``setpriv`` as the
``postgres`` user (created by Debian's package), which owns the directory. ``setpriv`` execs,
so the process started is the postmaster itself and is stopped by its pid: SIGINT, PostgreSQL's
"fast" shutdown, which ends the open sessions (SIGTERM would wait for every client to leave).

The server of the test session runs without fsync (a test never survives a power cut); a
server made with ``durable=True`` keeps PostgreSQL's defaults, for tests that stop or crash it
and count what survived. Each test gets a database of its own (:meth:`PostgresServer.create_database`).

Example::

    with PostgresServer() as pg:
        url = pg.create_database()      # postgresql+psycopg://postgres@127.0.0.1:PORT/NAME
        ...
        pg.stop(); pg.start()            # the same cluster again, same port
"""

from __future__ import annotations

import itertools
import os
import pwd
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.peers import LOOPBACK, PeerError, StrPath, _ManagedProcess, free_port

if TYPE_CHECKING:
    import pytest

BACKENDS = ("sqlite", "postgresql")
"""The index backends the index tests run on (see tests/conftest.py)."""

PG_LIB = Path("/usr/lib/postgresql")
"""Where Debian installs each PostgreSQL major version (``15/bin/postgres``...)."""

_NAMES = itertools.count(1)
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


def postgres_bindir() -> Path | None:
    """The ``bin`` directory of the newest installed PostgreSQL server, or ``None``.

    ``FILMLESS_TEST_PG_BIN`` names another one (e.g. a self-built server)."""
    override = os.environ.get("FILMLESS_TEST_PG_BIN")
    if override:
        return Path(override)
    found = [
        p / "bin"
        for p in PG_LIB.glob("*")
        if p.name.isdigit() and (p / "bin" / "postgres").is_file() and (p / "bin" / "initdb").is_file()
    ]
    if not found:
        return None
    return max(found, key=lambda p: int(p.parent.name))


def _runs_as() -> list[str]:
    """The command prefix that drops root privileges to the ``postgres`` user (none otherwise)."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]


class PostgresServer(_ManagedProcess):
    """``postgres`` on 127.0.0.1 with a cluster made by ``initdb`` in a temporary directory.

    Layout of :attr:`workdir`: ``data/`` (the cluster), the server's Unix socket and
    ``postgres.log``. The superuser is ``postgres``, authenticated by ``trust`` (loopback only).
    """

    name = "postgres"
    log_name = "postgres.log"

    def __init__(
        self,
        *,
        port: int | None = None,
        bindir: StrPath | None = None,
        durable: bool = False,
        settings: Mapping[str, str] | None = None,
        workdir: StrPath | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 60.0,
        stop_timeout: float = 30.0,
        keep: bool = False,
    ) -> None:
        """Prepare (but do not start) a server.

        Args:
            port: TCP port on 127.0.0.1; a free one by default.
            bindir: the directory of ``initdb`` and ``postgres``; :func:`postgres_bindir` by default.
            durable: keep fsync and synchronous commit on (PostgreSQL's defaults).
            settings: more ``-c name=value`` server settings.
            workdir: use this directory instead of a fresh temporary one (never deleted).
        """
        found = Path(bindir) if bindir is not None else postgres_bindir()
        if found is None:
            raise PeerError("no PostgreSQL server installed (scripts/install-test-deps.sh installs it)")
        self.bindir = found
        super().__init__(
            workdir=workdir, env=env, startup_timeout=startup_timeout, stop_timeout=stop_timeout, keep=keep
        )
        self.port = port if port is not None else free_port()
        self.datadir = self.workdir / "data"
        self.settings: dict[str, str] = {
            "listen_addresses": LOOPBACK,
            "unix_socket_directories": str(self.workdir),
            "max_connections": "300",
            "shared_buffers": "64MB",
        }
        if not durable:
            self.settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        self.settings.update(settings or {})
        self.user = "postgres"
        self._prefix = _runs_as()
        if self._prefix:
            entry = pwd.getpwnam("postgres")
            os.chown(self.workdir, entry.pw_uid, entry.pw_gid)
        # Locale C.UTF-8: Unicode text, collation by code point. The index's SQL does not rely
        # on it (ranges are COLLATE "C" explicitly).
        self.env.update(LC_ALL="C.UTF-8", LANG="C.UTF-8", TZ="UTC")

    # -- life cycle
    def _initdb(self) -> None:
        command = [
            *self._prefix,
            str(self.bindir / "initdb"),
            "--pgdata",
            str(self.datadir),
            "--username",
            self.user,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C.UTF-8",
            "--no-sync",
        ]
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=self.env, cwd=self.workdir
        )
        if result.returncode != 0:
            self._failed = True
            raise PeerError(f"initdb failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")

    def _command(self) -> list[str]:
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb()
        options = [f"--{name.replace('_', '-')}={value}" for name, value in self.settings.items()]
        return [*self._prefix, str(self.bindir / "postgres"), "-D", str(self.datadir), "-p", str(self.port), *options]

    def _wait_ready(self, process: subprocess.Popen[bytes], deadline: float) -> None:
        import psycopg

        while True:
            if process.poll() is not None:
                raise PeerError(f"postgres exited with {process.returncode}")
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=1) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"postgres did not accept connections on {LOOPBACK}:{self.port}")
            time.sleep(0.05)

    def stop(self, timeout: float | None = None) -> int | None:
        """Fast shutdown (SIGINT): open sessions are ended, the cluster is checkpointed; SIGKILL
        of the process group if it takes longer than the stop timeout."""
        process = self.process
        if process is not None and process.poll() is None:
            try:
                process.send_signal(signal.SIGINT)
            except ProcessLookupError:
                pass
            try:
                process.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self._failed = True
                print(f"postgres (pid {process.pid}) ignored SIGINT; killing it", file=sys.stderr)
        return super().stop(timeout)

    def crash(self) -> int | None:
        """SIGKILL the postmaster and every backend at once (a crash); :meth:`start` recovers."""
        return self.kill()

    # -- databases
    def dsn(self, database: str) -> str:
        """A libpq connection string for ``database`` (as the superuser, over TCP)."""
        return f"host={LOOPBACK} port={self.port} user={self.user} dbname={database}"

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database`` (psycopg 3)."""
        return f"postgresql+psycopg://{self.user}@{LOOPBACK}:{self.port}/{database}"

    def execute(self, sql: str, params: Sequence[Any] | None = None, *, database: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement outside a transaction (CREATE/DROP DATABASE); returns its rows."""
        import psycopg

        with psycopg.connect(self.dsn(database), autocommit=True, connect_timeout=10) as conn:
            cursor = conn.execute(sql.encode(), params)
            return list(cursor.fetchall()) if cursor.description else []

    def create_database(self, name: str | None = None, *, template: str = "template0") -> str:
        """Create an empty database (a new name unless ``name`` is given); returns its URL."""
        name = name or f"t{os.getpid()}_{next(_NAMES)}"
        for identifier in (name, template):
            if not _IDENTIFIER.fullmatch(identifier):
                raise ValueError(f"not a plain identifier: {identifier!r}")
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, ending its sessions first."""
        if not _IDENTIFIER.fullmatch(name):
            raise ValueError(f"not a plain identifier: {name!r}")
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def index_url_for(backend: str, request: pytest.FixtureRequest, directory: Path) -> str:
    """The URL of a new, empty index on ``backend``, for fixtures of a wider scope than one
    test: a SQLite file in ``directory``, or a new database on the session's PostgreSQL server
    (the ``postgres`` fixture of tests/conftest.py)."""
    if backend == "sqlite":
        return f"sqlite:///{directory / 'index.sqlite'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()
