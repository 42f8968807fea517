"""docker-compose.yml: checked by Debian's docker-compose (``config`` needs no Docker engine),
then its services started natively, as the compose file says to start them.

No Docker engine runs here, so the native test runs "the same services" from what
``docker-compose config`` resolves: PostgreSQL from Debian's binaries (a user and a database as
the official image makes them, password authentication), MinIO (built from source; minio-init's
own script makes the bucket and the filmless user, with mc played by tests/e2e/mc_shim.py),
filmless-init's own script, then filmless-dicom and filmless-api with their own commands and
environments (.env.example with the secrets filled in), each ready when its own compose
healthcheck passes. Only host names, ports and the data directory are changed: everything
listens on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.support import Synthetic
from tests.object_stores import MinioServer
from tests.peers import (
    LOOPBACK,
    REPO_ROOT,
    PeerError,
    _ManagedProcess,
    echo,
    filmless_command,
    free_port,
    peer_env,
    run_storescu,
)
from tests.postgres import PostgresServer, postgres_bindir

pytestmark = [pytest.mark.e2e]

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
SECRETS = ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "FILMLESS_S3_SECRET_KEY", "FILMLESS_INITIAL_ADMIN_PASSWORD")
LONG_RUNNING = ("postgres", "minio", "filmless-dicom", "filmless-api")
ONE_SHOT = ("minio-init", "filmless-init")


def docker_compose() -> str:
    """Debian's docker-compose (scripts/install-test-deps.sh installs it)."""
    found = shutil.which("docker-compose")
    if found is None:
        message = "docker-compose not installed (scripts/install-test-deps.sh installs Debian's package)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def filled_env_file(overrides: Mapping[str, str] | None = None) -> str:
    """.env.example with its empty secrets filled in (and ``overrides`` set)."""
    values = {name: secrets.token_hex(16) for name in SECRETS}
    values.update(overrides or {})
    lines = []
    seen = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        name, sep, _value = line.partition("=")
        if sep and not name.startswith("#") and name in values:
            line = f"{name}={values[name]}"
            seen.add(name)
        elif sep and name.startswith("#") and name[1:] in values:
            line = f"{name[1:]}={values[name[1:]]}"
            seen.add(name[1:])
        lines.append(line)
    lines += [f"{name}={value}" for name, value in values.items() if name not in seen]
    return "\n".join(lines) + "\n"


def compose_config(directory: Path, env_text: str) -> subprocess.CompletedProcess[str]:
    """``docker-compose --env-file .env config`` of a copy of docker-compose.yml in ``directory``
    with ``env_text`` as its .env (env_file: .env is read from the compose file's directory)."""
    shutil.copy(COMPOSE_FILE, directory / "docker-compose.yml")
    (directory / ".env").write_text(env_text)
    return subprocess.run(
        [docker_compose(), "--no-ansi", "-f", "docker-compose.yml", "--env-file", ".env", "config"],
        cwd=directory,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        env=peer_env({"DOCKER_HOST": "unix:///nonexistent/docker.sock"}),  # never an engine
    )


def resolved_config(directory: Path, env_text: str) -> dict[str, Any]:
    result = compose_config(directory, env_text)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(result.stdout)
    assert isinstance(config, dict)
    return config


# ------------------------------------------------------------------- the file itself


