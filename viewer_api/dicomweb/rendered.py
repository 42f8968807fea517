"""Rendered images and thumbnails (PS3.18 10.4.1.1.3 rendered, 10.4.1.1.4 thumbnail; query
parameters 8.3.5.1 and 8.3.3.1).

``.../rendered`` renders stored images to JPEG (the default) or PNG through
:mod:`storage.render`; a study or series comes back as ``multipart/related; type="image/jpeg"``
with one part per image instance (at most :data:`MAX_PARTS`), an instance as one image (the
first frame of a multi-frame instance), ``.../frames/{list}/rendered`` as one image per frame
(multipart for several). ``.../thumbnail`` is one small image (default viewport 128x128,
aspect ratio kept): for a series its middle image instance, for a study the middle image of its
series with the most image instances; thumbnails are kept on disk under
``<data>/cache/thumbnails``, so a study list's pictures do not read or decode objects again.

Query parameters: ``window=center,width[,linear|linear-exact|sigmoid]``,
``viewport=vw,vh`` (or ``vw`` alone, or ``vw,vh,sx,sy,sw,sh`` with a source region whose
negative width or height flips the image), ``quality=1..100`` (JPEG), ``accept=`` (overrides
the Accept header); ``annotation`` is not supported (400 unless empty).

Content under a UID never changes (a new version changes the object's sha256), so responses
carry a strong ETag over the objects' sha256 and the parameters, ``Cache-Control: private,
max-age=86400``, and answer ``If-None-Match`` with 304 without reading any object.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse

from storage.errors import ArchiveError, CodecError
from storage.frames import FrameNotFound, FrameSource
from storage.index import RetrievableInstance
from storage.render import JPEG, MEDIA_TYPES, PNG, DEFAULT_QUALITY, Window, check_window, frame_header, render
from viewer_api.audit import client_host
from viewer_api.context import Web, base_url, get_web, require
from viewer_api.dicomweb.media import IMMUTABLE, MediaRange, Multipart, accepted, etag, not_acceptable, not_modified
from viewer_api.dicomweb.resources import check_uids, frame_numbers, instance_url
from viewer_api.errors import Problem
from viewer_api.security import Principal

log = logging.getLogger("filmless.rendered")

router = APIRouter()

MAX_PARTS = 1000
"""The most images one rendered study, series or frame list returns."""
THUMBNAIL_VIEWPORT = (128, 128)
MAX_VIEWPORT = 8192
THUMBNAIL_CACHE_BYTES = 256 * 1024 * 1024
_INTEGER = re.compile(r"[+-]?[0-9]{1,9}")
# SOP classes that never hold an image (SR, key objects, presentation states, encapsulated
# documents, waveforms, RT plans and structure sets, registrations): skipped for studies and series.
_NON_IMAGE_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.",
    "1.2.840.10008.5.1.4.1.1.11.",
    "1.2.840.10008.5.1.4.1.1.104.",
    "1.2.840.10008.5.1.4.1.1.9.",
    "1.2.840.10008.5.1.4.1.1.481.3",
    "1.2.840.10008.5.1.4.1.1.481.4",
    "1.2.840.10008.5.1.4.1.1.481.5",
    "1.2.840.10008.5.1.4.1.1.481.6",
    "1.2.840.10008.5.1.4.1.1.481.7",
    "1.2.840.10008.5.1.4.1.1.481.8",
    "1.2.840.10008.5.1.4.1.1.481.9",
    "1.2.840.10008.5.1.4.1.1.66.1",
    "1.2.840.10008.5.1.4.1.1.66.2",
    "1.2.840.10008.5.1.4.1.1.66.3",
    "1.2.840.10008.5.1.4.1.1.67",
)
_EXTENSIONS = {JPEG: "jpg", PNG: "png"}


# --- the query parameters ------------------------------------------------------------------
@dataclass(frozen=True)
class Rendering:
    """What the client asked for: media type, window, viewport, source region, quality."""

    media_type: str
    window: Window | None
    viewport: tuple[int, int] | None
    region: tuple[int, int, int, int] | None
    quality: int

    def key(self) -> str:
        return f"{self.media_type}|{self.window}|{self.viewport}|{self.region}|{self.quality}"


@dataclass(frozen=True)
class RenderQuery:
    window: str | None
    viewport: str | None
    quality: str | None
    annotation: str | None


async def render_query(
    window: str | None = Query(None, description="center,width[,function]: function linear (default), linear-exact or sigmoid"),
    viewport: str | None = Query(None, description="vw,vh (or vw alone, or vw,vh,sx,sy,sw,sh): fit inside vw x vh, keeping the aspect ratio"),
    quality: str | None = Query(None, description="JPEG quality, 1-100 (default 90)"),
    annotation: str | None = Query(None, description="not supported: leave it out"),
    accept: str | None = Query(None, description="media type: image/jpeg (default) or image/png; overrides the Accept header"),
) -> RenderQuery:
    return RenderQuery(window, viewport, quality, annotation)


def _bad(title: str, detail: str) -> Problem:
    return Problem(400, title, detail)


def _parse_window(text: str | None) -> Window | None:
    if text is None or text == "":
        return None
    pieces = [p.strip() for p in text.split(",")]
    if len(pieces) not in (2, 3):
        raise _bad("Invalid window", f"window is center,width[,function], not {text[:80]!r}")
    try:
        center, width = float(pieces[0]), float(pieces[1])
    except ValueError:
        raise _bad("Invalid window", f"window center and width must be numbers, not {text[:80]!r}") from None
    function = (pieces[2] if len(pieces) == 3 and pieces[2] else "linear").upper().replace("-", "_")
    try:
        return check_window(center, width, function)
    except ValueError as exc:
        raise _bad("Invalid window", f"{exc} (PS3.18 8.3.5.1.4; functions: linear, linear-exact, sigmoid)") from None


def _parse_viewport(text: str | None) -> tuple[tuple[int, int] | None, tuple[int, int, int, int] | None]:
    if text is None or text == "":
        return None, None
    pieces = [p.strip() for p in text.split(",")]
    if len(pieces) not in (1, 2, 6):
        raise _bad("Invalid viewport", f"viewport is vw,vh (or vw, or vw,vh,sx,sy,sw,sh), not {text[:80]!r}")
    if not all(p == "" or _INTEGER.fullmatch(p) for p in pieces):
        raise _bad("Invalid viewport", f"viewport values must be integers, not {text[:80]!r}")
    numbers = [int(p) if p else None for p in pieces]
    vw = numbers[0]
    vh = numbers[1] if len(numbers) > 1 else None
    if vw is None:
        raise _bad("Invalid viewport", "the viewport width is required")
    if not 1 <= vw <= MAX_VIEWPORT or (vh is not None and not 1 <= vh <= MAX_VIEWPORT):
        raise _bad("Invalid viewport", f"viewport width and height must be between 1 and {MAX_VIEWPORT}")
    region: tuple[int, int, int, int] | None = None
    if len(numbers) == 6:
        sx, sy, sw, sh = numbers[2:]
        if sx is None or sy is None or sw is None or sh is None or sx < 0 or sy < 0 or sw == 0 or sh == 0:
            raise _bad("Invalid viewport", "the source region sx,sy,sw,sh needs sx, sy >= 0 and non-zero sw, sh")
        region = (sx, sy, sw, sh)
    # vw alone: fit the width; the height follows from the aspect ratio
    return (vw, vh if vh is not None else MAX_VIEWPORT), region


def _parse_quality(text: str | None) -> int:
    if text is None or text == "":
        return DEFAULT_QUALITY
    if not _INTEGER.fullmatch(text.strip()) or not 1 <= int(text) <= 100:
        raise _bad("Invalid quality", f"quality is an integer from 1 to 100, not {text[:40]!r}")
    return int(text)


def _media_type(ranges: Sequence[MediaRange]) -> str:
    """image/jpeg or image/png, whichever the client prefers; JPEG for */* and image/*."""
    for r in ranges:
        wanted = r.part_type if r.multipart else r.type
        if wanted in MEDIA_TYPES:
            return wanted
        if wanted in ("*/*", "image/*", "", "*", "multipart/*"):
            return JPEG
    raise not_acceptable("a rendered image", [JPEG, PNG, f'multipart/related; type="{JPEG}"'])


def _rendering(request: Request, query: RenderQuery, *, thumbnail: bool) -> Rendering:
    if query.annotation:
        raise _bad(
            "Annotation not supported",
            "rendered images carry no burned-in annotations here; leave out the annotation parameter",
        )
    window = _parse_window(query.window)
    viewport, region = _parse_viewport(query.viewport)
    if thumbnail and viewport is None:
        viewport = THUMBNAIL_VIEWPORT
    quality = _parse_quality(query.quality)
    return Rendering(_media_type(accepted(request)), window, viewport, region, quality)


# --- rendering -------------------------------------------------------------------------------
def _crop(pixels: np.ndarray[Any, Any], region: tuple[int, int, int, int]) -> np.ndarray[Any, Any]:
    """The source region (PS3.18 8.3.5.1.3): sx, sy the top left corner, sw, sh its size; a
    negative size takes the region to the left / above and flips it."""
    sx, sy, sw, sh = region
    rows, columns = pixels.shape[:2]
    if sx >= columns or sy >= rows:
        raise _bad("Invalid viewport", f"the source region starts outside the {columns}x{rows} image")
    cols = slice(sx, min(sx + sw, columns)) if sw > 0 else slice(sx, max(sx + sw, -1) if sx + sw >= 0 else None, -1)
    rws = slice(sy, min(sy + sh, rows)) if sh > 0 else slice(sy, max(sy + sh, -1) if sy + sh >= 0 else None, -1)
    return np.ascontiguousarray(pixels[rws, cols])


def _render_frame(source: FrameSource, number: int, rendering: Rendering) -> bytes:
    try:
        pixels = source.array(number)
    except FrameNotFound as exc:
        raise Problem(404, "Not found", str(exc)) from exc
    except CodecError as exc:
        raise Problem(422, "Cannot render", f"the image cannot be decoded: {exc}") from exc
    if rendering.region is not None:
        pixels = _crop(pixels, rendering.region)
    try:
        return render(
            frame_header(source.header, number),
            pixels,
            window=rendering.window,
            viewport=rendering.viewport,
            media_type=rendering.media_type,
            quality=rendering.quality,
        )
    except CodecError as exc:
        raise Problem(422, "Cannot render", str(exc)) from exc


def _source(web: Web, item: RetrievableInstance) -> FrameSource:
    try:
        source = FrameSource.from_bytes(web.retriever.read(item))
    except CodecError as exc:
        raise Problem(422, "Cannot render", f"instance {item.sop_instance_uid}: {exc}") from exc
    if source.number_of_frames == 0:
        raise Problem(422, "Cannot render", f"instance {item.sop_instance_uid} has no image (no Pixel Data)")
    return source


def _maybe_image(item: RetrievableInstance) -> bool:
    return not item.sop_class_uid.startswith(_NON_IMAGE_PREFIXES)


def _instance_url(base: str, item: RetrievableInstance) -> str:
    return instance_url(base, item.study_instance_uid, item.series_instance_uid, item.sop_instance_uid)


# --- the on-disk thumbnail cache ------------------------------------------------------------------
class ThumbnailCache:
    """Rendered thumbnails by key, in files under ``root``; written atomically (a temporary
    file renamed into place), the least recently used removed beyond ``limit`` bytes."""

    def __init__(self, root: Path, limit: int = THUMBNAIL_CACHE_BYTES) -> None:
        self.root = root
        self.limit = limit
        self._lock = threading.Lock()
        self._size: int | None = None

    def _path(self, key: str, media_type: str) -> Path:
        return self.root / key[:2] / f"{key}.{_EXTENSIONS[media_type]}"

    def get(self, key: str, media_type: str) -> bytes | None:
        path = self._path(key, media_type)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        try:
            os.utime(path)  # recently used: evicted last
        except OSError:
            pass
        return data

    def put(self, key: str, media_type: str, data: bytes) -> None:
        path = self._path(key, media_type)
        temporary = path.with_name(f".{uuid.uuid4().hex}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_bytes(data)
            os.replace(temporary, path)
        except OSError as exc:
            log.warning("thumbnail cache: cannot write %s: %s", path, exc)
            temporary.unlink(missing_ok=True)
            return
        with self._lock:
            if self._size is None:
                self._size = sum(size for _mtime, size, _path in self._files())
            else:
                self._size += len(data)
            if self._size > self.limit:
                self._evict()

    def _files(self) -> list[tuple[float, int, Path]]:
        found = []
        for path in self.root.glob("*/*"):
            try:
                stat = path.stat()
            except OSError:
                continue
            found.append((stat.st_mtime, stat.st_size, path))
        return found

    def _evict(self) -> None:
        """Remove the least recently used files until the cache holds 80% of its limit."""
        files = sorted(self._files())
        total = sum(size for _mtime, size, _path in files)
        for _mtime, size, path in files:
            if total <= self.limit * 0.8:
                break
            try:
                path.unlink()
                total -= size
            except OSError:
                continue
        self._size = total


