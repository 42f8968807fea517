"""STOW-RS: store instances over HTTP (PS3.18 10.5, Studies Store Transaction).

``POST /studies`` and ``POST /studies/{study}`` take ``multipart/related;
type="application/dicom"``: one Part 10 instance per part. The body is streamed, never held
whole in memory: each part goes to a temporary file (small ones stay in memory) as it
arrives, bounded by ``max_object_size``; the whole body by ``max_upload_size`` (413 as soon as
it is exceeded, with nothing stored). Only once the body is complete and well formed are the
parts stored, one by one, through the ingest path C-STORE uses, so a part that is not DICOM
fails alone and the others are stored.

The answer is a Store Instances Response Module (PS3.18 Annex I) as DICOM JSON: stored
instances (identical duplicates included) in Referenced SOP Sequence with their Retrieve URL,
the others in Failed SOP Sequence with a Failure Reason of PS3.18 I.2.2; a ``Warning`` header
(PS3.18 8.3.5.1) says in words why each failed. Status (PS3.18 10.5.3.1): 200 all stored, 202
some failed, 409 none stored, or 503 when none could be stored because the archive itself
failed (index or object store: worth retrying); 400 for a body that is not multipart, 415 for
other media types.
"""

from __future__ import annotations

import enum
import json
import logging
import re
import tempfile
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import IO, Any

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydicom import dcmread
from pydicom.dataset import Dataset
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from storage.errors import IndexUnavailable, ObjectStoreError, ObjectTooLarge, RejectedInstance, SOPClassMismatch
from storage.index import Source
from viewer_api.dicomweb.resources import check_uids, is_uid
from viewer_api.audit import client_host
from viewer_api.context import Web, base_url, get_web, require
from viewer_api.dicomjson import DICOM_JSON, to_json
from viewer_api.errors import Problem
from viewer_api.security import Principal

log = logging.getLogger("filmless.stow")
router = APIRouter()

DICOM = "application/dicom"
_KEEP_IN_MEMORY = 4 * 1024 * 1024
"""Parts up to this size stay in memory; larger ones go to a temporary file."""
_FEED_BYTES = 1024 * 1024
"""The request body is handed to the parser (in a worker thread) in pieces of about this size."""
_MAX_WARNINGS = 20


class FailureReason(enum.IntEnum):
    """Failure Reason (0008,1197) values, PS3.18 Table I.2-2."""

    REFUSED_OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    PROCESSING_FAILURE = 0x0110


@dataclass
class _Part:
    """One body part as received."""

    number: int
    headers: dict[str, str] = field(default_factory=dict)
    file: IO[bytes] | None = None
    size: int = 0
    too_large: bool = False
    complete: bool = False


class _BodyParser:
    """Collects the parts of a multipart body fed to it piece by piece (python-multipart's
    streaming parser does the framing, RFC 2046 5.1)."""

    def __init__(self, boundary: bytes, spool: Path, max_part_size: int) -> None:
        self.spool = spool
        self.max_part_size = max_part_size
        self.parts: list[_Part] = []
        self.ended = False
        self._field = b""
        self._value = b""
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_part_data": self._data,
                "on_part_end": self._end_part,
                "on_end": self._end,
            },
        )

    def write(self, data: bytes) -> None:
        if self.ended:
            return  # the epilogue after the close delimiter (RFC 2046 allows one)
        self._parser.write(data)

    def close(self) -> None:
        for part in self.parts:
            if part.file is not None:
                part.file.close()

    # --- parser callbacks ---------------------------------------------------------------
    def _begin(self) -> None:
        self.parts.append(_Part(len(self.parts) + 1))

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self.parts[-1].headers[name] = self._value.decode("latin-1").strip()
        self._field = self._value = b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self.parts[-1]
        if part.too_large:
            return
        length = end - start
        if part.size + length > self.max_part_size:
            # Not worth keeping: it fails (Out of Resources) without being read further.
            part.too_large = True
            if part.file is not None:
                part.file.close()
                part.file = None
            part.size += length
            return
        if part.file is None:
            part.file = tempfile.SpooledTemporaryFile(max_size=_KEEP_IN_MEMORY, dir=str(self.spool))
        part.file.write(data[start:end])
        part.size += length

    def _end_part(self) -> None:
        self.parts[-1].complete = True

    def _end(self) -> None:
        self.ended = True