def test_compose_file_validates_and_wires_the_services(tmp_path: Path) -> None:
    config = resolved_config(tmp_path, filled_env_file())
    services: dict[str, Any] = config["services"]
    assert set(services) == {*LONG_RUNNING, *ONE_SHOT}
    assert set(config["volumes"]) == {"postgres-data", "minio-data", "filmless-data"}

    for name, service in services.items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: image {image} is not pinned"
    for name in LONG_RUNNING:
        service = services[name]
        assert service["restart"] == "unless-stopped", name
        check = service["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1, name
        assert {"interval", "timeout", "retries"} <= set(check), name
    for name in ONE_SHOT:
        assert services[name]["restart"] == "no"
        assert "healthcheck" not in services[name]

    def conditions(name: str) -> dict[str, str]:
        return {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}

    assert conditions("minio-init") == {"minio": "service_healthy"}
    assert conditions("filmless-init") == {
        "postgres": "service_healthy",
        "minio-init": "service_completed_successfully",
    }
    dicom, api = services["filmless-dicom"], services["filmless-api"]
    for name in ("filmless-dicom", "filmless-api"):
        assert conditions(name) == {
            "postgres": "service_healthy",
            "minio": "service_healthy",
            "filmless-init": "service_completed_successfully",
        }

    # One image, one set of settings; only the component differs.
    assert dicom["image"] == api["image"] == services["filmless-init"]["image"]
    assert dicom["environment"].pop("FILMLESS_COMPONENTS") == "dicom"
    assert api["environment"].pop("FILMLESS_COMPONENTS") == "api"
    assert dicom["environment"] == api["environment"] == services["filmless-init"]["environment"]
    env = dicom["environment"]
    assert env["FILMLESS_INDEX"] == "postgresql+psycopg://filmless@postgres:5432/filmless"
    assert env["PGPASSWORD"] == services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert env["FILMLESS_STORAGE"].startswith("s3://") and env["FILMLESS_S3_ENDPOINT"] == "http://minio:9000"
    assert env["FILMLESS_S3_SECRET_KEY"] == services["minio-init"]["environment"]["FILMLESS_S3_SECRET_KEY"]
    assert env["FILMLESS_DATA"] == "/data"
    for service in (dicom, api):
        assert any(v.startswith("filmless-data:/data") for v in service["volumes"])
    assert dicom["ports"] == [{"published": 11112, "target": 11112}]
    assert api["ports"] == [{"published": 8080, "target": 8080}]
    assert dicom["healthcheck"]["test"][1:3] == ["filmless", "echo"]
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    assert services["postgres"]["environment"]["POSTGRES_USER"] == "filmless"
    assert "postgres-data:/var/lib/postgresql/data" in " ".join(services["postgres"]["volumes"])


def test_ports_follow_the_settings(tmp_path: Path) -> None:
    env_text = filled_env_file({"FILMLESS_DICOM_PORT": "104", "FILMLESS_HTTP_PORT": "8042"})
    config = resolved_config(tmp_path, env_text)
    services = config["services"]
    assert services["filmless-dicom"]["ports"] == [{"published": 104, "target": 104}]
    assert services["filmless-api"]["ports"] == [{"published": 8042, "target": 8042}]
    assert services["filmless-dicom"]["environment"]["FILMLESS_DICOM_PORT"] == "104"


def test_the_example_is_refused_until_its_secrets_are_filled_in(tmp_path: Path) -> None:
    result = compose_config(tmp_path, ENV_EXAMPLE.read_text())
    assert result.returncode != 0
    assert any(f"set {name} in .env" in result.stderr for name in SECRETS), result.stderr


# ------------------------------------------------------------------ natively, for real


def native(command: Sequence[str]) -> list[str]:
    """A compose command as it runs here: the image's ``filmless`` and ``python`` are ours."""
    program, *rest = command
    if program == "filmless":
        return [*filmless_command(), *rest]
    if program == "python":
        return [sys.executable, *rest]
    return [program, *rest]


def healthcheck_command(service: Mapping[str, Any]) -> list[str]:
    test = list(service["healthcheck"]["test"])
    if test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", test[1]]
    assert test[0] == "CMD"
    return native(test[1:])


def service_command(service: Mapping[str, Any], hosts: Mapping[str, str] | None = None) -> list[str]:
    """The service's entrypoint (the image's: filmless) and command, as the container gets them
    (``$$`` is compose's escape of ``$``), with the compose network's host names replaced."""
    entrypoint = list(service.get("entrypoint") or ["filmless"])
    command = []
    for part in [*entrypoint, *service.get("command", [])]:
        part = str(part).replace("$$", "$")
        for compose_host, here in (hosts or {}).items():
            part = part.replace(compose_host, here)
        command.append(part)
    return native(command)


class ComposeService(_ManagedProcess):
    """A long-running filmless service of docker-compose.yml, run natively; ready when its
    own healthcheck command passes."""

    log_name = "service.log"

    def __init__(self, name: str, service: Mapping[str, Any], env: Mapping[str, str], workdir: Path) -> None:
        self.name = name
        self.service = service
        super().__init__(workdir=workdir, env=env, startup_timeout=120.0, stop_timeout=30.0, keep=False)

    def _cwd(self) -> Path | None:
        return self.workdir

    def _command(self) -> list[str]:
        return service_command(self.service)  # the environment carries the host names

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            healthcheck_command(self.service),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.workdir,
            timeout=60,
        )

    def _wait_ready(self, process: subprocess.Popen[bytes], deadline: float) -> None:
        while True:
            if process.poll() is not None:
                raise PeerError(f"{self.name} exited with {process.returncode}")
            result = self.healthcheck()
            if result.returncode == 0:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.name}: healthcheck still failing: {result.stdout}{result.stderr}")
            time.sleep(0.5)


