"""Client-side encryption at rest over any object store (AES-256-GCM, chunked).

A rented or shared object store (an S3 bucket at a provider, a NAS of another department)
then only ever holds ciphertext: no pixels, no names, no UIDs. Keys stay opaque as they are.

Stored object layout (all integers big-endian)::

    header  = b"FLEN" | version (1 byte, 1) | key id length n (1 byte) | key id (n bytes, ASCII)
              | chunk size C (4 bytes) | nonce prefix (7 random bytes)
    chunk i = AES-256-GCM(key, nonce = prefix | i (4 bytes) | last (1 byte: 1 on the last chunk),
                          plaintext[i*C : (i+1)*C], associated data = header)

Every chunk but the last holds exactly ``C`` plaintext bytes (``C + 16`` stored); the last one
holds the rest (possibly nothing) and is marked in its nonce, so a truncated, extended,
reordered or spliced object fails authentication (the STREAM construction of Hoang,
Reyhanitabar, Rogaway and Vizár, as in Tink and age). Chunks let :meth:`read_range` fetch and
decrypt only the chunks it needs.

The key id recorded in each object selects the key on reading, so keys can be rotated: new
objects use the first (active) key, older ones keep reading with theirs as long as their key
is still configured.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import struct
from collections.abc import Iterator, Mapping
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage.errors import ObjectStoreError
from storage.objects import ObjectStore

MAGIC = b"FLEN"
VERSION = 1
TAG_SIZE = 16
NONCE_PREFIX_SIZE = 7
DEFAULT_CHUNK_SIZE = 64 * 1024
MAX_HEADER_SIZE = len(MAGIC) + 2 + 255 + 4 + NONCE_PREFIX_SIZE
_KEY_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class DecryptionError(ObjectStoreError):
    """A stored object could not be decrypted: unknown key id, wrong key, or altered bytes."""


def parse_keys(text: str) -> tuple[str, dict[str, bytes]]:
    """``"ID:BASE64[,ID:BASE64...]"`` -> (active key id, {key id: 32-byte key}).

    The first key encrypts new objects; all of them decrypt. Key ids are 1-64 characters of
    ``A-Z a-z 0-9 - _ .``; keys are 32 random bytes, base64 (e.g. ``openssl rand -base64 32``).
    Error messages name key ids, never key material.
    """
    keys: dict[str, bytes] = {}
    active: str | None = None
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key_id, sep, encoded = item.partition(":")
        key_id = key_id.strip()
        if not sep or not key_id:
            raise ValueError("encryption keys are KEYID:BASE64KEY, comma-separated")
        if len(key_id) > 64 or not set(key_id) <= _KEY_ID_CHARS:
            raise ValueError(f"encryption key id {key_id!r}: 1-64 characters of A-Z a-z 0-9 - _ .")
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"encryption key {key_id!r} is not valid base64") from None
        if len(key) != 32:
            raise ValueError(f"encryption key {key_id!r} must be 32 bytes (AES-256), not {len(key)}")
        if key_id in keys:
            raise ValueError(f"encryption key id {key_id!r} is given twice")
        keys[key_id] = key
        active = active or key_id
    if active is None:
        raise ValueError("no encryption key given")
    return active, keys


class EncryptedObjectStore:
    """An :class:`storage.objects.ObjectStore` that encrypts every object before it reaches
    ``inner`` and authenticates and decrypts it on the way back."""

    def __init__(
        self,
        inner: ObjectStore,
        keys: Mapping[str, bytes],
        active_key_id: str,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        if active_key_id not in keys:
            raise ObjectStoreError(f"active encryption key {active_key_id!r} is not among the keys")
        if not 1 <= chunk_size <= 2**31:
            raise ObjectStoreError("chunk size out of range")
        for key_id, key in keys.items():
            if len(key) != 32:
                raise ObjectStoreError(f"encryption key {key_id!r} must be 32 bytes")
        self.inner = inner
        self.active_key_id = active_key_id
        self.chunk_size = chunk_size
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}

    def __repr__(self) -> str:
        return f"EncryptedObjectStore({self.inner!r}, key {self.active_key_id!r})"

    # -- the port
    def put(self, key: str, data: bytes) -> None:
        self.inner.put(key, self.encrypt(data))

    def open(self, key: str) -> BinaryIO:
        return io.BytesIO(self.read(key))

    def read(self, key: str) -> bytes:
        return self.decrypt(key, self.inner.read(key))

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ObjectStoreError("offset and length must not be negative")
        header = _Header.parse(key, self.inner.read_range(key, 0, MAX_HEADER_SIZE))
        cipher = self._cipher(key, header)
        if length == 0:
            return b""
        size = header.chunk_size + TAG_SIZE
        first = offset // header.chunk_size
        last = (offset + length - 1) // header.chunk_size
        start = header.size + first * size
        span = (last - first + 1) * size
        # One byte more than the chunks asked for: if it is there, the last one read is not
        # the object's last chunk.
        stored = self.inner.read_range(key, start, span + 1)
        more = len(stored) > span
        stored = stored[:span]
        if not stored:
            if first == 0:
                raise DecryptionError(f"object {key} is truncated")
            return b""  # past the end (the last chunk is never empty unless it is chunk 0)
        plain = bytearray()
        count = -(-len(stored) // size)
        for n in range(count):
            piece = stored[n * size : (n + 1) * size]
            final = n == count - 1 and not more
            plain += _open_chunk(key, cipher, header, first + n, piece, final)
        skip = offset - first * header.chunk_size
        return bytes(plain[skip : skip + length])

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def keys(self) -> Iterator[str]:
        return self.inner.keys()

    # -- encryption
    def encrypt(self, data: bytes) -> bytes:
        header = _Header(self.active_key_id, self.chunk_size, os.urandom(NONCE_PREFIX_SIZE))
        cipher = self._ciphers[self.active_key_id]
        aad = header.encode()
        out = bytearray(aad)
        view = memoryview(data)
        chunks = max(1, -(-len(data) // self.chunk_size))
        for i in range(chunks):
            piece = view[i * self.chunk_size : (i + 1) * self.chunk_size]
            out += cipher.encrypt(header.nonce(i, i == chunks - 1), bytes(piece), aad)
        return bytes(out)

    def decrypt(self, key: str, stored: bytes) -> bytes:
        header = _Header.parse(key, stored)
        cipher = self._cipher(key, header)
        body = memoryview(stored)[header.size :]
        size = header.chunk_size + TAG_SIZE
        count = max(1, -(-len(body) // size))
        plain = bytearray()
        for i in range(count):
            plain += _open_chunk(key, cipher, header, i, bytes(body[i * size : (i + 1) * size]), i == count - 1)
        return bytes(plain)

    def key_id(self, key: str) -> str:
        """The id of the key the object under ``key`` is encrypted with."""
        return _Header.parse(key, self.inner.read_range(key, 0, MAX_HEADER_SIZE)).key_id

    def _cipher(self, key: str, header: _Header) -> AESGCM:
        try:
            return self._ciphers[header.key_id]
        except KeyError:
            raise DecryptionError(
                f"object {key} is encrypted with key {header.key_id!r}, which is not configured"
            ) from None


class _Header:
    __slots__ = ("key_id", "chunk_size", "prefix", "_encoded")

    def __init__(self, key_id: str, chunk_size: int, prefix: bytes) -> None:
        self.key_id = key_id
        self.chunk_size = chunk_size
        self.prefix = prefix
        raw_id = key_id.encode("ascii")
        self._encoded = MAGIC + bytes([VERSION, len(raw_id)]) + raw_id + struct.pack(">I", chunk_size) + prefix

    @property
    def size(self) -> int:
        return len(self._encoded)

    def encode(self) -> bytes:
        return self._encoded

    def nonce(self, index: int, last: bool) -> bytes:
        if index >= 2**32:
            raise ObjectStoreError("object too large for its chunk size")
        return self.prefix + struct.pack(">IB", index, 1 if last else 0)

    @classmethod
    def parse(cls, key: str, data: bytes) -> _Header:
        if len(data) < len(MAGIC) + 2 or data[: len(MAGIC)] != MAGIC:
            raise DecryptionError(f"object {key} is not an encrypted object (no header)")
        if data[4] != VERSION:
            raise DecryptionError(f"object {key}: unknown encryption format version {data[4]}")
        n = data[5]
        end = 6 + n + 4 + NONCE_PREFIX_SIZE
        if len(data) < end or n == 0:
            raise DecryptionError(f"object {key}: truncated encryption header")
        try:
            key_id = data[6 : 6 + n].decode("ascii")
        except UnicodeDecodeError:
            raise DecryptionError(f"object {key}: corrupt encryption header") from None
        (chunk_size,) = struct.unpack(">I", data[6 + n : 10 + n])
        if chunk_size == 0:
            raise DecryptionError(f"object {key}: corrupt encryption header")
        return cls(key_id, chunk_size, bytes(data[10 + n : end]))


def _open_chunk(key: str, cipher: AESGCM, header: _Header, index: int, piece: bytes, last: bool) -> bytes:
    if len(piece) < TAG_SIZE:
        raise DecryptionError(f"object {key} is truncated")
    try:
        return cipher.decrypt(header.nonce(index, last), piece, header.encode())
    except InvalidTag:
        raise DecryptionError(
            f"object {key} failed authentication (altered, truncated, or the wrong key {header.key_id!r})"
        ) from None


__all__ = ["DecryptionError", "EncryptedObjectStore", "parse_keys"]
