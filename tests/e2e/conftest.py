"""Fixtures of the end-to-end tests: synthetic studies on disk, pydicom's sample files, and
running ``filmless serve`` processes (tests.peers.FilmlessServer) on loopback.

A server started by a fixture keeps its temporary directory (and log) when a test that used
it failed; the path is printed on stderr.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from pynetdicom import _config as pynetdicom_config

from tests.e2e.support import SERVE_ARGS, StartFilmless, Synthetic
from tests.peers import FilmlessServer


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> Synthetic:
    return Synthetic(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def start_filmless(request: pytest.FixtureRequest) -> StartFilmless:
    """``with start_filmless(*extra_args, **FilmlessServer_kwargs) as server:`` - a running
    ``filmless serve`` on loopback; its directory is kept if a test failed meanwhile."""

    @contextlib.contextmanager
    def start(*extra_args: str, **kwargs: Any) -> Iterator[FilmlessServer]:
        server = FilmlessServer(extra_args=[*SERVE_ARGS, *extra_args], **kwargs)
        failed_before = request.session.testsfailed
        with server:
            try:
                yield server
            finally:
                if request.session.testsfailed > failed_before:
                    server.keep = True
                    print(f"\nfilmless: kept {server.workdir} (log: {server.log_path})")

    return start


@pytest.fixture
def raw_c_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make pynetdicom send a file's dataset bytes as they are (no decode, no re-encode),
    with the SOP Class/Instance and transfer syntax taken from its file meta."""
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
