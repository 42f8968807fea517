"""WADO-RS (PS3.18 10.4): studies, series and instances as DICOM, their metadata, frames and
bulk data.

* Instances go out as ``multipart/related; type="application/dicom"``, in the transfer syntax
  the client asks for: ``transfer-syntax=*`` returns what is stored (JPEG-LS for most images);
  no transfer syntax means Explicit VR Little Endian (PS3.18 Table 8.7.3-2), decoded
  pixel-exact from the lossless stored form. A single instance may also be asked for as plain
  ``application/dicom``; that answer honours byte ranges.
* ``/metadata`` is DICOM JSON from the index's metadata cache (storage/metadata.py): a series
  of 300 instances is one index read, made from the objects once.
* ``/frames/{list}`` returns native frames (``application/octet-stream``), or the stored
  bitstream with its own media type (``image/jls`` ...) when the client accepts it or asks
  for ``transfer-syntax=*``; ``/bulkdata/{tag}`` returns a bulk value the metadata points at.

Content named by UIDs carries a strong ETag over the stored objects' sha256 and answers
``If-None-Match`` with 304.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from io import BytesIO
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydicom import dcmread
from pydicom.uid import UID

from storage import part10
from storage.errors import ArchiveError, CodecError
from storage.index.metadata import WadoInstance, wado_instances
from storage.metadata import MetadataCache, MetadataSource, json_array, with_instance_url
from storage.retrieve import decode_to_native
from viewer_api.audit import client_host
from viewer_api.context import Web, base_url, get_web, require
from viewer_api.dicomjson import DICOM_JSON
from viewer_api.dicomweb.media import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMMUTABLE,
    IMPLICIT_VR_LITTLE_ENDIAN,
    NATIVE_SYNTAXES,
    REVALIDATE,
    MediaRange,
    Multipart,
    accepted,
    byte_range,
    etag,
    frame_media_type,
    not_acceptable,
    not_modified,
)
from viewer_api.dicomweb.resources import check_uids, frame_numbers, instance_url
from viewer_api.errors import Problem
from viewer_api.security import Principal

log = logging.getLogger("filmless.wado")

router = APIRouter()

_DICOM = "application/dicom"
_OCTETS = "application/octet-stream"
_MAX_FRAMES_PER_REQUEST = 10_000


# --- what the path names -------------------------------------------------------------------
def _instances(web: Web, study: str, series: str | None = None, instance: str | None = None) -> list[WadoInstance]:
    check_uids(study, series, instance)
    found = wado_instances(web.archive.index, study, series, instance)
    if not found:
        what = "instance" if instance else "series" if series else "study"
        raise Problem(404, "Not found", f"no {what} {instance or series or study} in the archive")
    return found


def _instance_url(base: str, w: WadoInstance) -> str:
    item = w.item
    return instance_url(base, item.study_instance_uid, item.series_instance_uid, item.sop_instance_uid)


def _audit(
    web: Web,
    request: Request,
    principal: Principal,
    resource: str,
    found: Sequence[WadoInstance],
    study: str,
    series: str | None = None,
    instance: str | None = None,
    **detail: Any,
) -> None:
    web.audit.record(
        "dicomweb.wado",
        "success",
        principal=principal,
        host=client_host(request),
        study=study,
        series=series,
        instance=instance,
        detail={"resource": resource, "instances": len(found), **detail},
    )


# --- instances as DICOM --------------------------------------------------------------------
def _wanted_syntax(ranges: Sequence[MediaRange], *, single: bool) -> tuple[bool, str]:
    """(multipart?, transfer syntax: a UID or "*") of the best acceptable range for DICOM."""
    for r in ranges:
        if r.type in ("*/*", "multipart/*") or (r.multipart and r.part_type in ("", "*/*")):
            return True, r.transfer_syntax or EXPLICIT_VR_LITTLE_ENDIAN
        if r.multipart and r.part_type == _DICOM:
            return True, r.transfer_syntax or EXPLICIT_VR_LITTLE_ENDIAN
        if single and r.type == _DICOM:
            return False, r.transfer_syntax or EXPLICIT_VR_LITTLE_ENDIAN
    offered = [f'multipart/related; type="{_DICOM}"'] + ([_DICOM] if single else [])
    raise not_acceptable("DICOM instances", offered)


def _convert(data: bytes, stored: str, target: str) -> bytes:
    """A stored object in ``target`` syntax: as it is, decoded pixel-exact from a lossless
    compressed syntax, or re-encoded between the native syntaxes by pydicom."""
    if target in ("*", stored):
        return data
    if target not in (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN):
        raise Problem(
            406,
            "Not acceptable",
            f"transfer syntax {target} is not offered; ask for transfer-syntax=* (as stored: {stored}), "
            f"{EXPLICIT_VR_LITTLE_ENDIAN} or {IMPLICIT_VR_LITTLE_ENDIAN}",
        )
    native = data if stored in NATIVE_SYNTAXES else decode_to_native(data)
    # Decoding gives explicit VR little endian, the default target: no parse needed then.
    if part10.split(native).transfer_syntax_uid == target:
        return native
    ds = dcmread(BytesIO(native))
    ds.file_meta.TransferSyntaxUID = UID(target)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=target == IMPLICIT_VR_LITTLE_ENDIAN, little_endian=True)
    return out.getvalue()


def _dicom_parts(web: Web, found: Sequence[WadoInstance], syntax: str, base: str) -> Iterator[tuple[bytes, dict[str, str]]]:
    for w in found:
        stored = w.item.stored_transfer_syntax
        try:
            data = _convert(web.retriever.read(w.item), stored, syntax)
        except (ArchiveError, Problem) as exc:
            # The status line is gone already: end the body early, so the client sees a
            # truncated multipart rather than a partial answer that looks complete.
            log.error("WADO-RS: %s cannot be sent: %s", w.sop_instance_uid, exc)
            raise
        sent_syntax = stored if syntax == "*" else syntax
        yield data, {
            "Content-Type": f"{_DICOM}; transfer-syntax={sent_syntax}",
            "Content-Location": _instance_url(base, w),
        }


def _retrieve(request: Request, web: Web, principal: Principal, study: str, series: str | None, instance: str | None) -> Response:
    found = _instances(web, study, series, instance)
    multipart, syntax = _wanted_syntax(accepted(request), single=instance is not None)
    tag = etag("dicom", syntax, *(w.item.object_sha256 for w in found))
    cache = IMMUTABLE if instance else REVALIDATE
    if (hit := not_modified(request, tag, cache)) is not None:
        return hit
    _audit(web, request, principal, "instances", found, study, series, instance, transfer_syntax=syntax)
    headers = {"ETag": tag, "Cache-Control": cache}
    if not multipart:
        data = _convert(web.retriever.read(found[0].item), found[0].item.stored_transfer_syntax, syntax)
        return _ranged(request, data, tag, f"{_DICOM}; transfer-syntax={syntax if syntax != '*' else found[0].item.stored_transfer_syntax}", headers)
    if len(found) == 1:
        # One instance: build it now, so a failure is still a clean problem response.
        parts = list(_dicom_parts(web, found, syntax, base_url(request)))
        body = Multipart(_DICOM, parts)
        return Response(b"".join(body), media_type=body.media_type, headers=headers)
    body = Multipart(_DICOM, _dicom_parts(web, found, syntax, base_url(request)))
    return StreamingResponse(iter(body), media_type=body.media_type, headers=headers)


def _ranged(request: Request, data: bytes, tag: str, media_type: str, headers: dict[str, str]) -> Response:
    headers = {**headers, "Accept-Ranges": "bytes"}
    span = byte_range(request, len(data), tag)
    if span is None:
        return Response(data, media_type=media_type, headers=headers)
    first, last = span
    headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
    return Response(data[first : last + 1], status_code=206, media_type=media_type, headers=headers)


@router.get(
    "/studies/{study}",
    summary="Retrieve a study's instances (multipart/related; type=application/dicom)",
    response_class=Response,
)
def retrieve_study(study: str, request: Request, web: Web = Depends(get_web), principal: Principal = Depends(require("read"))) -> Response:
    return _retrieve(request, web, principal, study, None, None)


@router.get(
    "/studies/{study}/series/{series}",
    summary="Retrieve a series' instances (multipart/related; type=application/dicom)",
    response_class=Response,
)
def retrieve_series(
    study: str, series: str, request: Request, web: Web = Depends(get_web), principal: Principal = Depends(require("read"))
) -> Response:
    return _retrieve(request, web, principal, study, series, None)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}",
    summary="Retrieve an instance (multipart/related; type=application/dicom, or application/dicom with byte ranges)",
    response_class=Response,
)
def retrieve_instance(
    study: str,
    series: str,
    instance: str,
    request: Request,
    web: Web = Depends(get_web),
    principal: Principal = Depends(require("read")),
) -> Response:
    return _retrieve(request, web, principal, study, series, instance)


# --- metadata ------------------------------------------------------------------------------
def _metadata(request: Request, web: Web, principal: Principal, study: str, series: str | None, instance: str | None) -> Response:
    found = _instances(web, study, series, instance)
    ranges = accepted(request)
    if not any(r.type in (DICOM_JSON, "application/json", "*/*", "application/*") for r in ranges):
        raise not_acceptable("metadata", [DICOM_JSON, "application/json"])
    base = base_url(request)
    tag = etag("metadata", base, *(w.received_sha256 for w in found), *(w.item.stored_transfer_syntax for w in found))
    if (hit := not_modified(request, tag, REVALIDATE)) is not None:
        return hit
    cache = MetadataCache(web.archive.index)
    sources = [
        MetadataSource(
            w.sop_instance_uid,
            w.received_sha256,
            (lambda item=w.item: web.retriever.read(item)),  # type: ignore[misc]
        )
        for w in found
    ]
    try:
        bodies = cache.bodies(sources)
    except CodecError as exc:
        raise Problem(500, "Unreadable object", str(exc)) from exc
    _audit(web, request, principal, "metadata", found, study, series, instance)
    body = json_array(
        with_instance_url(b, _instance_url(base, w), w.item.stored_transfer_syntax) for b, w in zip(bodies, found, strict=True)
    )
    return Response(body, media_type=DICOM_JSON, headers={"ETag": tag, "Cache-Control": REVALIDATE})


@router.get("/studies/{study}/metadata", summary="Metadata of a study's instances (DICOM JSON)", response_class=Response)
def study_metadata(study: str, request: Request, web: Web = Depends(get_web), principal: Principal = Depends(require("read"))) -> Response:
    return _metadata(request, web, principal, study, None, None)


@router.get(
    "/studies/{study}/series/{series}/metadata", summary="Metadata of a series' instances (DICOM JSON)", response_class=Response
)
def series_metadata(
    study: str, series: str, request: Request, web: Web = Depends(get_web), principal: Principal = Depends(require("read"))
) -> Response:
    return _metadata(request, web, principal, study, series, None)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/metadata",
    summary="Metadata of an instance (DICOM JSON)",
    response_class=Response,
)
def instance_metadata(
    study: str,
    series: str,
    instance: str,
    request: Request,
    web: Web = Depends(get_web),
    principal: Principal = Depends(require("read")),
) -> Response:
    return _metadata(request, web, principal, study, series, instance)


# --- frames and bulk data ------------------------------------------------------------------
def _frame_choice(ranges: Sequence[MediaRange], stored: str) -> tuple[bool, bool]:
    """(multipart?, as stored?) for frames stored in ``stored``: the stored bitstream when the
    client takes any type, that type, or transfer-syntax=*; native octets otherwise."""
    stored_type = frame_media_type(stored)
    for r in ranges:
        part = r.part_type if r.multipart else r.type
        ts = r.transfer_syntax
        if part in ("*/*", "", "multipart/*", "*") or ts == "*":
            return r.multipart or part in ("*/*", "*", "multipart/*"), True
        if part == _OCTETS and ts in (None, EXPLICIT_VR_LITTLE_ENDIAN):
            return r.multipart, stored in NATIVE_SYNTAXES
        if part == stored_type and ts in (None, stored):
            return r.multipart, True
    offered = [f'multipart/related; type="{_OCTETS}"']
    if stored_type != _OCTETS:
        offered.append(f'multipart/related; type="{stored_type}"; transfer-syntax={stored}')
    raise not_acceptable("these frames", offered)


def _frames_response(
    request: Request, web: Web, principal: Principal, w: WadoInstance, numbers: list[int] | None, resource: str
) -> Response:
    from storage.frames import FrameNotFound, FrameSource

    stored = w.item.stored_transfer_syntax
    multipart, as_stored = _frame_choice(accepted(request), stored)
    tag = etag("frames", str(numbers), str(as_stored), w.item.object_sha256)
    if (hit := not_modified(request, tag, IMMUTABLE)) is not None:
        return hit
    source = FrameSource.from_bytes(web.retriever.read(w.item))
    wanted = numbers if numbers is not None else list(range(1, source.number_of_frames + 1))
    if not multipart and len(wanted) != 1:
        raise Problem(406, "Not acceptable", "several frames need multipart/related in the Accept header")
    try:
        frames = [source.stored_frame(n) if as_stored else source.native_frame(n) for n in wanted]
    except FrameNotFound as exc:
        raise Problem(404, "Not found", f"{exc} (the instance has {source.number_of_frames} frame(s))") from exc
    media = (
        f"{frame_media_type(stored)}; transfer-syntax={stored}"
        if as_stored and stored not in NATIVE_SYNTAXES
        else f"{_OCTETS}; transfer-syntax={EXPLICIT_VR_LITTLE_ENDIAN}"
    )
    _audit(web, request, principal, resource, [w], w.item.study_instance_uid, w.item.series_instance_uid, w.sop_instance_uid, frames=wanted[:50])
    headers = {"ETag": tag, "Cache-Control": IMMUTABLE}
    if not multipart:
        return Response(frames[0], media_type=media, headers=headers)
    location = _instance_url(base_url(request), w)
    body = Multipart(media.split(";")[0], [(f, {"Content-Type": media, "Content-Location": f"{location}/frames/{n}"}) for f, n in zip(frames, wanted, strict=True)])
    return Response(b"".join(body), media_type=body.media_type, headers=headers)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
    summary="Frames of an instance: native (application/octet-stream) or as stored (image/jls, ...)",
    response_class=Response,
)
def retrieve_frames(
    study: str,
    series: str,
    instance: str,
    frames: str,
    request: Request,
    web: Web = Depends(get_web),
    principal: Principal = Depends(require("read")),
) -> Response:
    numbers = frame_numbers(frames, _MAX_FRAMES_PER_REQUEST)
    found = _instances(web, study, series, instance)
    return _frames_response(request, web, principal, found[0], numbers, "frames")


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag_path:path}",
    summary="A bulk data value the metadata points at (Pixel Data: every frame)",
    response_class=Response,
)
def retrieve_bulkdata(
    study: str,
    series: str,
    instance: str,
    tag_path: str,
    request: Request,
    web: Web = Depends(get_web),
    principal: Principal = Depends(require("read")),
) -> Response:
    tags = tag_path.strip("/").split("/")
    if not tags or any(len(t) != 8 or any(c not in "0123456789abcdefABCDEF" for c in t) for t in tags):
        raise Problem(400, "Invalid bulk data path", f"{tag_path[:80]!r} is not a path of 8-digit hexadecimal tags")
    found = _instances(web, study, series, instance)
    w = found[0]
    if tags == ["7FE00010"] or tags == ["7fe00010"]:
        return _frames_response(request, web, principal, w, None, "bulkdata")
    if len(tags) != 1:
        raise Problem(404, "Not found", "only top-level bulk data values are served")
    ranges = accepted(request)
    if not any((r.part_type if r.multipart else r.type) in (_OCTETS, "*/*", "", "*") for r in ranges):
        raise not_acceptable("bulk data", [f'multipart/related; type="{_OCTETS}"', _OCTETS])
    multipart = any(r.multipart or r.type == "*/*" for r in ranges)
    tag = etag("bulkdata", tags[0].upper(), w.item.object_sha256)
    if (hit := not_modified(request, tag, IMMUTABLE)) is not None:
        return hit
    ds = dcmread(BytesIO(web.retriever.read(w.item)), force=True)
    element = ds.get(int(tags[0], 16))
    if element is None or not isinstance(element.value, (bytes, bytearray)):
        raise Problem(404, "Not found", f"the instance has no bulk data value {tags[0].upper()}")
    _audit(web, request, principal, "bulkdata", found, study, series, instance, tag=tags[0].upper())
    headers = {"ETag": tag, "Cache-Control": IMMUTABLE}
    value = bytes(element.value)
    if not multipart:
        return _ranged(request, value, tag, _OCTETS, headers)
    body = Multipart(_OCTETS, [(value, {"Content-Type": _OCTETS})])
    return Response(b"".join(body), media_type=body.media_type, headers=headers)
