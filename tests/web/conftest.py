"""Fixtures of the web tests: a real archive (index on the test's backend, local objects) behind
the FastAPI app, reached in-process with Starlette's TestClient (httpx), and one user per role.

``web.client(role)`` is a client whose requests carry that role's access token;
``web.anonymous`` carries none. ``web.ingest_file(path)`` puts a file in through the same ingest
path C-STORE uses.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from filmless.bootstrap import Archive, build_archive
from filmless.settings import Settings
from storage.index.users import ROLES, Users
from storage.index import Source
from viewer_api.app import create_app
from viewer_api.security import hash_password

PASSWORD = "correct horse battery"


@dataclass
class WebArchive:
    archive: Archive
    app: Any
    anonymous: TestClient
    tokens: dict[str, str] = field(default_factory=dict)
    _clients: dict[str, TestClient] = field(default_factory=dict)

    def client(self, role: str = "admin") -> TestClient:
        if role not in self._clients:
            client = TestClient(self.app, raise_server_exceptions=False)
            client.headers["Authorization"] = f"Bearer {self.tokens[role]}"
            self._clients[role] = client
        return self._clients[role]

    def ingest_file(self, path: Path | str) -> Any:
        data = Path(path).read_bytes()
        return self.archive.ingest.store_file(data, Source(aet="TEST", host="127.0.0.1"))

    def flush_audit(self) -> None:
        self.app.state.web.audit.flush()

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self.anonymous.__exit__(None, None, None)
        self.archive.close()


@pytest.fixture
def make_web(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, new_index_url: Callable[[], str | None]
) -> Iterator[Callable[..., WebArchive]]:
    for name in list(os.environ):
        if name.startswith("FILMLESS_"):
            monkeypatch.delenv(name)
    made: list[WebArchive] = []

    def make(**overrides: Any) -> WebArchive:
        if "index" not in overrides:
            overrides["index"] = new_index_url()
        archive = build_archive(Settings(data=tmp_path / f"web{len(made)}", **overrides))
        users = Users(archive.index)
        password_hash = hash_password(PASSWORD)
        for role in ROLES:
            users.add(f"{role}1", role, password_hash)
        app = create_app(archive)
        anonymous = TestClient(app, raise_server_exceptions=False)
        anonymous.__enter__()  # runs the lifespan (closes the audit writer at the end)
        web = WebArchive(archive, app, anonymous)
        for role in ROLES:
            reply = anonymous.post("/api/token", data={"username": f"{role}1", "password": PASSWORD})
            assert reply.status_code == 200, reply.text
            web.tokens[role] = reply.json()["access_token"]
        made.append(web)
        return web

    yield make
    for web in made:
        web.close()


@pytest.fixture
def web(make_web: Callable[..., WebArchive]) -> WebArchive:
    return make_web()