_CACHES: dict[Path, ThumbnailCache] = {}
_CACHES_LOCK = threading.Lock()


def thumbnail_cache(web: Web) -> ThumbnailCache:
    return thumbnail_cache_of(Path(web.settings.data))


def _rendered_key(item: RetrievableInstance, number: int, rendering: Rendering) -> str:
    return hashlib.sha256(f"rendered|{item.object_sha256}|{number}|{rendering.key()}".encode()).hexdigest()


def _thumbnail_key(item: RetrievableInstance, number: int, rendering: Rendering) -> str:
    return hashlib.sha256(f"{item.object_sha256}|{number}|{rendering.key()}".encode()).hexdigest()


DEFAULT_RENDERING = Rendering(JPEG, None, None, None, DEFAULT_QUALITY)
DEFAULT_THUMBNAIL = Rendering(JPEG, None, THUMBNAIL_VIEWPORT, None, DEFAULT_QUALITY)


def prerender(data_dir: Path, item: RetrievableInstance, data: bytes) -> bool:
    """Put the default view (``/frames/1/rendered``) and the thumbnail of a newly arrived
    image into the cache, so the first look at a new study is as fast as the second. Run in
    the background (the metadata warmer); False when the instance is no image."""
    if not _maybe_image(item):
        return False
    cache = thumbnail_cache_of(data_dir)
    keys = [(_rendered_key(item, 1, DEFAULT_RENDERING), DEFAULT_RENDERING), (_thumbnail_key(item, 1, DEFAULT_THUMBNAIL), DEFAULT_THUMBNAIL)]
    missing = [(key, rendering) for key, rendering in keys if cache.get(key, JPEG) is None]
    if not missing:
        return True
    try:
        source = FrameSource.from_bytes(data)
        if source.number_of_frames == 0:
            return False
        for key, rendering in missing:
            cache.put(key, JPEG, _render_frame(source, 1, rendering))
    except (Problem, ArchiveError):
        return False
    return True


