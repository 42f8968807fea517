"""WADO-URI (PS3.18 9, the URI Service): one instance named by query parameters, for EMR
integrations older than DICOMweb.

``GET /wado?requestType=WADO&studyUID=..&seriesUID=..&objectUID=..[&contentType=..]``

* ``contentType=application/dicom``: the instance as stored, or with ``transferSyntax=`` in
  that syntax (native syntaxes decoded pixel-exact from the lossless stored form);
* ``image/jpeg`` (the default for a single-frame image) and ``image/png``: the
  image rendered, with ``frameNumber``, ``rows``/``columns`` (the viewport: the image is
  scaled to fit, never enlarged), ``windowCenter``/``windowWidth`` and ``imageQuality``.
  Without ``contentType`` an object that is not a single-frame image is sent as
  ``application/dicom``.

Parameters that would change what the answer means but are not implemented (``anonymize``,
``annotation``, ``region``, presentation states, a ``charset`` other than UTF-8) are refused
with 400 rather than ignored: an EMR must not show an image it believes anonymised or
annotated when it is not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from storage import render
from storage.errors import CodecError
from storage.frames import FrameNotFound, FrameSource
from storage.index import RetrievableInstance
from storage.retrieve import NoAcceptableTransferSyntax
from viewer_api.dicomweb.resources import is_uid
from viewer_api.audit import client_host
from viewer_api.context import Web, get_web, require
from viewer_api.errors import Problem
from viewer_api.security import Principal

router = APIRouter()

DICOM = "application/dicom"
JPEG = render.JPEG
PNG = render.PNG
_RENDERED = (JPEG, PNG)
_UTF8 = frozenset({"utf-8", "utf8", "iso_ir 192", "iso-ir 192", "iso_ir192"})
_UNSUPPORTED = {
    "anonymize": "anonymised copies are not offered",
    "annotation": "burnt-in annotations are not offered",
    "region": "regions of an image are not offered; ask for the whole image",
    "presentationUID": "presentation states are not applied",
    "presentationSeriesUID": "presentation states are not applied",
}
_MAX_VIEWPORT = 8192


@dataclass(frozen=True)
class WadoRequest:
    """The parsed and checked query of a WADO-URI request."""

    study: str
    series: str
    instance: str
    content_types: tuple[str, ...]
    """Acceptable media types in the order given (empty: the default for the object)."""
    transfer_syntax: str | None = None
    frame: int | None = None
    rows: int | None = None
    columns: int | None = None
    window: tuple[float, float] | None = None
    quality: int | None = None


def parse(query: Mapping[str, str]) -> WadoRequest:
    """Check a WADO-URI query (PS3.18 9); :class:`Problem` 400 for what is wrong."""
    request_type = query.get("requestType")
    if request_type is None:
        raise _bad("requestType is required (requestType=WADO)")
    if request_type != "WADO":
        raise _bad(f"requestType must be WADO, not {request_type[:40]!r}")
    uids = {}
    for name in ("studyUID", "seriesUID", "objectUID"):
        value = query.get(name)
        if not value:
            raise _bad(f"{name} is required")
        if not is_uid(value):
            raise _bad(f"{name} {value[:80]!r} is not a DICOM UID")
        uids[name] = value
    for name, why in _UNSUPPORTED.items():
        if name in query:
            raise _bad(f"{name} is not supported: {why}")
    charset = query.get("charset")
    if charset is not None:
        names = [c.split(";")[0].strip().lower() for c in charset.split(",") if c.strip()]
        if not any(n in _UTF8 for n in names):
            raise _bad(f"charset {charset[:40]!r} is not supported: answers are sent in their stored character set or UTF-8")
    types = tuple(t.split(";")[0].strip().lower() for t in query.get("contentType", "").split(",") if t.strip())
    transfer_syntax = query.get("transferSyntax")
    if transfer_syntax is not None and not is_uid(transfer_syntax):
        raise _bad(f"transferSyntax {transfer_syntax[:80]!r} is not a transfer syntax UID")
    window = None
    center, width = query.get("windowCenter"), query.get("windowWidth")
    if (center is None) != (width is None):
        raise _bad("windowCenter and windowWidth go together")
    if center is not None and width is not None:
        c, w = _number("windowCenter", center), _number("windowWidth", width)
        if w <= 0:
            raise _bad("windowWidth must be greater than 0")
        window = (c, w)
    return WadoRequest(
        study=uids["studyUID"],
        series=uids["seriesUID"],
        instance=uids["objectUID"],
        content_types=types,
        transfer_syntax=transfer_syntax,
        frame=_integer(query, "frameNumber", 1, 2**31 - 1),
        rows=_integer(query, "rows", 1, _MAX_VIEWPORT),
        columns=_integer(query, "columns", 1, _MAX_VIEWPORT),
        window=window,
        quality=_integer(query, "imageQuality", 1, 100),
    )


def _bad(detail: str) -> Problem:
    return Problem(400, "Invalid WADO-URI request", detail)


def _number(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _bad(f"{name} {text[:40]!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise _bad(f"{name} {text[:40]!r} is not a number")
    return value


def _integer(query: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    text = query.get(name)
    if text is None:
        return None
    if not text.strip().isdigit() or not low <= int(text) <= high:
        raise _bad(f"{name} must be a whole number from {low} to {high}, not {text[:40]!r}")
    return int(text)


@router.get(
    "/wado",
    summary="WADO-URI (PS3.18 9): one instance as DICOM, JPEG or PNG, named by query parameters",
    responses={
        400: {"description": "A required parameter is missing, or one is invalid or not supported"},
        404: {"description": "No such instance"},
        406: {"description": "None of the content types or the transfer syntax can be offered"},
    },
)
def wado(request: Request, web: Web = Depends(get_web), principal: Principal = Depends(require("read"))) -> Response:
    wanted = parse(request.query_params)
    found = web.retriever.locate(
        study_uids=[wanted.study], series_uids=[wanted.series], sop_instance_uids=[wanted.instance], limit=1
    )
    if not found:
        web.audit.record(
            "dicomweb.wado-uri", "not-found", principal=principal, host=client_host(request),
            study=wanted.study, series=wanted.series, instance=wanted.instance,
        )
        raise Problem(404, "Not found", f"no instance {wanted.instance} in series {wanted.series} of study {wanted.study}")
    item = found[0]
    content_type = _content_type(web, wanted, item)
    if content_type == DICOM:
        body, syntax = _dicom(web, item, wanted)
        media_type = f"{DICOM}; transfer-syntax={syntax}"
    else:
        body = _rendered(web, item, wanted, content_type)
        media_type = content_type
    web.audit.record(
        "dicomweb.wado-uri", "success", principal=principal, host=client_host(request),
        study=item.study_instance_uid, series=item.series_instance_uid, instance=item.sop_instance_uid,
        detail={"content_type": content_type, **({"frame": wanted.frame} if wanted.frame else {})},
    )
    headers = {"Cache-Control": "private, max-age=3600", "ETag": f'"{item.object_sha256[:32]}-{_variant(wanted, content_type)}"'}
    return Response(body, media_type=media_type, headers=headers)


def _variant(wanted: WadoRequest, content_type: str) -> str:
    key = repr((content_type, wanted.transfer_syntax, wanted.frame, wanted.rows, wanted.columns, wanted.window, wanted.quality))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _content_type(web: Web, wanted: WadoRequest, item: RetrievableInstance) -> str:
    """The media type to answer with: the first of ``contentType`` offered, else the default
    of PS3.18 9 (JPEG for a single-frame image, else DICOM)."""
    if not wanted.content_types:
        row = web.archive.index.get_instance(item.sop_instance_uid)
        frames = (row.number_of_frames or 1) if row is not None else 1
        image = row is not None and bool(row.rows) and bool(row.columns)
        chosen = JPEG if image and (frames == 1 or wanted.frame is not None) else DICOM
    else:
        offered = [t for t in wanted.content_types if t in (DICOM, *_RENDERED) or t in ("*/*", "image/*")]
        if not offered:
            raise Problem(
                406, "Not acceptable",
                f"contentType {', '.join(wanted.content_types)} cannot be offered; ask for {DICOM}, {JPEG} or {PNG}",
            )
        chosen = {"*/*": DICOM, "image/*": JPEG}.get(offered[0], offered[0])
    if chosen == DICOM:
        if wanted.frame is not None:
            raise _bad("frameNumber is supported for image/jpeg and image/png; application/dicom returns the whole instance")
        for name, value in (("rows", wanted.rows), ("columns", wanted.columns), ("windowCenter", wanted.window)):
            if value is not None:
                raise _bad(f"{name} applies to rendered images (image/jpeg, image/png), not to {DICOM}")
    elif wanted.transfer_syntax is not None:
        raise _bad(f"transferSyntax applies to {DICOM} only, not to {chosen}")
    return chosen


def _dicom(web: Web, item: RetrievableInstance, wanted: WadoRequest) -> tuple[bytes, str]:
    """The instance's Part 10 bytes in the asked transfer syntax (default: as stored)."""
    stored = item.stored_transfer_syntax
    target = wanted.transfer_syntax
    if target is None or target == stored:
        return web.retriever.read(item), stored
    try:
        out = web.retriever.outgoing(item, [target])
    except NoAcceptableTransferSyntax:
        raise Problem(
            406, "Not acceptable",
            f"transfer syntax {target} cannot be offered for this instance (stored as {UID(stored).name}); "
            f"leave transferSyntax out for the stored form, or ask for {ExplicitVRLittleEndian} or {ImplicitVRLittleEndian}",
        ) from None
    except CodecError as exc:
        raise Problem(
            406, "Not acceptable",
            f"the instance cannot be decoded to {target} ({exc}); leave transferSyntax out for the stored form",
        ) from exc
    ds = out.dataset
    implicit = target == ImplicitVRLittleEndian
    ds.file_meta.TransferSyntaxUID = UID(target)
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    return buffer.getvalue(), target


