"""`filmless serve --storage s3://bucket/prefix` against a real MinIO on 127.0.0.1: what
storescu sends lands in the bucket (compressed by the background worker), `filmless verify`
re-reads it from there, nothing is written under <data>/objects, and the secret key is never
logged. With client-side encryption the bucket holds ciphertext only."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.support import (
    run_cli,
    JPEG_LS_LOSSLESS,
    IndexView,
    StartFilmless,
    Synthetic,
    assert_same_pixels,
    object_files,
    sop_instance_uid,
)
from tests.object_stores import MinioServer
from tests.peers import LOOPBACK, free_port, run_storescu

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BUCKET = "filmless-e2e"


@pytest.fixture(scope="module")
def minio() -> Iterator[MinioServer]:
    with MinioServer() as server:
        server.create_bucket(BUCKET)
        yield server


def _download(minio: MinioServer, name: str) -> bytes:
    response = minio.client().get_object(BUCKET, name)
    try:
        return bytes(response.read())
    finally:
        response.close()
        response.release_conn()


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "client-side-encrypted"])
def test_c_store_lands_in_the_bucket_and_verifies(
    minio: MinioServer,
    start_filmless: StartFilmless,
    synthetic_data: Synthetic,
    tmp_path: Path,
    encrypted: bool,
) -> None:
    prefix = "encrypted" if encrypted else "plain"
    storage = f"s3://{BUCKET}/{prefix}"
    env = minio.filmless_env()
    if encrypted:
        env["FILMLESS_STORAGE_ENCRYPTION_KEYS"] = f"e2e-2026:{base64.b64encode(os.urandom(32)).decode()}"
    files = synthetic_data.ct(981, slices=6, size=256)

    with start_filmless("--storage", storage, env=env) as server:
        result = run_storescu(files, LOOPBACK, server.dicom_port, server.aet, check=True)
        assert result.returncode == 0
        stats = server.wait_compressed(timeout=300)
        assert stats["instances"] == len(files)
        log = server.log_text()
        assert minio.secret_key not in log
        assert storage in log  # the start-up line names where the objects go

        # Nothing under <data>/objects: every object is in the bucket, under the prefix.
        assert object_files(server.data_dir) == []
        rows = IndexView(server.data_dir).instances()
        assert len(rows) == len(files)
        names = {o.object_name for o in minio.client().list_objects(BUCKET, prefix=f"{prefix}/", recursive=True)}
        assert names == {f"{prefix}/{row.object_key}" for row in rows.values()}

        for sent in files:
            row = rows[sop_instance_uid(sent)]
            assert row.stored_transfer_syntax == JPEG_LS_LOSSLESS
            raw = _download(minio, f"{prefix}/{row.object_key}")
            if encrypted:
                assert raw.startswith(b"FLEN") and b"DICM" not in raw
            else:
                stored = tmp_path / f"{row.sop_instance_uid}.dcm"
                stored.write_bytes(raw)
                assert_same_pixels(sent, stored)

        verified = run_cli("verify", "--data", str(server.data_dir), "--storage", storage, env=env)
        assert verified.returncode == 0, f"filmless verify failed:\n{verified.stdout}\n{verified.stderr}"
        assert minio.secret_key not in verified.stdout + verified.stderr

        # The same archive without the keys (or with others) cannot read what it stored.
        if encrypted:
            env_without = {k: v for k, v in env.items() if k != "FILMLESS_STORAGE_ENCRYPTION_KEYS"}
            refused = run_cli("verify", "--data", str(server.data_dir), "--storage", storage, env=env_without)
            assert refused.returncode != 0


@pytest.mark.parametrize("problem", ["missing-bucket", "wrong-secret"])
def test_serve_refuses_an_unusable_bucket(minio: MinioServer, tmp_path: Path, problem: str) -> None:
    env = minio.filmless_env()
    storage = f"s3://{BUCKET}/x"
    if problem == "missing-bucket":
        storage = "s3://no-such-bucket/x"
    else:
        env["FILMLESS_S3_SECRET_KEY"] = "wrong-" + minio.secret_key
    result = run_cli(
        "serve", "--data", str(tmp_path), "--storage", storage, "--dicom-host", LOOPBACK,
        "--dicom-port", str(free_port()), "--http-host", LOOPBACK, "--http-port", str(free_port()),
        env=env,
    )
    assert result.returncode == 1, result.stderr
    assert "object store" in result.stderr and storage in result.stderr
    assert ("does not exist" if problem == "missing-bucket" else "AccessDenied") in result.stderr
    assert minio.secret_key not in result.stdout + result.stderr