def thumbnail_cache_of(data_dir: Path) -> ThumbnailCache:
    root = (data_dir / "cache" / "thumbnails").resolve()
    with _CACHES_LOCK:
        if root not in _CACHES:
            _CACHES[root] = ThumbnailCache(root)
        return _CACHES[root]


# --- responses -------------------------------------------------------------------------------------
def _locate(web: Web, study: str, series: str | None = None, instance: str | None = None) -> list[RetrievableInstance]:
    check_uids(study, series, instance)
    if series is not None and instance is not None:
        one = web.archive.index.locate_instance(study, series, instance)
        found = [one] if one is not None else []
    else:
        keys: dict[str, Any] = {"study_uids": [study]}
        if series is not None:
            keys["series_uids"] = [series]
        found = web.retriever.locate(**keys)
    if not found:
        what = "instance" if instance else "series" if series else "study"
        raise Problem(404, "Not found", f"no {what} {instance or series or study} in the archive")
    return found


def _audit(
    web: Web,
    request: Request,
    principal: Principal,
    action: str,
    study: str,
    series: str | None,
    instance: str | None,
    **detail: Any,
) -> None:
    web.audit.record(
        action,
        "success",
        principal=principal,
        host=client_host(request),
        study=study,
        series=series,
        instance=instance,
        detail=detail,
    )


