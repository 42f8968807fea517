"""The storage settings: the fixed FILMLESS_S3_* spellings, storage URLs, and secrets that
stay out of the command line, reprs and error messages. Nothing here reaches a server."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from filmless.bootstrap import open_object_store
from filmless.settings import Settings
from storage.errors import ObjectStoreError
from storage.objects import LocalObjectStore
from storage.objects.encrypted import EncryptedObjectStore
from storage.objects.s3 import S3Config, S3ObjectStore, parse_s3_url, split_endpoint

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cr3t-" + "x" * 20


@pytest.fixture(autouse=True)
def _no_filmless_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("FILMLESS_"):
            monkeypatch.delenv(key)


def test_fixed_environment_spellings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FILMLESS_STORAGE", "s3://archive/site-a")
    monkeypatch.setenv("FILMLESS_S3_ENDPOINT", "127.0.0.1:9000")
    monkeypatch.setenv("FILMLESS_S3_ACCESS_KEY", "filmless")
    monkeypatch.setenv("FILMLESS_S3_SECRET_KEY", SECRET)
    monkeypatch.setenv("FILMLESS_S3_REGION", "ap-southeast-1")
    monkeypatch.setenv("FILMLESS_S3_SECURE", "false")
    settings = Settings()
    assert settings.storage_url == "s3://archive/site-a"
    assert settings.s3_endpoint == "127.0.0.1:9000"
    assert settings.s3_access_key == "filmless"
    assert settings.s3_secret_key is not None and settings.s3_secret_key.get_secret_value() == SECRET
    assert settings.s3_region == "ap-southeast-1"
    assert settings.s3_secure is False
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())
    store = open_object_store(settings.storage_url, settings)  # builds a client, sends nothing
    assert isinstance(store, S3ObjectStore)
    assert (store.bucket, store.prefix) == ("archive", "site-a/")
    assert SECRET not in repr(store) and SECRET not in repr(store.config)


def test_data_stays_the_default_home_of_the_objects(tmp_path: Path) -> None:
    settings = Settings(data=tmp_path)
    assert settings.storage_url == f"file://{(tmp_path / 'objects').resolve()}"
    assert isinstance(open_object_store(settings.storage_url, settings), LocalObjectStore)


def test_encryption_keys_wrap_any_store(tmp_path: Path) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    settings = Settings(data=tmp_path, storage_encryption_keys=f"site-a-2026:{key}")
    store = open_object_store(settings.storage_url, settings)
    assert isinstance(store, EncryptedObjectStore) and isinstance(store.inner, LocalObjectStore)
    assert store.active_key_id == "site-a-2026"
    assert key not in repr(settings)


def test_bad_encryption_keys_are_refused_without_echoing_them() -> None:
    short = base64.b64encode(b"k" * 16).decode()
    with pytest.raises(ValidationError, match="must be 32 bytes") as caught:
        Settings(storage_encryption_keys=f"a:{short}")
    assert short not in str(caught.value)


def test_sse_kms_needs_a_key_id() -> None:
    with pytest.raises(ValidationError, match="s3_sse_kms_key_id"):
        Settings(s3_sse="aws:kms")
    assert Settings(s3_sse="aws:kms", s3_sse_kms_key_id="k").s3_sse == "aws:kms"


def test_storage_urls() -> None:
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    assert parse_s3_url("s3://bucket/") == ("bucket", "")
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b/")
    for bad in ("s3://", "s3://user:pw@bucket/x", "s3://bucket/x?region=y", "file:///x"):
        with pytest.raises(ValueError):
            parse_s3_url(bad)
    with pytest.raises(ValueError, match="unsupported storage URL scheme"):
        open_object_store("ftp://host/x", Settings())


def test_endpoints() -> None:
    assert split_endpoint("minio.local:9000", True) == ("minio.local:9000", True)
    assert split_endpoint("http://127.0.0.1:9000", True) == ("127.0.0.1:9000", False)
    assert split_endpoint("https://s3.example.org/", False) == ("s3.example.org", True)
    with pytest.raises(ValueError):
        split_endpoint("ftp://x", True)


def test_s3_config_is_checked() -> None:
    base = S3Config(endpoint="127.0.0.1:9", bucket="b", access_key="a", secret_key=SECRET, secure=False)
    for bad in (
        {"part_size": 1024},
        {"sse": "rot13"},
        {"sse": "aws:kms"},
        {"secret_key": None},
    ):
        values = {**base.__dict__, **bad}
        with pytest.raises(ObjectStoreError) as caught:
            S3ObjectStore(S3Config(**values))
        assert SECRET not in str(caught.value)


def _help(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "filmless.cli", *args, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_secrets_are_not_command_line_options() -> None:
    serve = _help("serve")
    for option in ("--storage", "--index", "--data", "--s3-endpoint", "--s3-access-key", "--s3-region", "--s3-secure"):
        assert option in serve
    assert "FILMLESS_S3_ENDPOINT" in serve and "FILMLESS_S3_SECURE" in serve
    assert "--s3-secret-key" not in serve and "--storage-encryption-keys" not in serve
    verify = _help("verify")
    assert "--storage" in verify and "--s3-endpoint" in verify and "--s3-secret-key" not in verify


def test_worker_processes_get_the_secrets_and_nothing_else_does() -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    settings = Settings(s3_secret_key=SECRET, storage_encryption_keys=f"k:{key}")
    assert SECRET not in settings.model_dump_json() and key not in settings.model_dump_json()
    child = Settings.model_validate_json(settings.for_child_process())
    assert child.s3_secret_key is not None and child.s3_secret_key.get_secret_value() == SECRET
    assert child.storage_encryption_keys is not None
    assert child.storage_encryption_keys.get_secret_value() == f"k:{key}"
