"""One adapter test suite for every object store: the local directory, the in-memory fake,
S3 on real MinIO and SeaweedFS servers (started here on 127.0.0.1), and the client-side
encryption wrapper over them. Then what only S3 has: multipart uploads, server-side
encryption, prefixes, credentials and unreachable servers, and the storage URL wiring."""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from filmless.bootstrap import open_object_store
from filmless.settings import Settings
from storage.errors import ObjectNotFound, ObjectStoreError
from storage.objects import LocalObjectStore, MemoryObjectStore, ObjectStore, new_key
from storage.objects.encrypted import EncryptedObjectStore
from storage.objects.s3 import MIN_PART_SIZE, S3ObjectStore
from tests.object_stores import MinioServer, SeaweedFS, _S3Server

BUCKET = "filmless-test"
S3_KINDS = ["minio", "seaweedfs"]
KINDS = ["local", "memory", *S3_KINDS, "encrypted-local", "encrypted-minio", "encrypted-seaweedfs"]
LARGE = 2 * MIN_PART_SIZE + 123_457  # three parts of a multipart upload


@pytest.fixture(scope="module")
def minio() -> Iterator[MinioServer]:
    with MinioServer() as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture(scope="module")
def seaweedfs() -> Iterator[SeaweedFS]:
    with SeaweedFS() as server:
        server.create_bucket(BUCKET)
        yield server


def _server(request: pytest.FixtureRequest, kind: str) -> _S3Server:
    server = request.getfixturevalue(kind)
    assert isinstance(server, _S3Server)
    return server


def _s3_store(server: _S3Server, **overrides: object) -> S3ObjectStore:
    """A store under a fresh prefix of the test bucket, so tests never see each other's keys."""
    overrides.setdefault("part_size", MIN_PART_SIZE)
    return S3ObjectStore(server.s3_config(BUCKET, f"t-{uuid.uuid4().hex[:12]}/", **overrides))


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    kind: str = request.param
    base = kind.removeprefix("encrypted-")
    inner: ObjectStore
    if base == "local":
        inner = LocalObjectStore(tmp_path / "objects")
    elif base == "memory":
        inner = MemoryObjectStore()
    else:
        inner = _s3_store(_server(request, base))
    if kind.startswith("encrypted-"):
        return EncryptedObjectStore(inner, {"test-1": os.urandom(32)}, "test-1")
    return inner


@pytest.fixture(params=S3_KINDS)
def s3_server(request: pytest.FixtureRequest) -> _S3Server:
    return _server(request, request.param)


# ------------------------------------------------------------------- the shared suite


def test_put_read_open_exists(store: ObjectStore) -> None:
    key, data = new_key(), os.urandom(10_000)
    assert not store.exists(key)
    store.put(key, data)
    assert store.exists(key)
    assert store.read(key) == data
    with store.open(key) as fh:
        assert fh.read() == data


def test_read_range(store: ObjectStore) -> None:
    key, data = new_key(), os.urandom(300_000)
    store.put(key, data)
    n = len(data)
    for offset, length in [
        (0, 10), (1, 1), (65_530, 20), (131_000, 70_000), (n - 5, 100), (n - 1, 1),
        (0, n), (0, n + 10), (n, 10), (n + 1000, 10), (12_345, 0),
    ]:
        assert store.read_range(key, offset, length) == data[offset : offset + length], (offset, length)


def test_empty_object(store: ObjectStore) -> None:
    key = new_key()
    store.put(key, b"")
    assert store.exists(key)
    assert store.read(key) == b""
    assert store.read_range(key, 0, 10) == b""
    with store.open(key) as fh:
        assert fh.read() == b""


def test_missing_object(store: ObjectStore) -> None:
    key = new_key()
    assert not store.exists(key)
    with pytest.raises(ObjectNotFound):
        store.read(key)
    with pytest.raises(ObjectNotFound):
        store.read_range(key, 0, 10)
    with pytest.raises(ObjectNotFound):
        store.open(key)
    store.delete(key)  # removing a missing object is not an error


def test_delete(store: ObjectStore) -> None:
    keep, gone = new_key(), new_key()
    store.put(keep, b"keep")
    store.put(gone, b"gone")
    store.delete(gone)
    assert not store.exists(gone)
    with pytest.raises(ObjectNotFound):
        store.read(gone)
    assert set(store.keys()) == {keep}
    assert store.read(keep) == b"keep"


def test_overwrite_replaces_the_whole_object(store: ObjectStore) -> None:
    key = new_key()
    store.put(key, b"a" * 100_000)
    store.put(key, b"shorter")
    assert store.read(key) == b"shorter"
    assert store.read_range(key, 0, 1000) == b"shorter"


def test_keys_lists_exactly_what_is_stored(store: ObjectStore) -> None:
    keys = {new_key() for _ in range(7)}
    for key in keys:
        store.put(key, key.encode())
    assert set(store.keys()) == keys
    for key in keys:
        assert store.read(key) == key.encode()


def test_large_object(store: ObjectStore) -> None:
    key, data = new_key(), os.urandom(LARGE)
    store.put(key, data)
    assert hashlib.sha256(store.read(key)).digest() == hashlib.sha256(data).digest()
    middle = MIN_PART_SIZE - 1000
    assert store.read_range(key, middle, 5000) == data[middle : middle + 5000]
    with store.open(key) as fh:
        digest = hashlib.sha256()
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    assert digest.digest() == hashlib.sha256(data).digest()


def test_concurrent_puts_and_reads(store: ObjectStore) -> None:
    items = {new_key(): os.urandom(50_000) for _ in range(16)}

    def round_trip(key: str) -> bool:
        store.put(key, items[key])
        return store.read(key) == items[key]

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(round_trip, items))
    assert set(store.keys()) == set(items)


