"""Media types of DICOMweb: Accept negotiation (PS3.18 8.7), multipart/related bodies, the
media type of each transfer syntax (PS3.18 Table 8.7.3-5), HTTP caching and byte ranges."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import Response

from viewer_api.errors import Problem

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
NATIVE_SYNTAXES = frozenset(
    {IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"}
)

# PS3.18 Table 8.7.3-5: the media type a compressed frame is sent as, by transfer syntax.
FRAME_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.100": "video/mpeg",
    "1.2.840.10008.1.2.4.101": "video/mpeg",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
}


def frame_media_type(transfer_syntax_uid: str) -> str:
    return FRAME_MEDIA_TYPES.get(transfer_syntax_uid, "application/octet-stream")


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header: ``multipart/related; type="application/dicom"; q=0.5``."""

    type: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def multipart(self) -> bool:
        return self.type == "multipart/related"

    @property
    def part_type(self) -> str:
        """The media type of the parts (multipart) or of the body."""
        return self.params.get("type", "").lower() if self.multipart else self.type

    @property
    def transfer_syntax(self) -> str | None:
        value = self.params.get("transfer-syntax")
        return value.strip() if value else None

    def __str__(self) -> str:
        extra = "".join(f'; {k}="{v}"' if k == "type" else f"; {k}={v}" for k, v in self.params.items())
        return self.type + extra


def _split(header: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes."""
    out: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in header:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(current))
            current = []
        else:
            current.append(ch)
    out.append("".join(current))
    return out


def parse_media_range(text: str) -> MediaRange | None:
    pieces = _split(text, ";")
    media = pieces[0].strip().lower()
    if not media or "/" not in media:
        return None
    params: dict[str, str] = {}
    q = 1.0
    for piece in pieces[1:]:
        name, sep, value = piece.partition("=")
        if not sep:
            continue
        name = name.strip().lower()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if name == "q":
            try:
                q = float(value)
            except ValueError:
                q = 0.0
        else:
            params[name] = value
    return MediaRange(media, params, q)


def accepted(request: Request, *, default: str = "*/*") -> list[MediaRange]:
    """The media ranges the client accepts, best first: the ``accept`` query parameter when
    given (PS3.18 8.3.3.1), else the Accept header."""
    values = request.query_params.getlist("accept")
    header = ",".join(values) if values else request.headers.get("accept") or default
    ranges = [r for r in (parse_media_range(p) for p in _split(header, ",")) if r is not None and r.q > 0]
    return sorted(ranges, key=lambda r: -r.q)  # sorted() is stable: ties keep the client's order


def not_acceptable(what: str, offered: Iterable[str]) -> Problem:
    return Problem(
        406,
        "Not acceptable",
        f"{what} can be returned as {', '.join(offered)}; none of these is in the Accept header",
    )


class Multipart:
    """A ``multipart/related`` body (RFC 2387) written part by part."""

    def __init__(self, part_type: str, parts: Iterable[tuple[bytes, dict[str, str]]]) -> None:
        self.boundary = secrets.token_hex(16)
        self.part_type = part_type
        self.parts = parts

    @property
    def media_type(self) -> str:
        return f'multipart/related; type="{self.part_type}"; boundary={self.boundary}'

    def __iter__(self) -> Iterator[bytes]:
        dash = f"--{self.boundary}".encode()
        for body, headers in self.parts:
            head = b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
            yield dash + b"\r\n" + head + b"\r\n"
            yield body
            yield b"\r\n"
        yield dash + b"--\r\n"


# --- caching -------------------------------------------------------------------------------
IMMUTABLE = "private, max-age=86400"
"""Content named by UIDs and a content hash: the same URL gives the same bytes."""
REVALIDATE = "private, no-cache"
"""Content that changes when instances arrive (a series' metadata): check the ETag each time."""


def etag(*parts: str) -> str:
    """A strong entity tag over ``parts``."""
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:40]
    return f'"{digest}"'


def not_modified(request: Request, tag: str, cache_control: str) -> Response | None:
    """A 304 response when the client holds ``tag`` already."""
    header = request.headers.get("if-none-match")
    if header is None:
        return None
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    if tag in tags or "*" in tags:
        return Response(status_code=304, headers={"ETag": tag, "Cache-Control": cache_control})
    return None


def byte_range(request: Request, size: int, tag: str) -> tuple[int, int] | None:
    """The single byte range a GET asks for (RFC 9110 14.2), as (first, last) inclusive; None
    for the whole body. Several ranges, or an If-Range that no longer matches: the whole body.
    Unsatisfiable: 416."""
    header = request.headers.get("range")
    if not header:
        return None
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() != tag:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    try:
        if not dash:
            raise ValueError
        if first_text == "":
            suffix = int(last_text)
            if suffix <= 0:
                raise _unsatisfiable(size)
            return max(0, size - suffix), size - 1
        first = int(first_text)
        last = int(last_text) if last_text else size - 1
    except ValueError:
        return None  # a malformed Range header is ignored (RFC 9110 14.2)
    if first < 0 or first >= size or last < first:
        raise _unsatisfiable(size)
    return first, min(last, size - 1)


def _unsatisfiable(size: int) -> Problem:
    return Problem(416, "Range not satisfiable", f"the body has {size} bytes", headers={"Content-Range": f"bytes */{size}"})
