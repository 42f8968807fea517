"""Objects in an S3 bucket (AWS, MinIO, SeaweedFS, Ceph RGW, ...), through the ``minio`` SDK.

A put is one PUT request, or a multipart upload for objects larger than ``part_size``; S3 makes
the object visible only when the request (or the multipart completion) succeeds, so a reader
never sees a partial object, and the acknowledgement is the durability point: no temporary
objects are needed. Every key is stored under ``prefix`` in ``bucket``.

Vendor errors (``minio.error.*``, ``urllib3`` transport errors) are translated here into
:class:`storage.errors.ObjectStoreError` / :class:`storage.errors.ObjectNotFound`; messages
name the S3 error code and the opaque key, never the credentials.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, NoReturn
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from minio.sse import Sse, SseKMS, SseS3
from urllib3.util import Retry, Timeout

from storage.errors import ObjectNotFound, ObjectStoreError, ObjectStoreUnreachable

MIN_PART_SIZE = 5 * 1024**2
"""S3's smallest multipart part (every part but the last)."""
MAX_PART_SIZE = 5 * 1024**3

_NOT_FOUND = frozenset({"NoSuchKey", "NoSuchObject", "NoSuchVersion"})
# Error codes of a server that cannot serve now (overloaded, starting, failing): retry later.
_UNAVAILABLE = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "XMinioServerNotInitialized"}
)
SSE_MODES = ("none", "AES256", "aws:kms")
"""``x-amz-server-side-encryption`` values passed through: none, SSE-S3, SSE-KMS."""