def _headers(tag: str) -> dict[str, str]:
    return {"ETag": tag, "Cache-Control": IMMUTABLE, "Vary": "Accept"}


def _rendered(
    request: Request,
    web: Web,
    principal: Principal,
    query: RenderQuery,
    study: str,
    series: str | None = None,
    instance: str | None = None,
    frames: str | None = None,
) -> Response:
    numbers = frame_numbers(frames, MAX_PARTS) if frames is not None else None
    rendering = _rendering(request, query, thumbnail=False)
    found = _locate(web, study, series, instance)
    if instance is None:
        found = [item for item in found if _maybe_image(item)]
        if not found:
            raise Problem(422, "Cannot render", f"the {'series' if series else 'study'} holds no images")
        if len(found) > MAX_PARTS:
            raise Problem(
                413,
                "Content too large",
                f"{len(found)} images; a rendered study or series returns at most {MAX_PARTS}: ask per series or instance",
            )
    tag = etag("rendered", rendering.key(), str(numbers), *(item.object_sha256 for item in found))
    audit = {"resource": "frames" if numbers else "instance" if instance else "series" if series else "study"}
    if (hit := not_modified(request, tag, IMMUTABLE)) is not None:
        _audit(web, request, principal, "dicomweb.rendered", study, series, instance, **audit, not_modified=True)
        return hit
    base = base_url(request)
    if instance is not None:
        item = found[0]
        wanted = numbers or [1]  # a multi-frame instance renders its first frame
        if len(wanted) == 1:
            # One picture: kept in the same bounded cache as the thumbnails, since a viewer
            # (or a report page) asks for the same frame again and again, and decoding the
            # stored JPEG-LS is most of the work.
            cache = thumbnail_cache(web)
            key = _rendered_key(item, wanted[0], rendering)
            image = cache.get(key, rendering.media_type)
            if image is None:
                image = _render_frame(_source(web, item), wanted[0], rendering)
                cache.put(key, rendering.media_type, image)
            images = [image]
        else:
            source = _source(web, item)
            images = [_render_frame(source, n, rendering) for n in wanted]
        _audit(web, request, principal, "dicomweb.rendered", study, series, instance, **audit, frames=wanted[:50])
        if numbers is None or len(images) == 1:
            return Response(images[0], media_type=rendering.media_type, headers=_headers(tag))
        location = _instance_url(base, item)
        body = Multipart(
            rendering.media_type,
            [
                (image, {"Content-Type": rendering.media_type, "Content-Location": f"{location}/frames/{n}/rendered"})
                for image, n in zip(images, wanted, strict=True)
            ],
        )
        return Response(b"".join(body), media_type=body.media_type, headers=_headers(tag))
    # A study or series: the first image is rendered before the answer starts (a failure is a
    # clean problem); the others stream, one object read at a time.
    parts = _instance_parts(web, found, rendering, base)
    first = next(parts, None)
    if first is None:
        raise Problem(422, "Cannot render", f"no instance of the {'series' if series else 'study'} has an image")
    _audit(web, request, principal, "dicomweb.rendered", study, series, None, **audit, instances=len(found))
    body = Multipart(rendering.media_type, _chain(first, parts))
    return StreamingResponse(iter(body), media_type=body.media_type, headers=_headers(tag))


