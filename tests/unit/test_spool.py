"""The spooling object store and its uploader over a remote store that can be switched off
(an in-memory fake): what fails to reach the remote store waits durably on local disk, stays
readable, and goes up when the store is back, with every race between the uploader, readers
and deleters leaving each object in at least one of the two places."""

from __future__ import annotations

import base64
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from filmless.bootstrap import check_object_store, open_object_store
from filmless.settings import Settings
from storage.errors import ObjectNotFound, ObjectStoreError, ObjectStoreUnreachable
from storage.objects import LocalObjectStore, MemoryObjectStore, new_key
from storage.objects.encrypted import EncryptedObjectStore
from storage.objects.spool import SpoolingObjectStore, SpoolUploader, spool_usage


class Remote(MemoryObjectStore):
    """A remote store that can go down (every call then fails as an unreachable server does)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.puts = 0
        self.before_put: list[object] = []  # callables run at the start of the next put

    def _check(self) -> None:
        if self.down:
            raise ObjectStoreUnreachable("cannot reach the remote store (simulated)")

    def put(self, key: str, data: bytes) -> None:
        self.puts += 1
        while self.before_put:
            hook = self.before_put.pop(0)
            assert callable(hook)
            hook()
        self._check()
        super().put(key, data)

    def read(self, key: str) -> bytes:
        self._check()
        return super().read(key)

    def delete(self, key: str) -> None:
        self._check()
        super().delete(key)

    def exists(self, key: str) -> bool:
        self._check()
        return super().exists(key)

    def keys(self) -> Iterator[str]:
        self._check()
        return super().keys()


@pytest.fixture
def remote() -> Remote:
    return Remote()


@pytest.fixture
def spooling(remote: Remote, tmp_path: Path) -> SpoolingObjectStore:
    return SpoolingObjectStore(remote, LocalObjectStore(tmp_path / "spool" / "objects"), retry_after=0.2)


def _uploader(store: SpoolingObjectStore, tmp_path: Path, **kwargs: float) -> SpoolUploader:
    options = {"first_delay": 0.05, "max_delay": 0.2, "idle_interval": 0.05, "lock_interval": 0.05, **kwargs}
    return SpoolUploader(store, tmp_path / "spool" / "uploader.lock", **options)


def _wait(condition: object, timeout: float = 10.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_puts_go_to_the_remote_store_while_it_answers(spooling: SpoolingObjectStore, remote: Remote) -> None:
    key = new_key()
    spooling.put(key, b"direct")
    assert remote.read(key) == b"direct"
    assert list(spooling.spool.keys()) == []
    assert spooling.read(key) == b"direct" and spooling.exists(key)


def test_a_failed_put_is_spooled_durably_and_readable(spooling: SpoolingObjectStore, remote: Remote) -> None:
    remote.down = True
    key, data = new_key(), os.urandom(70_000)
    spooling.put(key, data)  # no error: the object is on local disk
    assert (spooling.spool.root / key).read_bytes() == data
    assert not list(spooling.spool.root.rglob("*.tmp"))
    assert spooling.remote_down and spooling.wakeup.is_set()
    assert spooling.read(key) == data
    assert spooling.read_range(key, 1000, 10) == data[1000:1010]
    with spooling.open(key) as fh:
        assert fh.read() == data
    assert spooling.exists(key)
    assert spool_usage(spooling.spool.root).objects == 1
    assert spool_usage(spooling.spool.root).bytes == len(data)
    # The union of both stores, each key once.
    remote.down = False
    other = new_key()
    remote.put(other, b"up there")
    assert sorted(spooling.keys()) == sorted([key, other])


def test_while_the_remote_store_is_down_puts_skip_it_and_probe_now_and_then(
    spooling: SpoolingObjectStore, remote: Remote
) -> None:
    remote.down = True
    spooling.put(new_key(), b"1")
    assert remote.puts == 1
    for _ in range(5):
        spooling.put(new_key(), b"x")
    assert remote.puts == 1  # held off: straight to the spool
    time.sleep(0.25)
    spooling.put(new_key(), b"probe")
    assert remote.puts == 2  # one probe after the hold; it failed, so the hold doubles
    spooling.put(new_key(), b"held")
    assert remote.puts == 2
    remote.down = False
    time.sleep(0.45)
    key = new_key()
    spooling.put(key, b"back")
    assert remote.puts == 3 and remote.read(key) == b"back"
    assert not spooling.remote_down
    assert spool_usage(spooling.spool.root).objects == 8  # what was spooled stays for the uploader


def test_spooling_off_fails_the_put(remote: Remote, tmp_path: Path) -> None:
    store = SpoolingObjectStore(remote, LocalObjectStore(tmp_path / "spool"), spool_writes=False)
    remote.down = True
    with pytest.raises(ObjectStoreUnreachable):
        store.put(new_key(), b"data")
    assert list(store.spool.keys()) == []


def test_the_uploader_uploads_checks_and_removes(spooling: SpoolingObjectStore, remote: Remote, tmp_path: Path) -> None:
    remote.down = True
    items = {new_key(): os.urandom(1000 + n) for n in range(5)}
    for key, data in items.items():
        spooling.put(key, data)
    uploader = _uploader(spooling, tmp_path)
    with pytest.raises(ObjectStoreError):
        uploader.upload_all()  # still down: nothing lost, nothing removed
    assert set(spooling.spool.keys()) == set(items)
    remote.down = False
    assert uploader.upload_all() == len(items)
    assert list(spooling.spool.keys()) == []
    assert not list(spooling.spool.root.rglob("*"))  # the fan-out directories went too
    for key, data in items.items():
        assert remote.read(key) == data
        assert spooling.read(key) == data
    assert not spooling.remote_down


def test_an_upload_that_does_not_check_out_keeps_the_spooled_copy(
    spooling: SpoolingObjectStore, remote: Remote, tmp_path: Path
) -> None:
    remote.down = True
    key = new_key()
    spooling.put(key, b"the real bytes")
    remote.down = False

    class Short(Remote):
        def size(self, key: str) -> int:
            return len(self.read(key)) - 1

    short = Short()
    store = SpoolingObjectStore(short, spooling.spool)
    with pytest.raises(ObjectStoreError, match="bytes"):
        _uploader(store, tmp_path).upload_all()
    assert spooling.spool.read(key) == b"the real bytes"


def test_an_object_the_store_refuses_does_not_hold_up_the_others(
    spooling: SpoolingObjectStore, remote: Remote, tmp_path: Path
) -> None:
    remote.down = True
    bad, good = new_key(), new_key()
    spooling.put(bad, b"refused")
    time.sleep(0.01)  # older: first in the queue
    spooling.put(good, b"fine")
    remote.down = False
    refusing = {bad}
    real_put = remote.put

    def put(key: str, data: bytes) -> None:
        if key in refusing:
            raise ObjectStoreError("S3 error EntityTooLarge (simulated)")
        real_put(key, data)

    remote.put = put  # type: ignore[method-assign]
    uploader = _uploader(spooling, tmp_path)
    with pytest.raises(ObjectStoreError, match="EntityTooLarge"):
        uploader.upload_all()
    assert remote.read(good) == b"fine" and list(spooling.spool.keys()) == [bad]
    refusing.clear()
    assert uploader.upload_all() == 1
    assert remote.read(bad) == b"refused"


def test_a_delete_during_the_upload_deletes_the_uploaded_copy(
    spooling: SpoolingObjectStore, remote: Remote, tmp_path: Path
) -> None:
    remote.down = True
    key = new_key()
    spooling.put(key, b"about to be deleted")
    remote.down = False
    # The compression worker deletes the object (both copies) just as it is being uploaded.
    remote.before_put.append(lambda: spooling.delete(key))
    assert _uploader(spooling, tmp_path).upload_all() == 0
    assert not remote.exists(key) and not spooling.exists(key)


def test_a_reader_finds_an_object_uploaded_meanwhile(spooling: SpoolingObjectStore, remote: Remote, tmp_path: Path) -> None:
    remote.down = True
    key = new_key()
    spooling.put(key, b"moving")
    remote.down = False
    with spooling.open(key) as fh:  # opened in the spool ...
        _uploader(spooling, tmp_path).upload_all()  # ... which then lets go of it
        assert fh.read() == b"moving"
    assert not spooling.spool.exists(key)
    assert spooling.read(key) == b"moving" and spooling.read_range(key, 2, 3) == b"vin"


def test_delete_removes_both_copies(spooling: SpoolingObjectStore, remote: Remote) -> None:
    remote.down = True
    spooled, direct = new_key(), new_key()
    spooling.put(spooled, b"spooled")
    remote.down = False
    remote.put(direct, b"direct")
    spooling.delete(spooled)
    spooling.delete(direct)
    spooling.delete(new_key())  # missing: not an error
    assert not spooling.exists(spooled) and not spooling.exists(direct)
    with pytest.raises(ObjectNotFound):
        spooling.read(spooled)


def test_the_uploader_thread_drains_and_resumes_after_a_restart(remote: Remote, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool" / "objects"
    first = SpoolingObjectStore(remote, LocalObjectStore(spool_dir))
    remote.down = True
    keys = [new_key() for _ in range(10)]
    for key in keys:
        first.put(key, key.encode())
    uploader = _uploader(first, tmp_path)
    uploader.start()
    time.sleep(0.3)  # retrying with back-off meanwhile
    uploader.close()
    assert set(first.spool.keys()) == set(keys)

    # A new process on the same spool: it is the queue.
    second = SpoolingObjectStore(remote, LocalObjectStore(spool_dir))
    assert all(second.read(key) == key.encode() for key in keys)
    resumed = _uploader(second, tmp_path)
    resumed.start()
    try:
        time.sleep(0.2)
        remote.down = False
        _wait(lambda: not list(second.spool.keys()))
    finally:
        resumed.close()
    assert all(remote.read(key) == key.encode() for key in keys)


def test_one_uploader_per_spool(spooling: SpoolingObjectStore, remote: Remote, tmp_path: Path) -> None:
    remote.down = True
    for _ in range(3):
        spooling.put(new_key(), b"x")
    remote.down = False
    owner = _uploader(spooling, tmp_path)
    other_store = SpoolingObjectStore(remote, spooling.spool)
    other = _uploader(other_store, tmp_path)
    lock_held = threading.Event()
    real_wait = other._wait_for_lock

    def wait_for_lock() -> int | None:
        lock_held.set()
        return real_wait()

    other._wait_for_lock = wait_for_lock  # type: ignore[method-assign]
    owner.start()
    _wait(lambda: not list(spooling.spool.keys()))
    other.start()
    _wait(lock_held.is_set)
    time.sleep(0.1)
    assert other._thread is not None and other._thread.is_alive()  # waiting for the lock
    owner.close()
    remote.down = True
    spooling.put(new_key(), b"later")
    remote.down = False
    _wait(lambda: not list(spooling.spool.keys()))  # the other one took over
    other.close()


def test_the_spool_sits_under_the_encryption(remote: Remote, tmp_path: Path) -> None:
    spooling = SpoolingObjectStore(remote, LocalObjectStore(tmp_path / "spool"))
    store = EncryptedObjectStore(spooling, {"k1": os.urandom(32)}, "k1")
    remote.down = True
    key = new_key()
    store.put(key, b"DICM pixels and names")
    on_disk = (tmp_path / "spool" / key).read_bytes()
    assert on_disk.startswith(b"FLEN") and b"pixels" not in on_disk
    assert store.read(key) == b"DICM pixels and names"
    remote.down = False
    _uploader(spooling, tmp_path).upload_all()
    assert remote.read(key) == on_disk
    assert store.read(key) == b"DICM pixels and names"


# --------------------------------------------------------------------- the composition root


@pytest.fixture
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FILMLESS_"):
            monkeypatch.delenv(name)


@pytest.mark.usefixtures("_clean_environment")
def test_spool_auto_is_on_for_s3_and_off_for_a_folder(tmp_path: Path) -> None:
    s3 = Settings(data=tmp_path, storage="s3://bucket/prefix", s3_endpoint="127.0.0.1:9")
    assert s3.spool_enabled and s3.spool_path == tmp_path / "spool"
    store = open_object_store(s3.storage_url, s3, spool=s3.spool_path)
    assert isinstance(store, SpoolingObjectStore) and store.spool_writes
    assert store.spool.root == tmp_path / "spool" / "objects"
    assert not Settings(data=tmp_path, storage="s3://bucket/prefix", spool="off").spool_enabled

    folder = Settings(data=tmp_path)
    assert not folder.spool_enabled
    assert isinstance(open_object_store(folder.storage_url, folder, spool=folder.spool_path), LocalObjectStore)
    on = Settings(data=tmp_path, spool="on")
    assert isinstance(open_object_store(on.storage_url, on, spool=on.spool_path), SpoolingObjectStore)

    # Spooling turned off with objects still spooled: they stay readable, nothing new is spooled.
    (tmp_path / "spool" / "objects" / "ab" / "cd").mkdir(parents=True)
    (tmp_path / "spool" / "objects" / "ab" / "cd" / "abcd0001").write_bytes(b"waiting")
    off = Settings(data=tmp_path, storage="s3://bucket/prefix", s3_endpoint="127.0.0.1:9", spool="off")
    left = open_object_store(off.storage_url, off, spool=off.spool_path)
    assert isinstance(left, SpoolingObjectStore) and not left.spool_writes
    assert left.read("ab/cd/abcd0001") == b"waiting"


@pytest.mark.usefixtures("_clean_environment")
def test_encryption_wraps_the_spooling_store(tmp_path: Path) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    settings = Settings(data=tmp_path, storage="s3://bucket/p", storage_encryption_keys=f"k:{key}")
    store = open_object_store(settings.storage_url, settings, spool=settings.spool_path)
    assert isinstance(store, EncryptedObjectStore) and isinstance(store.inner, SpoolingObjectStore)


@pytest.mark.usefixtures("_clean_environment")
def test_an_unreachable_store_does_not_stop_start_up_when_spooling(tmp_path: Path) -> None:
    remote = Remote()
    remote.down = True
    spooling = SpoolingObjectStore(remote, LocalObjectStore(tmp_path / "spool"))
    check_object_store(spooling)  # a warning, not an error
    assert spooling.remote_down
    with pytest.raises(ObjectStoreUnreachable):
        check_object_store(SpoolingObjectStore(remote, LocalObjectStore(tmp_path / "s2"), spool_writes=False))
    with pytest.raises(ObjectStoreUnreachable):
        check_object_store(remote)

    class Misconfigured(Remote):
        def exists(self, key: str) -> bool:
            raise ObjectStoreError("S3 error AccessDenied")

    with pytest.raises(ObjectStoreError, match="AccessDenied"):
        check_object_store(SpoolingObjectStore(Misconfigured(), LocalObjectStore(tmp_path / "s3")))