@dataclass(frozen=True)
class S3Config:
    """Where and how to reach the bucket. ``repr`` leaves the secret key out."""

    endpoint: str
    bucket: str
    prefix: str = ""
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    region: str | None = None
    secure: bool = True
    path_style: bool = True
    sse: str = "none"
    sse_kms_key_id: str | None = None
    part_size: int = 16 * 1024**2
    connect_timeout: float = 10.0
    read_timeout: float = 120.0
    max_connections: int = 32


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix/")``; the prefix may be empty."""
    parsed = urlsplit(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an S3 storage URL (s3://bucket/prefix): {url!r}")
    if parsed.query or parsed.fragment or "@" in parsed.netloc:
        raise ValueError("an S3 storage URL is s3://bucket/prefix, without credentials or query")
    prefix = parsed.path.strip("/")
    return parsed.netloc, f"{prefix}/" if prefix else ""


def split_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """``host[:port]``, or a URL whose scheme then decides ``secure``, as minio wants it."""
    if "://" not in endpoint:
        return endpoint.strip("/"), secure
    parsed = urlsplit(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path.strip("/"):
        raise ValueError(f"S3 endpoint must be host[:port] or http(s)://host[:port], not {endpoint!r}")
    return parsed.netloc, parsed.scheme == "https"


class S3ObjectStore:
    """An :class:`storage.objects.ObjectStore` in an S3 bucket under a key prefix."""

    def __init__(self, config: S3Config) -> None:
        if not MIN_PART_SIZE <= config.part_size <= MAX_PART_SIZE:
            raise ObjectStoreError("S3 part size must be between 5 MiB and 5 GiB")
        if config.sse not in SSE_MODES:
            raise ObjectStoreError(f"S3 server-side encryption must be one of {', '.join(SSE_MODES)}")
        if config.sse == "aws:kms" and not config.sse_kms_key_id:
            raise ObjectStoreError("S3 server-side encryption aws:kms needs a KMS key id")
        if bool(config.access_key) != bool(config.secret_key):
            raise ObjectStoreError("S3 access key and secret key go together: set both or neither")
        self.config = config
        self.bucket = config.bucket
        self.prefix = config.prefix
        self._sse: Sse | None = (
            SseS3() if config.sse == "AES256"
            else SseKMS(config.sse_kms_key_id or "", {}) if config.sse == "aws:kms"
            else None
        )
        endpoint, secure = split_endpoint(config.endpoint, config.secure)
        http = urllib3.PoolManager(
            timeout=Timeout(connect=config.connect_timeout, read=config.read_timeout),
            maxsize=config.max_connections,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            # Retry transient failures; the last error response reaches minio, which turns
            # it into an S3Error with the server's code (raise_on_status=False).
            retries=Retry(
                total=4,
                backoff_factor=0.2,
                status_forcelist=[500, 502, 503, 504],
                raise_on_status=False,
            ),
        )
        try:
            self._client = Minio(
                endpoint,
                access_key=config.access_key,
                secret_key=config.secret_key,
                region=config.region or None,
                secure=secure,
                http_client=http,
            )
        except ValueError as exc:
            raise ObjectStoreError(f"invalid S3 endpoint settings: {exc}") from exc
        if config.path_style:
            self._client.disable_virtual_style_endpoint()  # type: ignore[no-untyped-call]
        else:
            self._client.enable_virtual_style_endpoint()  # type: ignore[no-untyped-call]

    def __repr__(self) -> str:
        return f"S3ObjectStore(s3://{self.bucket}/{self.prefix} at {self.config.endpoint})"

    # -- keys
    def _name(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/") or "//" in key:
            raise ObjectStoreError(f"invalid object key {key!r}")
        return self.prefix + key

    # -- the port
    def put(self, key: str, data: bytes) -> None:
        name = self._name(key)
        try:
            self._client.put_object(
                self.bucket,
                name,
                io.BytesIO(data),
                len(data),
                sse=self._sse,
                part_size=self.config.part_size,
                num_parallel_uploads=1,
            )
        except Exception as exc:  # noqa: BLE001 - translated below, re-raised as ours
            _raise(exc, key, "write")

    def open(self, key: str) -> BinaryIO:
        name = self._name(key)
        try:
            response = self._client.get_object(self.bucket, name)
        except Exception as exc:  # noqa: BLE001
            _raise(exc, key, "open")
        return io.BufferedReader(_ResponseStream(response, key), buffer_size=1 << 20)

    def read(self, key: str) -> bytes:
        return self._get(key, 0, 0)

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ObjectStoreError("offset and length must not be negative")
        if length == 0:
            if not self.exists(key):
                raise ObjectNotFound(key)
            return b""
        return self._get(key, offset, length)

    def delete(self, key: str) -> None:
        name = self._name(key)
        try:
            self._client.remove_object(self.bucket, name)
        except S3Error as exc:
            if exc.code in _NOT_FOUND:
                return
            _raise(exc, key, "delete")
        except Exception as exc:  # noqa: BLE001
            _raise(exc, key, "delete")

    def exists(self, key: str) -> bool:
        name = self._name(key)
        try:
            self._client.stat_object(self.bucket, name)
        except S3Error as exc:
            if exc.code in _NOT_FOUND:
                return False
            _raise(exc, key, "look up")
        except Exception as exc:  # noqa: BLE001
            _raise(exc, key, "look up")
        return True

    def keys(self) -> Iterator[str]:
        cut = len(self.prefix)
        try:
            for obj in self._client.list_objects(self.bucket, prefix=self.prefix or None, recursive=True):
                name = obj.object_name
                if name is None or obj.is_dir:
                    continue
                yield name[cut:]
        except Exception as exc:  # noqa: BLE001
            _raise(exc, None, "list")

    def size(self, key: str) -> int:
        """The object's size in bytes (a HEAD request)."""
        name = self._name(key)
        try:
            stat = self._client.stat_object(self.bucket, name)
        except Exception as exc:  # noqa: BLE001
            _raise(exc, key, "look up")
        return int(stat.size or 0)

    def modified(self, key: str) -> float:
        """When the object was last written (seconds since the epoch; a HEAD request)."""
        name = self._name(key)
        try:
            stat = self._client.stat_object(self.bucket, name)
        except Exception as exc:  # noqa: BLE001
            _raise(exc, key, "look up")
        return stat.last_modified.timestamp() if stat.last_modified is not None else 0.0

    def server_side_encryption(self, key: str) -> str | None:
        """The ``x-amz-server-side-encryption`` the server reports for the object (or None)."""
        name = self._name(key)
        try:
            stat = self._client.stat_object(self.bucket, name)
        except Exception as exc:  # noqa: BLE001
            _raise(exc, key, "look up")
        metadata: Any = stat.metadata or {}
        value = metadata.get("x-amz-server-side-encryption")
        return str(value) if value is not None else None

    def check_bucket(self) -> None:
        """Raise :class:`ObjectStoreError` unless the bucket exists and the credentials work."""
        try:
            found = self._client.bucket_exists(self.bucket)
        except Exception as exc:  # noqa: BLE001
            _raise(exc, None, "use")
        if not found:
            raise ObjectStoreError(f"S3 bucket {self.bucket!r} does not exist")

    # -- internals
    def _get(self, key: str, offset: int, length: int) -> bytes:
        name = self._name(key)
        try:
            response = self._client.get_object(self.bucket, name, offset=offset, length=length)
        except S3Error as exc:
            if exc.code == "InvalidRange":
                # Past the end of the object: nothing there, like reading past EOF of a file.
                if not self.exists(key):
                    raise ObjectNotFound(key) from exc
                return b""
            _raise(exc, key, "read")
        except Exception as exc:  # noqa: BLE001
            _raise(exc, key, "read")
        try:
            return bytes(response.read())
        except Exception as exc:  # noqa: BLE001
            _raise(exc, key, "read")
        finally:
            response.close()
            response.release_conn()


class _ResponseStream(io.RawIOBase):
    """A streamed GET body as a raw binary stream; transport errors become ours."""

    def __init__(self, response: Any, key: str) -> None:
        self._response = response
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._response.read(len(buffer))
        except Exception as exc:  # noqa: BLE001
            _raise(exc, self._key, "read")
        n = len(data)
        buffer[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                self._response.close()
                self._response.release_conn()
            finally:
                super().close()


def _raise(exc: Exception, key: str | None, action: str) -> NoReturn:
    """Re-raise a vendor exception as :class:`ObjectStoreError` (or :class:`ObjectNotFound`)."""
    if isinstance(exc, ObjectStoreError):
        raise exc
    what = f"object {key}" if key is not None else "the bucket"
    if isinstance(exc, S3Error):
        if exc.code in _NOT_FOUND and key is not None:
            raise ObjectNotFound(key) from exc
        if exc.code == "NoSuchBucket":
            raise ObjectStoreError(f"cannot {action} {what}: the S3 bucket does not exist") from exc
        status = getattr(exc.response, "status", 0) or 0
        kind = ObjectStoreUnreachable if exc.code in _UNAVAILABLE or status >= 500 else ObjectStoreError
        raise kind(f"cannot {action} {what}: S3 error {exc.code}: {exc.message}") from exc
    if isinstance(exc, ServerError):
        raise ObjectStoreUnreachable(f"cannot {action} {what}: S3 server answered {exc}") from exc
    if isinstance(exc, InvalidResponseError):
        kind = ObjectStoreUnreachable if int(getattr(exc, "_code", 0) or 0) >= 500 else ObjectStoreError
        raise kind(f"cannot {action} {what}: S3 server answered {exc}") from exc
    if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
        raise ObjectStoreUnreachable(
            f"cannot {action} {what}: S3 server unreachable: {type(exc).__name__}"
        ) from exc
    if isinstance(exc, (MinioException, ValueError)):
        raise ObjectStoreError(f"cannot {action} {what}: {exc}") from exc
    raise exc