def _chain(first: tuple[bytes, dict[str, str]], rest: Iterator[tuple[bytes, dict[str, str]]]) -> Iterator[tuple[bytes, dict[str, str]]]:
    yield first
    yield from rest


def _instance_parts(
    web: Web, found: Sequence[RetrievableInstance], rendering: Rendering, base: str
) -> Iterator[tuple[bytes, dict[str, str]]]:
    for item in found:
        try:
            source = FrameSource.from_bytes(web.retriever.read(item))
            if source.number_of_frames == 0:
                continue  # not an image (an SR in an image series): no part
            image = _render_frame(source, 1, rendering)
        except (ArchiveError, Problem) as exc:
            # Once the status line is sent, end the body early: a truncated multipart, not a
            # partial answer that looks complete.
            log.error("rendered: %s cannot be rendered: %s", item.sop_instance_uid, exc)
            raise
        yield image, {"Content-Type": rendering.media_type, "Content-Location": f"{_instance_url(base, item)}/rendered"}


def _representative(found: Sequence[RetrievableInstance]) -> list[RetrievableInstance]:
    """Thumbnail candidates, best first: the middle instance of the series with the most image
    instances, then the middle instances of the other series (for a study without images in
    its biggest series)."""
    by_series: dict[str, list[RetrievableInstance]] = {}
    for item in found:
        if _maybe_image(item):
            by_series.setdefault(item.series_instance_uid, []).append(item)
    ordered = sorted(by_series.values(), key=len, reverse=True)  # stable: ties keep series order
    candidates = [items[len(items) // 2] for items in ordered]
    return candidates[:5]


def _thumbnail(
    request: Request,
    web: Web,
    principal: Principal,
    query: RenderQuery,
    study: str,
    series: str | None = None,
    instance: str | None = None,
    frames: str | None = None,
) -> Response:
    numbers = frame_numbers(frames, MAX_PARTS) if frames is not None else None
    rendering = _rendering(request, query, thumbnail=True)
    found = _locate(web, study, series, instance)
    candidates = found[:1] if instance is not None else _representative(found)
    if not candidates:
        raise Problem(422, "Cannot render", f"the {'series' if series else 'study'} holds no images")
    number = numbers[0] if numbers else 1
    cache = thumbnail_cache(web)
    audit = {"resource": "frames" if numbers else "instance" if instance else "series" if series else "study"}
    last: Problem | None = None
    for item in candidates:
        key = _thumbnail_key(item, number, rendering)
        tag = etag("thumbnail", key)
        where = {"shown": item.sop_instance_uid, "frame": number}
        if (hit := not_modified(request, tag, IMMUTABLE)) is not None:
            _audit(web, request, principal, "dicomweb.thumbnail", study, series, instance, **audit, **where, not_modified=True)
            return hit
        image = cache.get(key, rendering.media_type)
        cached = image is not None
        if image is None:
            try:
                image = _render_frame(_source(web, item), number, rendering)
            except Problem as exc:
                if instance is not None or exc.status != 422:
                    raise
                last = exc  # not an image after all: try the next series
                continue
            cache.put(key, rendering.media_type, image)
        _audit(web, request, principal, "dicomweb.thumbnail", study, series, instance, **audit, **where, cached=cached)
        return Response(image, media_type=rendering.media_type, headers=_headers(tag))
    assert last is not None
    raise last


# --- routes ---------------------------------------------------------------------------------------
_RENDERED = "image/jpeg (default) or image/png"


@router.get(
    "/studies/{study}/rendered",
    summary=f"A study's images rendered ({_RENDERED}), as multipart/related, one part per image instance",
    response_class=Response,
)
def study_rendered(
    study: str,
    request: Request,
    query: RenderQuery = Depends(render_query),
    web: Web = Depends(get_web),
    principal: Principal = Depends(require("read")),
) -> Response:
    return _rendered(request, web, principal, query, study)


@router.get(
    "/studies/{study}/series/{series}/rendered",
    summary=f"A series' images rendered ({_RENDERED}), as multipart/related, one part per image instance",
    response_class=Response,
)
def series_rendered(
    study: str,
    series: str,
    request: Request,
    query: RenderQuery = Depends(render_query),
    web: Web = Depends(get_web),
    principal: Principal = Depends(require("read")),
) -> Response:
    return _rendered(request, web, principal, query, study, series)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/rendered",
    summary=f"An instance rendered ({_RENDERED}); a multi-frame instance: its first frame",
    response_class=Response,
)
def instance_rendered(
    study: str,
    series: str,
    instance: str,
    request: Request,
    query: RenderQuery = Depends(render_query),
    web: Web = Depends(get_web),
    principal: Principal = Depends(require("read")),
) -> Response:
    return _rendered(request, web, principal, query, study, series, instance)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered",
    summary=f"Frames rendered ({_RENDERED}); several frames as multipart/related",
    response_class=Response,
)
def frames_rendered(
    study: str,
    series: str,
    instance: str,
    frames: str,
    request: Request,
    query: RenderQuery = Depends(render_query),
    web: Web = Depends(get_web),
    principal: Principal = Depends(require("read")),
) -> Response:
    return _rendered(request, web, principal, query, study, series, instance, frames)