@dataclass(frozen=True)
class _Stored:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str | None
    outcome: str


@dataclass(frozen=True)
class _Failed:
    part: int
    reason: FailureReason
    text: str
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None


_STOW_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "All instances stored"},
    202: {"description": "Some instances stored, some failed (see FailedSOPSequence)"},
    409: {"description": "No instance stored"},
    413: {"description": "The body exceeds max_upload_size"},
    415: {"description": "Not multipart/related application/dicom"},
}


@router.post(
    "/studies",
    summary="Store instances (STOW-RS, PS3.18 10.5): multipart/related; type=\"application/dicom\"",
    responses=_STOW_RESPONSES,
)
async def store_instances(
    request: Request, principal: Principal = Depends(require("store")), web: Web = Depends(get_web)
) -> Response:
    return await _stow(request, None, principal, web)


@router.post(
    "/studies/{study}",
    summary="Store instances of one study (STOW-RS); instances of another study fail (A900)",
    responses=_STOW_RESPONSES,
)
async def store_study_instances(
    request: Request, study: str, principal: Principal = Depends(require("store")), web: Web = Depends(get_web)
) -> Response:
    check_uids(study)
    return await _stow(request, study, principal, web)


def _boundary(request: Request) -> bytes:
    """The multipart boundary of a STOW-RS request; 415 or 400 for anything else."""
    header = request.headers.get("content-type", "")
    media_type, params = parse_options_header(header)
    if media_type != b"multipart/related":
        shown = media_type.decode("latin-1") or "none"
        raise Problem(
            415,
            "Unsupported media type",
            f"STOW-RS takes multipart/related; type=\"application/dicom\" (one DICOM instance per part), "
            f"not {shown}",
        )
    part_type = params.get(b"type", b"").decode("latin-1").strip().lower()
    if part_type.startswith("application/dicom+"):
        raise Problem(
            415,
            "Unsupported media type",
            f"STOW-RS with metadata and bulk data (type=\"{part_type}\") is not supported; "
            "send each instance as a Part 10 application/dicom part",
        )
    if part_type not in ("", DICOM):
        raise Problem(415, "Unsupported media type", f"parts of type {part_type!r} are not supported; send {DICOM}")
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 70:
        raise Problem(400, "Invalid multipart body", "the Content-Type names no (valid) boundary")
    return boundary


async def _receive(request: Request, web: Web, boundary: bytes) -> _BodyParser:
    """Read the whole body into parts; 413 as soon as it exceeds ``max_upload_size``."""
    limit = web.settings.max_upload_size
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Problem(400, "Invalid request", "Content-Length is not a number")
        if int(declared) > limit:
            raise Problem(413, "Content too large", f"the body of {int(declared)} bytes exceeds the limit of {limit}")
    spool = web.settings.data / "tmp" / "stow"
    spool.mkdir(parents=True, exist_ok=True)
    parser = _BodyParser(boundary, spool, web.archive.ingest.max_object_size)
    try:
        received = 0
        pending: list[bytes] = []
        pending_size = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise Problem(413, "Content too large", f"the body exceeds the limit of {limit} bytes; nothing was stored")
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= _FEED_BYTES:
                await anyio.to_thread.run_sync(parser.write, b"".join(pending))
                pending, pending_size = [], 0
        if pending:
            await anyio.to_thread.run_sync(parser.write, b"".join(pending))
        if not parser.parts:
            raise Problem(400, "Invalid multipart body", "the body holds no part delimited by the boundary of its Content-Type")
        if not parser.ended:
            raise Problem(400, "Invalid multipart body", "the body ends without the closing boundary (truncated?); nothing was stored")
    except MultipartParseError as exc:
        parser.close()
        raise Problem(400, "Invalid multipart body", f"the body is not valid multipart: {exc}") from exc
    except ClientDisconnect as exc:
        parser.close()
        raise Problem(400, "Invalid request", "the client went away before the body was complete") from exc
    except BaseException:
        parser.close()
        raise
    return parser


