"""Signing in to a running `filmless serve` over real HTTP: the API is not opened to the network
while nobody could sign in; FILMLESS_INITIAL_ADMIN_PASSWORD makes the first user; `filmless user
add` from another process makes the next. docker-compose.yml wires both settings."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from tests.e2e.support import StartFilmless, run_cli
from tests.e2e.test_compose import compose_config, filled_env_file, resolved_config
from tests.peers import LOOPBACK, filmless_command, free_port, peer_env

pytestmark = [pytest.mark.e2e]

ADMIN_PASSWORD = "quản trị viên 2025"
NEW_PASSWORD = "bác sĩ Lan đọc phim"


def _token(http: httpx.Client, username: str, password: str) -> httpx.Response:
    return http.post("/api/token", data={"username": username, "password": password})


def test_serve_on_the_network_without_users_refuses_to_start(tmp_path: Path) -> None:
    result = run_cli(
        "serve",
        "--data", str(tmp_path / "data"),
        "--dicom-host", LOOPBACK,
        "--dicom-port", str(free_port()),
        "--http-host", "0.0.0.0",
        "--http-port", str(free_port()),
        env={"FILMLESS_INITIAL_ADMIN_PASSWORD": ""},  # empty: unset
        timeout=120,
    )
    assert result.returncode != 0
    assert "refusing to serve the HTTP API on 0.0.0.0: no user exists" in result.stderr
    assert "filmless user add" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_initial_admin_and_a_user_added_by_the_cli_sign_in_over_http(start_filmless: StartFilmless) -> None:
    with start_filmless("--http-host", "0.0.0.0", env={"FILMLESS_INITIAL_ADMIN_PASSWORD": ADMIN_PASSWORD}) as server:
        with server.http() as http:
            assert _token(http, "admin", "not the password").status_code == 401
            reply = _token(http, "admin", ADMIN_PASSWORD)
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert body["token_type"] == "bearer" and body["role"] == "admin"
            admin = {"Authorization": f"Bearer {body['access_token']}"}
            assert http.get("/api/me", headers=admin).json()["username"] == "admin"
            assert http.get("/api/me").status_code == 401

            # Another process (the CLI, on the same index) adds a user; the password comes
            # from standard input, never the command line.
            added = subprocess.run(
                [
                    *filmless_command(),
                    "user", "add", "bs.lan",
                    "--role", "radiologist",
                    "--password-stdin",
                    "--full-name", "BS. Nguyễn Thị Lan",
                    "--data", str(server.data_dir),
                ],
                input=NEW_PASSWORD + "\n",
                capture_output=True,
                text=True,
                env=peer_env({"PYTHONUNBUFFERED": "1"}),
                timeout=120,
            )
            assert added.returncode == 0, added.stdout + added.stderr
            reply = _token(http, "bs.lan", NEW_PASSWORD)
            assert reply.status_code == 200, reply.text
            radiologist = {"Authorization": f"Bearer {reply.json()['access_token']}"}
            assert http.get("/api/me", headers=radiologist).json()["role"] == "radiologist"
            assert http.get("/api/users", headers=radiologist).status_code == 403
            users = http.get("/api/users", headers=admin).json()
            assert {u["username"] for u in users} == {"admin", "bs.lan"}

            # Both sign-ins and the CLI's change are in the audit log.
            events = http.get("/api/audit", headers=admin, params={"limit": 50}).json()["events"]
            seen = {(e["action"], e["outcome"], e["actor"]) for e in events}
            assert ("http.login", "success", "bs.lan") in seen
            assert ("http.login", "failure", "admin") in seen
            assert any(e["action"] == "admin.user" and e["actor_host"] == "cli" for e in events)

        # A restart with the same setting leaves the users alone.
        server.stop()
        server.start()
        with server.http() as http:
            assert _token(http, "admin", ADMIN_PASSWORD).status_code == 200
            assert _token(http, "bs.lan", NEW_PASSWORD).status_code == 200


def test_compose_opens_the_api_with_a_required_initial_admin_password(tmp_path: Path) -> None:
    config = resolved_config(tmp_path, filled_env_file({"FILMLESS_INITIAL_ADMIN_PASSWORD": ADMIN_PASSWORD}))
    api = config["services"]["filmless-api"]["environment"]
    assert api["FILMLESS_HTTP_HOST"] == "0.0.0.0"
    assert api["FILMLESS_INITIAL_ADMIN_PASSWORD"] == ADMIN_PASSWORD

    missing = tmp_path / "missing"
    missing.mkdir()
    refused = compose_config(missing, filled_env_file({"FILMLESS_INITIAL_ADMIN_PASSWORD": ""}))
    assert refused.returncode != 0
    assert "set FILMLESS_INITIAL_ADMIN_PASSWORD in .env" in refused.stderr