def _native_env(
    service: Mapping[str, Any], hosts: Mapping[str, str], overrides: Mapping[str, str]
) -> dict[str, str]:
    """The service's resolved environment, with the compose network's host names replaced."""
    env: dict[str, str] = {}
    for name, value in service["environment"].items():
        text = "" if value is None else str(value)
        for compose_host, here in hosts.items():
            text = text.replace(compose_host, here)
        env[name] = text
    env.update(overrides)
    return env


def _run(command: Sequence[str], env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        env=peer_env(env),
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture
def postgres_with_passwords() -> Iterator[PostgresServer]:
    """A PostgreSQL server that asks every user but its superuser for a password (as the
    official image does for connections from other containers)."""
    if postgres_bindir() is None:
        message = "no PostgreSQL server installed (scripts/install-test-deps.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = PostgresServer()
    hba = server.workdir / "pg_hba.conf"
    hba.write_text(
        f"local all postgres trust\n"
        f"host all postgres {LOOPBACK}/32 trust\n"
        f"host all all {LOOPBACK}/32 scram-sha-256\n"
    )
    hba.chmod(0o644)
    server.settings["hba_file"] = str(hba)
    server.settings["password_encryption"] = "scram-sha-256"
    with server:
        yield server


@pytest.mark.slow
def test_the_compose_services_natively(
    tmp_path: Path, synthetic_data: Synthetic, postgres_with_passwords: PostgresServer
) -> None:
    pg = postgres_with_passwords
    compose_dir = tmp_path / "compose"
    compose_dir.mkdir()
    config = resolved_config(compose_dir, filled_env_file())
    services: dict[str, Any] = config["services"]

    # postgres: the user and database of POSTGRES_USER / POSTGRES_DB, with POSTGRES_PASSWORD.
    pg_env = services["postgres"]["environment"]
    user, database, password = pg_env["POSTGRES_USER"], pg_env["POSTGRES_DB"], pg_env["POSTGRES_PASSWORD"]
    pg.execute(f"CREATE ROLE \"{user}\" LOGIN PASSWORD '{password}'")
    pg.execute(f'CREATE DATABASE "{database}" OWNER "{user}"')

    with MinioServer() as minio:
        hosts = {"@postgres:5432/": f"@{LOOPBACK}:{pg.port}/", "//minio:9000": f"//{minio.endpoint}"}

        # minio-init, its own script, twice (it runs at every `up`), with mc played by
        # tests/e2e/mc_shim.py; this MinIO has the test's administrator, not MINIO_ROOT_*.
        mc_bin = tmp_path / "mc-bin"
        mc_bin.mkdir()
        shim = Path(__file__).with_name("mc_shim.py")
        (mc_bin / "mc").write_text(f'#!/bin/sh\nexec "{sys.executable}" "{shim}" "$@"\n')
        (mc_bin / "mc").chmod(0o755)
        init_env = services["minio-init"]["environment"]
        mc_env = {
            **init_env,
            "MINIO_ROOT_USER": minio.access_key,
            "MINIO_ROOT_PASSWORD": minio.secret_key,
            "PATH": f"{mc_bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "MC_SHIM_STATE": str(tmp_path / "mc-aliases.json"),
            "MC_SHIM_LOG": str(tmp_path / "mc-calls.log"),
            "PYTHONPATH": str(REPO_ROOT),
        }
        for run in (1, 2):
            result = _run(service_command(services["minio-init"], hosts), mc_env, tmp_path)
            assert result.returncode == 0, f"minio-init run {run}: {result.stdout}{result.stderr}"
        calls = [json.loads(line) for line in (tmp_path / "mc-calls.log").read_text().splitlines()]
        bucket = init_env["FILMLESS_STORAGE"].removeprefix("s3://").split("/", 1)[0]
        assert ["mb", "--ignore-existing", f"store/{bucket}"] in calls
        assert sum(call[:3] == ["admin", "policy", "attach"] for call in calls) == 1  # first run only
        assert minio.client().bucket_exists(bucket)

        data = tmp_path / "data"  # the volume filmless-data
        data.mkdir()
        bin_dir = Path(filmless_command()[0]).parent
        overrides = {
            "FILMLESS_DATA": str(data),
            "FILMLESS_DICOM_HOST": LOOPBACK,
            "FILMLESS_HTTP_HOST": LOOPBACK,
            "FILMLESS_DICOM_PORT": str(free_port()),
            "FILMLESS_HTTP_PORT": str(free_port()),
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
        }
        envs = {
            name: _native_env(services[name], hosts, overrides)
            for name in ("filmless-init", "filmless-dicom", "filmless-api")
        }
        # No password in the URL: PostgreSQL gets it from PGPASSWORD, as in the containers.
        index_url = f"postgresql+psycopg://{user}@{LOOPBACK}:{pg.port}/{database}"
        assert envs["filmless-api"]["FILMLESS_INDEX"] == index_url
        assert envs["filmless-api"]["PGPASSWORD"] == password

        # filmless-init, its own script: the schema, the HEALTHCHECK AE.
        assert (bin_dir / "filmless").exists(), "the filmless console script is needed on PATH"
        init = _run(service_command(services["filmless-init"], hosts), envs["filmless-init"], tmp_path)
        assert init.returncode == 0, init.stdout + init.stderr
        assert "up to date" in init.stdout and "registered HEALTHCHECK" in init.stdout

        dicom_dir, api_dir = tmp_path / "dicom", tmp_path / "api"
        dicom_dir.mkdir()
        api_dir.mkdir()
        api_env = envs["filmless-api"]
        dicom_port, http_port = int(api_env["FILMLESS_DICOM_PORT"]), int(api_env["FILMLESS_HTTP_PORT"])
        dicom_service = ComposeService("filmless-dicom", services["filmless-dicom"], envs["filmless-dicom"], dicom_dir)
        api_service = ComposeService("filmless-api", services["filmless-api"], api_env, api_dir)
        with dicom_service as dicom, api_service as api:
            # Each runs its own component only (they share the ports' settings).
            assert "DICOM node FILMLESS listening" in dicom.log_text()
            assert "Uvicorn running" not in dicom.log_text()
            assert "Uvicorn running" in api.log_text()
            assert "DICOM node" not in api.log_text()
            assert "components dicom" in dicom.log_text() and "components api" in api.log_text()

            # Production: a modality is registered first (docker-compose exec filmless-api ...).
            assert not echo(LOOPBACK, dicom_port, "FILMLESS", "STRANGER")
            refused = _run([*filmless_command(), "echo", "--calling-ae", "STRANGER"], envs["filmless-dicom"], dicom_dir)
            assert refused.returncode == 1 and "association rejected" in refused.stderr, refused.stderr
            added = _run(
                [*filmless_command(), "ae", "add", "CT1", LOOPBACK, "104", "--services", "echo,store"], api_env, api_dir
            )
            assert added.returncode == 0, added.stdout + added.stderr
            files = synthetic_data.ct(4242, slices=4, size=128)
            run_storescu(files, LOOPBACK, dicom_port, "FILMLESS", "CT1", check=True)

            # filmless stats (through the API's container) sees them, compressed by the DICOM
            # service's workers.
            deadline = time.monotonic() + 180
            while True:
                result = _run([*filmless_command(), "stats", "--json"], api_env, api_dir)
                assert result.returncode == 0, result.stderr
                stats = json.loads(result.stdout)
                if stats["instances"] == len(files) and stats["pending_compression"] == 0:
                    break
                assert time.monotonic() < deadline, f"not stored and compressed in time: {stats}"
                time.sleep(0.5)
            assert stats["stored_bytes"] < stats["received_bytes"]

            with httpx.Client(base_url=f"http://{LOOPBACK}:{http_port}", timeout=30, trust_env=False) as http:
                health = http.get("/healthz")
                assert health.status_code == 200, health.text
                body = health.json()
                assert body["status"] == "ok" and set(body["checks"].values()) == {"ok"}, body
                assert http.get("/version").json()["ae_title"] == "FILMLESS"

            # The objects are in the bucket under the prefix of FILMLESS_STORAGE, not on disk;
            # the index is in PostgreSQL.
            prefix = init_env["FILMLESS_STORAGE"].removeprefix("s3://").partition("/")[2].strip("/")
            listed = minio.client().list_objects(bucket, prefix=f"{prefix}/", recursive=True)
            names = [o.object_name for o in listed]
            assert len(names) == len(files)
            assert not (data / "objects").exists() and not (data / "index.sqlite").exists()
            assert pg.execute("SELECT count(*) FROM instance", database=database) == [(len(files),)]
            verified = _run([*filmless_command(), "verify"], api_env, api_dir)
            assert verified.returncode == 0, verified.stdout + verified.stderr

            # The healthchecks still pass; a SIGTERM stops each service cleanly.
            assert dicom.healthcheck().returncode == 0
            assert api.healthcheck().returncode == 0
            secret = api_env["FILMLESS_S3_SECRET_KEY"]
            assert secret not in dicom.log_text() + api.log_text()
            for service in (dicom, api):
                assert service.stop() == 0, service.log_text()[-3000:]
                assert "SIGTERM received" in service.log_text() and "shutting down" in service.log_text()
