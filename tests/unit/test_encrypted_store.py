"""Client-side encryption at rest (storage.objects.encrypted) over the in-memory fake: round
trips, ranged reads across chunks, tampering, truncation, key ids and rotation, key parsing."""

from __future__ import annotations

import base64
import os

import pytest

from storage.errors import ObjectNotFound, ObjectStoreError
from storage.objects import MemoryObjectStore, new_key
from storage.objects.encrypted import (
    TAG_SIZE,
    DecryptionError,
    EncryptedObjectStore,
    parse_keys,
)

CHUNK = 16
KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))


def _store(inner: MemoryObjectStore | None = None, chunk_size: int = CHUNK) -> EncryptedObjectStore:
    return EncryptedObjectStore(inner or MemoryObjectStore(), {"a": KEY_A}, "a", chunk_size=chunk_size)


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 5, 1000])
def test_round_trip(size: int) -> None:
    store, key, data = _store(), new_key(), os.urandom(size)
    store.put(key, data)
    assert store.read(key) == data
    with store.open(key) as fh:
        assert fh.read() == data


@pytest.mark.parametrize("size", [0, 5, CHUNK, 2 * CHUNK, 2 * CHUNK + 7])
def test_every_range_matches_the_plaintext(size: int) -> None:
    store, key, data = _store(), new_key(), bytes(range(size))
    store.put(key, data)
    for offset in range(size + 3):
        for length in range(2 * CHUNK + 3):
            assert store.read_range(key, offset, length) == data[offset : offset + length], (offset, length)


def test_stored_bytes_are_ciphertext_with_the_key_id() -> None:
    inner = MemoryObjectStore()
    store, key = _store(inner), new_key()
    data = b"DICM" + "Nguyễn Văn Đức".encode() * 10
    store.put(key, data)
    raw = inner.read(key)
    assert raw.startswith(b"FLEN\x01\x01a")
    assert b"DICM" not in raw and "Nguyễn".encode() not in raw
    chunks = -(-len(data) // CHUNK)
    assert len(raw) == 4 + 2 + 1 + 4 + 7 + len(data) + chunks * TAG_SIZE
    assert store.key_id(key) == "a"
    store.put(key, data)
    assert inner.read(key) != raw  # a fresh nonce prefix each time


def test_any_altered_byte_fails_authentication() -> None:
    inner = MemoryObjectStore()
    store, key = _store(inner), new_key()
    store.put(key, os.urandom(40))
    raw = inner.read(key)
    for i in range(len(raw)):
        altered = bytearray(raw)
        altered[i] ^= 0x01
        inner.put(key, bytes(altered))
        with pytest.raises(DecryptionError):
            store.read(key)


def test_truncation_extension_and_reordering_are_detected() -> None:
    inner = MemoryObjectStore()
    store, key = _store(inner), new_key()
    store.put(key, os.urandom(3 * CHUNK))
    raw = inner.read(key)
    header = len(raw) - 3 * (CHUNK + TAG_SIZE)
    size = CHUNK + TAG_SIZE
    chunks = [raw[header + i * size : header + (i + 1) * size] for i in range(3)]
    for forged in (
        raw[: header + 2 * size],  # the last chunk cut off at a chunk boundary
        raw[:-1],
        raw + chunks[1],  # a chunk appended
        raw[:header] + chunks[1] + chunks[0] + chunks[2],  # swapped
        raw[:header],  # no chunk at all
    ):
        inner.put(key, forged)
        with pytest.raises(DecryptionError):
            store.read(key)
    inner.put(key, raw[: header + 2 * size])
    with pytest.raises(DecryptionError):
        store.read_range(key, 2 * CHUNK - 4, 4)  # the cut chunk 1 now looks last, but is not marked


def test_splicing_objects_is_detected() -> None:
    inner = MemoryObjectStore()
    store, one, two = _store(inner), new_key(), new_key()
    store.put(one, os.urandom(2 * CHUNK))
    store.put(two, os.urandom(2 * CHUNK))
    raw_one, raw_two = inner.read(one), inner.read(two)
    header = len(raw_one) - 2 * (CHUNK + TAG_SIZE)
    inner.put(one, raw_one[: header + CHUNK + TAG_SIZE] + raw_two[header + CHUNK + TAG_SIZE :])
    with pytest.raises(DecryptionError):
        store.read(one)


def test_key_rotation_reads_old_objects_and_writes_with_the_new_key() -> None:
    inner = MemoryObjectStore()
    old = _store(inner)
    before = new_key()
    old.put(before, b"written with a")
    rotated = EncryptedObjectStore(inner, {"b": KEY_B, "a": KEY_A}, "b", chunk_size=CHUNK)
    assert rotated.read(before) == b"written with a"
    after = new_key()
    rotated.put(after, b"written with b")
    assert rotated.key_id(after) == "b"
    with pytest.raises(DecryptionError, match="'b'.*not configured"):
        old.read(after)


def test_wrong_key_under_the_same_id_fails() -> None:
    inner = MemoryObjectStore()
    key = new_key()
    _store(inner).put(key, b"secret")
    impostor = EncryptedObjectStore(inner, {"a": KEY_B}, "a")
    with pytest.raises(DecryptionError, match="failed authentication"):
        impostor.read(key)


def test_plaintext_objects_are_refused_and_missing_ones_not_found() -> None:
    inner = MemoryObjectStore()
    store = _store(inner)
    inner.put("plain", b"\0" * 128 + b"DICM")
    with pytest.raises(DecryptionError, match="not an encrypted object"):
        store.read("plain")
    with pytest.raises(ObjectNotFound):
        store.read(new_key())
    with pytest.raises(ObjectNotFound):
        store.read_range(new_key(), 0, 10)
    assert isinstance(DecryptionError("x"), ObjectStoreError)


def test_delete_exists_keys_pass_through() -> None:
    inner = MemoryObjectStore()
    store, key = _store(inner), new_key()
    store.put(key, b"x")
    assert store.exists(key) and list(store.keys()) == [key]
    store.delete(key)
    assert not store.exists(key) and not inner.exists(key)


def test_parse_keys() -> None:
    a, b = base64.b64encode(KEY_A).decode(), base64.b64encode(KEY_B).decode()
    assert parse_keys(f"k2026:{a}") == ("k2026", {"k2026": KEY_A})
    assert parse_keys(f" new:{b} , old:{a} ") == ("new", {"new": KEY_B, "old": KEY_A})
    short = base64.b64encode(b"x" * 16).decode()
    for text, message in [
        ("", "no encryption key"),
        (a, "KEYID:BASE64KEY"),
        (f"k:{short}", "must be 32 bytes"),
        ("k:not base64!", "not valid base64"),
        (f"k:{a},k:{b}", "twice"),
        (f"bad id:{a}", "key id"),
    ]:
        with pytest.raises(ValueError, match=message) as caught:
            parse_keys(text)
        assert a not in str(caught.value) and b not in str(caught.value)


def test_unknown_active_key_is_refused() -> None:
    with pytest.raises(ObjectStoreError):
        EncryptedObjectStore(MemoryObjectStore(), {"a": KEY_A}, "b")
    with pytest.raises(ObjectStoreError):
        EncryptedObjectStore(MemoryObjectStore(), {"a": b"short"}, "a")
