"""Real S3-compatible servers on loopback, for the object-store tests.

* :class:`MinioServer` - MinIO built from source (``scripts/install-object-stores.sh``), one
  drive in a fresh temporary directory, with a static KMS key so that SSE-S3 works.
* :class:`SeaweedFS` - ``weed server -s3``: master, volume server, filer and S3 gateway in one
  process, every port a private one on 127.0.0.1, data in a fresh temporary directory.

Both are :class:`tests.peers._ManagedProcess` context managers (temporary directory, log file,
stop by PID / process group). Ready means the S3 API answers a signed request with the test
credentials; :meth:`_S3Server.create_bucket` then makes a bucket.

Binaries: ``$FILMLESS_TEST_MINIO`` / ``$FILMLESS_TEST_WEED`` when set, else the pinned versions
of ``scripts/object-stores.versions`` in the cache that the install script fills, else ``minio``
/ ``weed`` on ``PATH``. :func:`require_binary` skips a test when a binary is absent, and fails
it under CI (``CI=true``), where the install script must have provided it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from minio import Minio
from minio.error import MinioException
from urllib3.exceptions import HTTPError

from storage.objects.s3 import S3Config
from tests.peers import LOOPBACK, REPO_ROOT, PeerError, StrPath, _ManagedProcess, free_port, wait_for_port

VERSIONS_FILE = REPO_ROOT / "scripts" / "object-stores.versions"


def pinned_versions() -> dict[str, str]:
    """``NAME=VALUE`` lines of ``scripts/object-stores.versions``."""
    versions: dict[str, str] = {}
    for line in VERSIONS_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            versions[name.strip()] = value.strip()
    return versions


def cache_dir() -> Path:
    """Where ``scripts/install-object-stores.sh`` puts the servers."""
    if os.environ.get("FILMLESS_CACHE"):
        return Path(os.environ["FILMLESS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "filmless"


def minio_binary() -> Path | None:
    """The MinIO server binary, or None when it is not installed."""
    override = os.environ.get("FILMLESS_TEST_MINIO")
    if override:
        return Path(override)
    pinned = cache_dir() / "go-bin" / f"minio-{pinned_versions()['MINIO_VERSION']}" / "minio"
    if pinned.is_file():
        return pinned
    found = shutil.which("minio")
    return Path(found) if found else None


def weed_binary() -> Path | None:
    """The SeaweedFS ``weed`` binary, or None when it is not installed."""
    override = os.environ.get("FILMLESS_TEST_WEED")
    if override:
        return Path(override)
    pinned = cache_dir() / f"seaweedfs-{pinned_versions()['SEAWEEDFS_VERSION']}" / "bin" / "weed"
    if pinned.is_file():
        return pinned
    found = shutil.which("weed")
    return Path(found) if found else None


def require_binary(name: str, path: Path | None) -> Path:
    """``path`` if it is an executable file; else skip the test (fail it under CI)."""
    if path is not None and path.is_file() and os.access(path, os.X_OK):
        return path
    reason = f"{name} binary not installed (run scripts/install-object-stores.sh)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI must have it")
    pytest.skip(reason)


class _S3Server(_ManagedProcess):
    """What both servers share: credentials, a client, readiness by a signed request."""

    region = "us-east-1"

    def __init__(
        self,
        executable: StrPath,
        *,
        port: int | None,
        workdir: StrPath | None,
        env: Mapping[str, str] | None,
        startup_timeout: float,
        stop_timeout: float,
        keep: bool,
    ) -> None:
        super().__init__(
            workdir=workdir, env=env, startup_timeout=startup_timeout, stop_timeout=stop_timeout, keep=keep
        )
        self.executable = Path(executable)
        self.port = port if port is not None else free_port()
        self.access_key = "filmless-test"
        self.secret_key = secrets.token_urlsafe(24)

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT`` (plain HTTP)."""
        return f"{LOOPBACK}:{self.port}"

    def client(self) -> Minio:
        """A minio client with the test credentials (for the tests' own checks)."""
        return Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False, region=self.region)

    def create_bucket(self, name: str) -> str:
        client = self.client()
        if not client.bucket_exists(name):
            client.make_bucket(name)
        return name

    def s3_config(self, bucket: str, prefix: str = "", **overrides: Any) -> S3Config:
        """An :class:`S3Config` for this server."""
        values: dict[str, Any] = {
            "endpoint": self.endpoint,
            "bucket": bucket,
            "prefix": prefix,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "region": self.region,
            "secure": False,
        }
        values.update(overrides)
        return S3Config(**values)

    def filmless_env(self) -> dict[str, str]:
        """The ``FILMLESS_S3_*`` environment of a filmless process using this server."""
        return {
            "FILMLESS_S3_ENDPOINT": self.endpoint,
            "FILMLESS_S3_ACCESS_KEY": self.access_key,
            "FILMLESS_S3_SECRET_KEY": self.secret_key,
            "FILMLESS_S3_REGION": self.region,
            "FILMLESS_S3_SECURE": "false",
        }

    def _wait_s3(self, process: subprocess.Popen[bytes], deadline: float) -> None:
        wait_for_port(LOOPBACK, self.port, max(0.1, deadline - time.monotonic()), process=process)
        client = self.client()
        last: Exception | None = None
        while True:
            if process.poll() is not None:
                raise PeerError(f"{self.name} exited with {process.returncode}")
            try:
                client.list_buckets()
                return
            except (MinioException, HTTPError, OSError) as exc:
                last = exc
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.name} S3 API not ready: {last}")
            time.sleep(0.2)