async def _stow(request: Request, study: str | None, principal: Principal, web: Web) -> Response:
    host = client_host(request)
    try:
        boundary = _boundary(request)
        parser = await _receive(request, web, boundary)
    except Problem as exc:
        web.audit.record(
            "dicomweb.stow", "failure", principal=principal, host=host, study=study,
            detail={"status": exc.status, "reason": exc.detail},
        )
        raise
    stored: list[_Stored] = []
    failed: list[_Failed] = []
    try:
        source = Source(aet=None, host=f"http:{host or 'unknown'}")
        for part in parser.parts:
            result = await anyio.to_thread.run_sync(_store_part, web, part, study, source)
            if isinstance(result, _Stored):
                stored.append(result)
            else:
                failed.append(result)
    finally:
        parser.close()
    root = base_url(request) + _dicomweb_prefix()
    body = _response(stored, failed, root, study)
    status = 200 if not failed else 202 if stored else 503 if _archive_failed(failed) else 409
    studies = sorted({s.study_instance_uid for s in stored} | ({study} if study else set()))
    detail: dict[str, Any] = {
        "parts": len(parser.parts),
        "stored": len(stored),
        "failed": len(failed),
        "status": status,
        "instances": [s.sop_instance_uid for s in stored[:200]],
        "failures": [{"part": f.part, "reason": f"{f.reason:04X}", "text": f.text, "instance": f.sop_instance_uid} for f in failed[:200]],
    }
    if len(studies) > 1:
        detail["studies"] = studies[:50]
    outcome = "success" if not failed else "partial" if stored else "failure"
    await anyio.to_thread.run_sync(
        lambda: web.audit.record(
            "dicomweb.stow", outcome, principal=principal, host=host,
            study=studies[0] if len(studies) == 1 else None, detail=detail, sync=True,
        )
    )
    headers = _warnings(failed)
    if status == 503:
        headers["Retry-After"] = "30"
    return Response(body, status_code=status, media_type=DICOM_JSON, headers=headers)


def _dicomweb_prefix() -> str:
    from viewer_api.app import DICOMWEB_PREFIX  # the app imports this module

    return DICOMWEB_PREFIX


def _store_part(web: Web, part: _Part, study: str | None, source: Source) -> _Stored | _Failed:
    """Store one part through the ingest path; a failure is reported, never raised."""
    content_type = part.headers.get("content-type")
    if content_type is not None:
        media_type = parse_options_header(content_type)[0].decode("latin-1")
        if media_type != DICOM:
            return _Failed(part.number, FailureReason.CANNOT_UNDERSTAND, f"part {part.number}: {media_type or 'no media type'} is not {DICOM}")
    if part.too_large:
        return _Failed(
            part.number, FailureReason.REFUSED_OUT_OF_RESOURCES,
            f"part {part.number}: more than the largest object accepted ({web.archive.ingest.max_object_size} bytes)",
        )
    if part.file is None or part.size == 0:
        return _Failed(part.number, FailureReason.CANNOT_UNDERSTAND, f"part {part.number} is empty")
    part.file.seek(0)
    data = part.file.read()
    header = _peek(data)
    sop_class = header.get("sop_class")
    sop_instance = header.get("sop_instance")

    def failed(reason: FailureReason, text: str) -> _Failed:
        return _Failed(part.number, reason, f"part {part.number}: {text}", sop_class, sop_instance)

    if study is not None and header.get("study") is not None and header["study"] != study:
        return failed(
            FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            f"the instance belongs to study {header['study']}, not {study} of the request",
        )
    try:
        result = web.archive.ingest.store_file(data, source)
    except ObjectTooLarge as exc:
        return failed(FailureReason.REFUSED_OUT_OF_RESOURCES, exc.reason)
    except SOPClassMismatch as exc:
        return failed(FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, exc.reason)
    except RejectedInstance as exc:
        return failed(FailureReason.CANNOT_UNDERSTAND, exc.reason)
    except (ObjectStoreError, IndexUnavailable) as exc:
        log.warning("STOW-RS part %d not stored: %s", part.number, exc)
        return failed(FailureReason.PROCESSING_FAILURE, f"the archive could not store it now: {exc}")
    except Exception as exc:  # noqa: BLE001 - one part never fails the others
        log.exception("STOW-RS part %d: unexpected error", part.number)
        return failed(FailureReason.PROCESSING_FAILURE, f"unexpected error ({type(exc).__name__})")
    if study is not None and result.study_instance_uid != study:
        # Not seen by the header peek (an unusual encoding): it is stored now; say so.
        log.warning("STOW-RS to study %s stored %s of study %s", study, result.sop_instance_uid, result.study_instance_uid)
    series = header.get("series") if header.get("sop_instance") == result.sop_instance_uid else None
    if series is None:
        found = web.retriever.locate(sop_instance_uids=[result.sop_instance_uid], limit=1)
        series = found[0].series_instance_uid if found else None
    return _Stored(result.sop_class_uid, result.sop_instance_uid, result.study_instance_uid, series, str(result.outcome))