def _rendered(web: Web, item: RetrievableInstance, wanted: WadoRequest, content_type: str) -> bytes:
    """One frame rendered to JPEG or PNG (:mod:`storage.render`, PS3.18 8.3.5)."""
    try:
        source = FrameSource.from_bytes(web.retriever.read(item))
    except CodecError as exc:
        raise Problem(406, "Not acceptable", f"the instance cannot be rendered ({exc}); ask for {DICOM}") from exc
    if source.number_of_frames == 0:
        raise Problem(406, "Not acceptable", f"the instance is not an image (no pixel data); ask for {DICOM}")
    number = wanted.frame or 1
    if number > source.number_of_frames:
        raise _bad(f"frameNumber {number} does not exist: the image has {source.number_of_frames} frame(s)")
    window = None
    if wanted.window is not None:
        try:
            window = render.check_window(*wanted.window, render.LINEAR)
        except ValueError as exc:
            raise _bad(str(exc)) from None
    try:
        pixels = source.array(number)
        height, width = pixels.shape[0], pixels.shape[1]
        viewport = None
        if wanted.rows is not None or wanted.columns is not None:
            # Scaled down to fit (aspect ratio kept), never enlarged.
            viewport = (min(wanted.columns or width, width), min(wanted.rows or height, height))
        return render.render(
            render.frame_header(source.header, number),
            pixels,
            window=window,
            viewport=viewport,
            media_type=content_type,
            quality=wanted.quality or render.DEFAULT_QUALITY,
        )
    except (CodecError, FrameNotFound) as exc:
        raise Problem(406, "Not acceptable", f"the image cannot be rendered ({exc}); ask for {DICOM}") from exc
