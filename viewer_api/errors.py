"""The one table that turns errors into HTTP problems (RFC 9457, ``application/problem+json``).

Routes raise :class:`Problem` (or a domain error from :mod:`storage.errors`); FastAPI's own
errors (unknown route, bad parameters) and authentication failures get the same body, so a
client never has to parse an HTML or plain-text error.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from storage.errors import (
    ArchiveError,
    CodecError,
    IndexUnavailable,
    ObjectNotFound,
    ObjectStoreError,
    ObjectTooLarge,
    RejectedInstance,
)
from storage.frames import FrameNotFound
from storage.index.users import UserError
from storage.query import QueryError
from viewer_api.security import AuthError, Forbidden

log = logging.getLogger("filmless.http")

PROBLEM_MEDIA_TYPE = "application/problem+json"

_TABLE: tuple[tuple[type[Exception], int, str], ...] = (
    (ObjectTooLarge, 413, "Object too large"),
    (RejectedInstance, 400, "Rejected instance"),
    (ObjectNotFound, 404, "Not found"),
    (ObjectStoreError, 503, "Object store unavailable"),
    (IndexUnavailable, 503, "Index unavailable"),
    (QueryError, 400, "Invalid query"),
    (FrameNotFound, 404, "Not found"),
    (CodecError, 422, "Undecodable pixel data"),
    (UserError, 400, "Invalid user operation"),
)


class Problem(Exception):
    """An HTTP problem a route answers with."""

    def __init__(self, status: int, title: str, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.headers = headers
        self.extra = extra


def problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


_STATUS_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    413: "Content too large",
    415: "Unsupported media type",
    416: "Range not satisfiable",
    422: "Invalid request",
}


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(_request: Request, exc: Problem) -> JSONResponse:
        return problem(exc.status, exc.title, exc.detail, exc.headers, **exc.extra)

    @app.exception_handler(AuthError)
    async def _unauthorized(_request: Request, exc: AuthError) -> JSONResponse:
        return problem(401, "Unauthorized", str(exc), {"WWW-Authenticate": 'Bearer realm="filmless"'})

    @app.exception_handler(Forbidden)
    async def _forbidden(_request: Request, exc: Forbidden) -> JSONResponse:
        return problem(403, "Forbidden", str(exc))

    @app.exception_handler(ArchiveError)
    async def _archive_error(_request: Request, exc: ArchiveError) -> JSONResponse:
        return _from_table(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return problem(exc.status_code, _STATUS_TITLES.get(exc.status_code, "Error"), detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"location": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")} for e in exc.errors()
        ]
        summary = "; ".join(f"{e['location']}: {e['message']}" for e in errors[:5])
        return problem(400, "Invalid request", summary or "invalid request", errors=errors)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem(500, "Internal error", f"{type(exc).__name__}; see the server log")


def _from_table(exc: Exception) -> JSONResponse:
    for cls, status, title in _TABLE:
        if isinstance(exc, cls):
            return problem(status, title, str(exc))
    return problem(500, "Archive error", str(exc))