def _peek(data: bytes) -> dict[str, str]:
    """The UIDs a part claims (best effort: for the study check and the failure items)."""
    try:
        ds = dcmread(
            BytesIO(data),
            force=True,
            stop_before_pixels=True,
            specific_tags=[0x00080016, 0x00080018, 0x0020000D, 0x0020000E],
        )
        found = {
            "sop_class": ds.get("SOPClassUID"),
            "sop_instance": ds.get("SOPInstanceUID"),
            "study": ds.get("StudyInstanceUID"),
            "series": ds.get("SeriesInstanceUID"),
        }
    except Exception:  # noqa: BLE001 - ingest says what is wrong with it
        return {}
    return {k: str(v) for k, v in found.items() if v and is_uid(str(v))}


def _archive_failed(failed: list[_Failed]) -> bool:
    return all(f.reason is FailureReason.PROCESSING_FAILURE for f in failed)


def _response(stored: list[_Stored], failed: list[_Failed], root: str, study: str | None) -> bytes:
    """The Store Instances Response Module (PS3.18 Table I.1-1) as one DICOM JSON object."""
    ds = Dataset()
    studies = {s.study_instance_uid for s in stored} | ({study} if study else set())
    ds.add_new(0x00081190, "UR", f"{root}/studies/{next(iter(studies))}" if len(studies) == 1 else None)
    if failed:
        items = []
        for f in failed:
            item = Dataset()
            item.ReferencedSOPClassUID = f.sop_class_uid or ""
            item.ReferencedSOPInstanceUID = f.sop_instance_uid or ""
            item.FailureReason = int(f.reason)
            items.append(item)
        ds.FailedSOPSequence = items
    if stored:
        items = []
        for s in stored:
            item = Dataset()
            item.ReferencedSOPClassUID = s.sop_class_uid
            item.ReferencedSOPInstanceUID = s.sop_instance_uid
            url = f"{root}/studies/{s.study_instance_uid}"
            if s.series_instance_uid:
                url += f"/series/{s.series_instance_uid}/instances/{s.sop_instance_uid}"
            item.add_new(0x00081190, "UR", url)
            items.append(item)
        ds.ReferencedSOPSequence = items
    return json.dumps(to_json(ds), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _warnings(failed: list[_Failed]) -> dict[str, str]:
    """A ``Warning`` header (RFC 7234 5.5; PS3.18 8.3.5.1) naming why instances failed."""
    if not failed:
        return {}
    texts = [re.sub(r"[^ -~]|\"|\\", "?", f.text)[:300] for f in failed[:_MAX_WARNINGS]]
    if len(failed) > _MAX_WARNINGS:
        texts.append(f"and {len(failed) - _MAX_WARNINGS} more failures")
    return {"Warning": ", ".join(f'299 filmless "{t}"' for t in texts)}