@router.get(
    "/studies/{study}/thumbnail",
    summary="A study's thumbnail: the middle image of its largest series (default 128x128)",
    response_class=Response,
)
def study_thumbnail(
    study: str,
    request: Request,
    query: RenderQuery = Depends(render_query),
    web: Web = Depends(get_web),
    principal: Principal = Depends(require("read")),
) -> Response:
    return _thumbnail(request, web, principal, query, study)


@router.get(
    "/studies/{study}/series/{series}/thumbnail",
    summary="A series' thumbnail: its middle image (default 128x128)",
    response_class=Response,
)
def series_thumbnail(
    study: str,
    series: str,
    request: Request,
    query: RenderQuery = Depends(render_query),
    web: Web = Depends(get_web),
    principal: Principal = Depends(require("read")),
) -> Response:
    return _thumbnail(request, web, principal, query, study, series)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/thumbnail",
    summary="An instance's thumbnail (its first frame; default 128x128)",
    response_class=Response,
)
def instance_thumbnail(
    study: str,
    series: str,
    instance: str,
    request: Request,
    query: RenderQuery = Depends(render_query),
    web: Web = Depends(get_web),
    principal: Principal = Depends(require("read")),
) -> Response:
    return _thumbnail(request, web, principal, query, study, series, instance)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/thumbnail",
    summary="A frame's thumbnail (the first frame listed; default 128x128)",
    response_class=Response,
)
def frames_thumbnail(
    study: str,
    series: str,
    instance: str,
    frames: str,
    request: Request,
    query: RenderQuery = Depends(render_query),
    web: Web = Depends(get_web),
    principal: Principal = Depends(require("read")),
) -> Response:
    return _thumbnail(request, web, principal, query, study, series, instance, frames)


__all__ = ["MAX_PARTS", "THUMBNAIL_VIEWPORT", "ThumbnailCache", "router", "thumbnail_cache"]
