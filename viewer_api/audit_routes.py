"""The audit log over HTTP: ``GET /api/audit`` (permission ``audit``), newest first, filtered,
a page at a time (keyset: ``before`` = the ``next`` of the previous page). Reading the log is
itself written to it (``audit.read``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from storage.index import audit_log
from storage.index.audit_log import AuditFilter, AuditFilterError
from viewer_api.audit import client_host
from viewer_api.context import Web, get_web, require
from viewer_api.errors import Problem
from viewer_api.security import Principal

router = APIRouter()


class AuditEventOut(BaseModel):
    id: int
    at: str = Field(description="When (ISO 8601, UTC)")
    action: str = Field(examples=["dicomweb.retrieve", "http.login", "admin.user", "dimse.store"])
    outcome: str = Field(examples=["success", "failure", "denied"])
    actor: str | None = Field(description="The user, API key owner, or calling AE title")
    actor_host: str | None = Field(description="Where from: the client's address, or 'cli'")
    study_instance_uid: str | None
    series_instance_uid: str | None
    sop_instance_uid: str | None
    detail: Any = Field(description="What else was recorded (JSON)")


class AuditPage(BaseModel):
    events: list[AuditEventOut]
    next: int | None = Field(description="Pass as `before` for the next (older) page; null on the last page")


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return audit_log.parse_time(value, name)
    except AuditFilterError as exc:
        raise Problem(400, "Invalid request", str(exc)) from exc


@router.get(
    "/audit",
    summary="The audit log: who did what to which patient data, from where, when (administrators)",
    response_model=AuditPage,
)
def read_audit_log(
    request: Request,
    since: Annotated[str | None, Query(description="From this ISO 8601 date or date-time on (UTC unless it says)")] = None,
    until: Annotated[str | None, Query(description="Before this ISO 8601 date or date-time")] = None,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    action: Annotated[str | None, Query(max_length=64, description="Exact, or a prefix ending in * (admin.*)")] = None,
    outcome: Annotated[str | None, Query(max_length=16)] = None,
    study: Annotated[str | None, Query(max_length=64, description="Study Instance UID")] = None,
    host: Annotated[str | None, Query(max_length=200, description="The client address (actor_host)")] = None,
    limit: Annotated[int, Query(ge=1, le=audit_log.MAX_PAGE)] = 100,
    before: Annotated[int | None, Query(ge=1, le=2**31 - 1, description="Events with ids below this (the `next` of a page)")] = None,
    principal: Principal = Depends(require("audit")),
    web: Web = Depends(get_web),
) -> AuditPage:
    flt = AuditFilter(
        since=_time(since, "since"),
        until=_time(until, "until"),
        actor=actor,
        action=action,
        outcome=outcome,
        study=study,
        host=host,
    )
    records, next_before = audit_log.page(web.archive.index, flt, limit=limit, before=before)
    web.audit.record(
        "audit.read",
        "success",
        principal=principal,
        host=client_host(request),
        study=study,
        detail={"filter": flt.as_dict(), "limit": limit, "before": before, "events": len(records)},
        sync=True,
    )
    return AuditPage(events=[AuditEventOut(**r.as_dict()) for r in records], next=next_before)