# --------------------------------------------------------------------------- S3 only


def test_large_objects_go_up_in_parts(s3_server: _S3Server) -> None:
    store = _s3_store(s3_server)
    small, large = new_key(), new_key()
    store.put(small, os.urandom(MIN_PART_SIZE))  # exactly one part: a plain PUT
    store.put(large, os.urandom(LARGE))
    client = s3_server.client()
    small_etag = client.stat_object(BUCKET, store.prefix + small).etag or ""
    large_etag = client.stat_object(BUCKET, store.prefix + large).etag or ""
    assert "-" not in small_etag
    assert large_etag.endswith("-3"), large_etag  # S3's multipart ETag: md5 of the parts, "-", count


def test_objects_live_under_the_prefix(s3_server: _S3Server) -> None:
    one, two = _s3_store(s3_server), _s3_store(s3_server)
    key = new_key()
    one.put(key, b"one")
    two.put(key, b"two")
    assert one.read(key) == b"one" and two.read(key) == b"two"
    assert list(one.keys()) == [key] and list(two.keys()) == [key]
    names = {o.object_name for o in s3_server.client().list_objects(BUCKET, prefix=one.prefix, recursive=True)}
    assert names == {one.prefix + key}
    one.delete(key)
    assert two.read(key) == b"two"


def test_server_side_encryption_header_is_passed_through(s3_server: _S3Server) -> None:
    store = _s3_store(s3_server, sse="AES256")
    key, data = new_key(), os.urandom(1000)
    store.put(key, data)
    assert store.server_side_encryption(key) == "AES256"
    assert store.read(key) == data
    plain = _s3_store(s3_server)
    plain.put(key, data)
    assert plain.server_side_encryption(key) is None


def test_sse_kms_with_a_key_id(minio: MinioServer) -> None:
    store = _s3_store(minio, sse="aws:kms", sse_kms_key_id=minio.kms_key_id)
    key, data = new_key(), os.urandom(LARGE)
    store.put(key, data)
    assert store.server_side_encryption(key) == "aws:kms"
    assert store.read_range(key, 100, 10) == data[100:110]


def test_wrong_credentials_are_our_error_without_the_secret(s3_server: _S3Server) -> None:
    secret = "wrong-secret-" + uuid.uuid4().hex
    store = _s3_store(s3_server, secret_key=secret)
    with pytest.raises(ObjectStoreError) as caught:
        store.put(new_key(), b"x")
    assert type(caught.value) is ObjectStoreError
    assert secret not in str(caught.value)
    assert s3_server.secret_key not in str(caught.value)
    with pytest.raises(ObjectStoreError):
        store.exists(new_key())
    assert secret not in repr(store) and secret not in repr(store.config)


def test_missing_bucket_is_reported(s3_server: _S3Server) -> None:
    store = S3ObjectStore(s3_server.s3_config("no-such-bucket-" + uuid.uuid4().hex[:8]))
    with pytest.raises(ObjectStoreError, match="bucket"):
        store.check_bucket()
    with pytest.raises(ObjectStoreError, match="bucket"):
        list(store.keys())


def test_unreachable_server_is_our_error(minio: MinioServer) -> None:
    from tests.peers import free_port

    store = S3ObjectStore(minio.s3_config(BUCKET, endpoint=f"127.0.0.1:{free_port()}"))
    with pytest.raises(ObjectStoreError, match="unreachable"):
        store.put(new_key(), b"x")
    with pytest.raises(ObjectStoreError, match="unreachable"):
        store.exists(new_key())


def test_invalid_keys_are_refused(s3_server: _S3Server) -> None:
    store = _s3_store(s3_server)
    for key in ("", "/abs", "a/../b", "a//b"):
        with pytest.raises(ObjectStoreError):
            store.put(key, b"x")


# ----------------------------------------------------------------- the storage URL


@pytest.fixture
def _no_filmless_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FILMLESS_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("_no_filmless_environment")
def test_storage_url_and_s3_environment_open_the_bucket(
    minio: MinioServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in minio.filmless_env().items():
        monkeypatch.setenv(name, value)
    settings = Settings(storage=f"s3://{BUCKET}/url-test-{uuid.uuid4().hex[:8]}")
    store = open_object_store(settings.storage_url, settings)
    assert isinstance(store, S3ObjectStore)
    assert store.prefix.startswith("url-test-") and store.prefix.endswith("/")
    key = new_key()
    store.put(key, b"via the URL")
    assert minio.client().stat_object(BUCKET, store.prefix + key).size == len(b"via the URL")


@pytest.mark.usefixtures("_no_filmless_environment")
def test_encrypted_bucket_holds_no_plaintext(minio: MinioServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in minio.filmless_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FILMLESS_STORAGE_ENCRYPTION_KEYS", f"k2026:{base64.b64encode(os.urandom(32)).decode()}")
    prefix = f"enc-{uuid.uuid4().hex[:8]}"
    settings = Settings(storage=f"s3://{BUCKET}/{prefix}")
    store = open_object_store(settings.storage_url, settings)
    assert isinstance(store, EncryptedObjectStore) and isinstance(store.inner, S3ObjectStore)
    payload = b"\0" * 128 + b"DICM" + "Nguyễn Văn Đức".encode() + os.urandom(200_000)
    key = new_key()
    store.put(key, payload)
    assert store.read(key) == payload
    assert store.key_id(key) == "k2026"
    response = minio.client().get_object(BUCKET, f"{prefix}/{key}")
    try:
        raw = response.read()
    finally:
        response.close()
        response.release_conn()
    assert b"DICM" not in raw and "Nguyễn".encode() not in raw
    assert raw.startswith(b"FLEN")
