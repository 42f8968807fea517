"""The one table that turns domain errors into HTTP problems (RFC 9457, application/problem+json)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from storage.errors import (
    ArchiveError,
    IndexUnavailable,
    ObjectNotFound,
    ObjectStoreError,
    ObjectTooLarge,
    RejectedInstance,
)

_TABLE: tuple[tuple[type[ArchiveError], int, str], ...] = (
    (ObjectTooLarge, 413, "Object too large"),
    (RejectedInstance, 400, "Rejected instance"),
    (ObjectNotFound, 404, "Not found"),
    (ObjectStoreError, 503, "Object store unavailable"),
    (IndexUnavailable, 503, "Index unavailable"),
)


def problem(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(ArchiveError)
    async def _archive_error(_request: Request, exc: ArchiveError) -> JSONResponse:
        for cls, status, title in _TABLE:
            if isinstance(exc, cls):
                return problem(status, title, str(exc))
        return problem(500, "Archive error", str(exc))