class MinioServer(_S3Server):
    """``minio server`` on 127.0.0.1 with one drive under :attr:`workdir` (``data/``).

    ``MINIO_KMS_SECRET_KEY`` gives it a static key, so that SSE-S3 (``AES256``) and SSE-KMS
    with key id ``filmless-test`` work. The web console is off.
    """

    name = "minio"
    log_name = "minio.log"
    kms_key_id = "filmless-test"

    def __init__(
        self,
        executable: StrPath | None = None,
        *,
        port: int | None = None,
        workdir: StrPath | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 60.0,
        stop_timeout: float = 10.0,
        keep: bool = False,
    ) -> None:
        binary = Path(executable) if executable is not None else require_binary("MinIO", minio_binary())
        super().__init__(
            binary, port=port, workdir=workdir, env=env,
            startup_timeout=startup_timeout, stop_timeout=stop_timeout, keep=keep,
        )
        self.env.update(
            {
                "MINIO_ROOT_USER": self.access_key,
                "MINIO_ROOT_PASSWORD": self.secret_key,
                "MINIO_KMS_SECRET_KEY": f"{self.kms_key_id}:{base64.b64encode(os.urandom(32)).decode()}",
                "MINIO_BROWSER": "off",
                "MINIO_UPDATE": "off",
                "MINIO_REGION": self.region,
            }
        )

    def _command(self) -> list[str]:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        return [str(self.executable), "server", "--quiet", "--address", self.endpoint, str(data)]

    def _wait_ready(self, process: subprocess.Popen[bytes], deadline: float) -> None:
        wait_for_port(LOOPBACK, self.port, max(0.1, deadline - time.monotonic()), process=process)
        with httpx.Client(base_url=f"http://{self.endpoint}", timeout=1.0, trust_env=False) as http:
            while True:
                if process.poll() is not None:
                    raise PeerError(f"minio exited with {process.returncode}")
                try:
                    if http.get("/minio/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() >= deadline:
                    raise TimeoutError("GET /minio/health/ready did not answer 200")
                time.sleep(0.1)
        self._wait_s3(process, deadline)


class SeaweedFS(_S3Server):
    """``weed server -s3`` on 127.0.0.1: master, volume server, filer and S3 gateway, each on a
    private port, data under :attr:`workdir`, the test identity in ``s3.json``, a static
    SSE-S3 key (``WEED_S3_SSE_KEY``).

    Stopping kills the process group at once: SeaweedFS takes half a minute to shut down
    gracefully, and nothing in a test depends on it.
    """

    name = "seaweedfs"
    log_name = "weed.log"

    def __init__(
        self,
        executable: StrPath | None = None,
        *,
        port: int | None = None,
        workdir: StrPath | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 90.0,
        stop_timeout: float = 5.0,
        keep: bool = False,
    ) -> None:
        binary = Path(executable) if executable is not None else require_binary("SeaweedFS", weed_binary())
        super().__init__(
            binary, port=port, workdir=workdir, env=env,
            startup_timeout=startup_timeout, stop_timeout=stop_timeout, keep=keep,
        )
        # A static key for SSE-S3 (AES256), which SeaweedFS leaves off without one.
        self.env.setdefault("WEED_S3_SSE_KEY", base64.b64encode(os.urandom(32)).decode())
        self.ports = {
            name: free_port()
            for name in ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3.grpc")
        }

    def _command(self) -> list[str]:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "filmless",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = self.workdir / "s3.json"
        config.write_text(json.dumps(identities))
        config.chmod(0o600)
        p = self.ports
        return [
            str(self.executable), "server",
            f"-dir={data}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}",
            "-master.volumeSizeLimitMB=64", "-volume.max=0",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            "-s3", f"-s3.port={self.port}", f"-s3.port.grpc={p['s3.grpc']}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}",
        ]

    def _wait_ready(self, process: subprocess.Popen[bytes], deadline: float) -> None:
        self._wait_s3(process, deadline)
        # The S3 gateway answers before a volume server has registered with the master;
        # until then writes fail. Write and remove one object to be sure.
        client = self.client()
        probe = "filmless-readiness-probe"
        bucket = self.create_bucket(probe)
        while True:
            try:
                client.put_object(bucket, "probe", io.BytesIO(b"probe"), 5)
                client.remove_object(bucket, "probe")
                client.remove_bucket(bucket)
                return
            except (MinioException, HTTPError, OSError) as exc:
                if process.poll() is not None:
                    raise PeerError(f"weed exited with {process.returncode}") from exc
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"seaweedfs does not accept writes: {exc}") from exc
            time.sleep(0.2)

    def stop(self, timeout: float | None = None) -> int | None:
        code = self.kill()
        # weed also listens on /tmp/seaweedfs-<server>-grpc-<port>.sock, left behind by SIGKILL.
        for server, port in (
            ("master", self.ports["master.grpc"]),
            ("volume", self.ports["volume.grpc"]),
            ("filer", self.ports["filer.grpc"]),
            ("s3", self.ports["s3.grpc"]),
        ):
            Path(tempfile.gettempdir(), f"seaweedfs-{server}-grpc-{port}.sock").unlink(missing_ok=True)
        return code
