"""Administration of stored data (role admin): deleting studies, series and instances to the
recoverable trash, and listing the trash.

``DELETE /dicom-web/studies/{study}[/series/{series}[/instances/{instance}]]?reason=...``
(:data:`dicomweb_router`, mounted under ``/dicom-web`` beside the DICOMweb resources it
deletes) moves every current instance under the resource to the trash in one index
transaction (:mod:`storage.trash`): QIDO-RS, WADO-RS, C-FIND and C-MOVE no longer see it, its
objects stay until ``filmless purge``; ``filmless trash restore`` brings it back. The reason
is required and goes into the trash item and the audit log.

``GET /api/trash`` (:data:`router`) lists trash items, newest first, a page at a time.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from storage.index import trash as trash_index
from storage.index.audit_log import AuditFilterError, parse_time
from storage.trash import Trash
from viewer_api.dicomweb.resources import check_uids
from viewer_api.audit import client_host
from viewer_api.context import Web, get_web, require
from viewer_api.errors import Problem
from viewer_api.security import Principal

router = APIRouter()
"""Mounted under /api."""
dicomweb_router = APIRouter()
"""Mounted under /dicom-web: DELETE of DICOMweb resources."""

_REASON = Query(
    max_length=400,
    description="Why (required): kept with the trash item and in the audit log, e.g. 'wrong patient, "
    "re-sent as accession A123'",
)
_DELETED: dict[int | str, dict[str, Any]] = {
    204: {"description": "Moved to the trash"},
    400: {"description": "No reason given, or an invalid UID"},
    403: {"description": "Only administrators delete"},
    404: {"description": "Nothing current matches"},
}


def _delete(
    request: Request,
    web: Web,
    principal: Principal,
    reason: str | None,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> Response:
    check_uids(study, series, instance)
    if reason is None or not reason.strip():
        raise Problem(
            400, "Reason required", "say why it is deleted: ?reason=... (kept with the trash item and in the audit log)"
        )
    trash = Trash(web.archive.index, web.archive.store, web.archive.ingest)
    items = trash.delete(study, series, instance, reason=reason, actor=principal.username)
    level = "IMAGE" if instance else "SERIES" if series else "STUDY"
    audit: dict[str, Any] = {
        "principal": principal, "host": client_host(request), "study": study, "series": series, "instance": instance
    }
    if not items:
        web.audit.record("api.delete", "not-found", detail={"level": level, "reason": reason}, **audit)
        what = f"instance {instance}" if instance else f"series {series}" if series else f"study {study}"
        raise Problem(404, "Not found", f"no current {what} in the archive (in the trash already, or never stored)")
    web.audit.record(
        "api.delete",
        "success",
        sync=True,
        detail={
            "level": level,
            "reason": reason.strip(),
            "instances": len(items),
            "trash_ids": [i.pk for i in items[:500]],
            "sop_instance_uids": [i.sop_instance_uid for i in items[:500]],
            "patient_id": items[0].patient_id,
        },
        **audit,
    )
    return Response(status_code=204)


@dicomweb_router.delete(
    "/studies/{study}", status_code=204, summary="Move a study to the trash (administrators; reason required)", responses=_DELETED
)
def delete_study(
    study: str,
    request: Request,
    reason: Annotated[str | None, _REASON] = None,
    principal: Principal = Depends(require("delete")),
    web: Web = Depends(get_web),
) -> Response:
    return _delete(request, web, principal, reason, study)


@dicomweb_router.delete(
    "/studies/{study}/series/{series}",
    status_code=204,
    summary="Move a series to the trash (administrators; reason required)",
    responses=_DELETED,
)
def delete_series(
    study: str,
    series: str,
    request: Request,
    reason: Annotated[str | None, _REASON] = None,
    principal: Principal = Depends(require("delete")),
    web: Web = Depends(get_web),
) -> Response:
    return _delete(request, web, principal, reason, study, series)


@dicomweb_router.delete(
    "/studies/{study}/series/{series}/instances/{instance}",
    status_code=204,
    summary="Move an instance to the trash (administrators; reason required)",
    responses=_DELETED,
)
def delete_instance(
    study: str,
    series: str,
    instance: str,
    request: Request,
    reason: Annotated[str | None, _REASON] = None,
    principal: Principal = Depends(require("delete")),
    web: Web = Depends(get_web),
) -> Response:
    return _delete(request, web, principal, reason, study, series, instance)


# --- the trash ---------------------------------------------------------------------------------
class TrashItemOut(BaseModel):
    id: int
    state: str = Field(description="trashed (restorable), restored or purged")
    trashed_at: str | None
    actor: str | None = Field(description="Who deleted it")
    reason: str
    level: str = Field(description="What the delete named: STUDY, SERIES or IMAGE")
    patient_id: str | None
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str | None
    stored_size: int
    stored_transfer_syntax: str
    object_sha256: str
    restored_at: str | None
    purged_at: str | None


class TrashPage(BaseModel):
    items: list[TrashItemOut]
    next: int | None = Field(description="Pass as `before` for the next (older) page; null on the last page")


@router.get("/trash", summary="Deleted instances in the trash, newest first (administrators)", response_model=TrashPage)
def list_trash(
    request: Request,
    study: Annotated[str | None, Query(max_length=64, description="Study Instance UID")] = None,
    since: Annotated[str | None, Query(description="Deleted at or after this ISO 8601 date or date-time (UTC unless it says)")] = None,
    state: Annotated[str | None, Query(description="trashed (restorable), restored or purged; default: all")] = None,
    limit: Annotated[int, Query(ge=1, le=trash_index.MAX_PAGE)] = 100,
    before: Annotated[int | None, Query(ge=1, description="Items with ids below this (the `next` of a page)")] = None,
    principal: Principal = Depends(require("delete")),
    web: Web = Depends(get_web),
) -> TrashPage:
    check_uids(study)
    if state is not None and state not in trash_index.STATES:
        raise Problem(400, "Invalid request", f"state is one of {', '.join(trash_index.STATES)}, not {state[:40]!r}")
    try:
        from_time = parse_time(since, "since") if since is not None else None
    except AuditFilterError as exc:
        raise Problem(400, "Invalid request", str(exc)) from exc
    found = trash_index.items(
        web.archive.index, study_uid=study, since=from_time, state=state, before=before, limit=limit + 1
    )
    page, more = found[:limit], len(found) > limit
    web.audit.record(
        "api.trash.read",
        "success",
        principal=principal,
        host=client_host(request),
        study=study,
        detail={"since": since, "state": state, "limit": limit, "before": before, "items": len(page)},
    )
    out: list[dict[str, Any]] = [i.as_dict() for i in page]
    return TrashPage(items=[TrashItemOut(**i) for i in out], next=page[-1].pk if more and page else None)
