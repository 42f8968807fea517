"""The HTTP front door (FastAPI): health and version, the token endpoint, DICOMweb under
/dicom-web, rendered images, the audit log and administration under /api.

Every route that touches patient data authenticates and authorises through
:func:`viewer_api.context.require` and writes the audit log; errors are problem+json
(:mod:`viewer_api.errors`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.gzip import GZipMiddleware
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES
from starlette.types import ASGIApp, Receive, Scope, Send
from fastapi.responses import JSONResponse

import filmless
from filmless.bootstrap import Archive
from storage.errors import ObjectStoreUnreachable
from storage.retrieve import Retriever
from viewer_api import admin_routes, audit_routes, auth_routes, errors, viewer
from viewer_api.audit import AuditTrail
from viewer_api.context import Web
from viewer_api.dicomweb import qido, rendered, stow, wado, wado_uri
from viewer_api.security import Security

DICOMWEB_PREFIX = "/dicom-web"


def create_app(archive: Archive) -> FastAPI:
    web = Web(
        archive=archive,
        security=Security(archive.index, archive.settings),
        audit=AuditTrail(archive.index),
        retriever=Retriever(archive.index, archive.store),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        web.close()

    app = FastAPI(
        title="filmless",
        version=filmless.__version__,
        description="filmless PACS/RIS HTTP API: DICOMweb (QIDO-RS, WADO-RS, STOW-RS, WADO-URI), "
        "rendered images and thumbnails, users, audit log.",
        lifespan=lifespan,
    )
    app.state.web = web
    errors.install(app)

    app.add_middleware(RefuseNul)
    # JSON (QIDO, metadata, problems) compresses well: at level 1 a 300-instance series'
    # metadata (1.3 MB) shrinks ~27x in 3 ms (level 5: ~39x in 13 ms). Images, frames and
    # DICOM bodies are left alone: compressed already, or not worth the latency.
    app.add_middleware(
        GZipMiddleware,
        minimum_size=1024,
        compresslevel=1,
        exclude_content_types=(
            *DEFAULT_EXCLUDED_CONTENT_TYPES,
            "image/*",
            "video/*",
            "multipart/related",
            "application/dicom",
            "application/octet-stream",
        ),
    )

    @app.get("/healthz", summary="Liveness and readiness: the index and the object store answer", tags=["system"])
    def healthz() -> JSONResponse:
        return _health(archive)

    @app.get("/version", summary="Software version and DICOM identity", tags=["system"])
    def version() -> dict[str, Any]:
        return {
            "name": "filmless",
            "version": filmless.__version__,
            "ae_title": archive.settings.ae_title,
            "dicom_port": archive.settings.dicom_port,
        }

    app.include_router(auth_routes.router, prefix="/api", tags=["authentication"])
    app.include_router(audit_routes.router, prefix="/api", tags=["audit"])
    app.include_router(admin_routes.router, prefix="/api", tags=["administration"])
    for module, tag in ((qido, "QIDO-RS"), (wado, "WADO-RS"), (rendered, "rendered"), (stow, "STOW-RS")):
        app.include_router(module.router, prefix=DICOMWEB_PREFIX, tags=[tag])
    app.include_router(wado_uri.router, tags=["WADO-URI"])
    app.include_router(admin_routes.dicomweb_router, prefix=DICOMWEB_PREFIX, tags=["administration"])
    app.include_router(viewer.create_router(DICOMWEB_PREFIX))
    return app


class RefuseNul:
    """No parameter of any route may hold a NUL character (PostgreSQL refuses it in text,
    and no DICOM value or name contains one): a clear 400 before any route runs. Plain ASGI,
    so the check costs nothing on the hot paths."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (b"%00" in scope.get("query_string", b"") or "\x00" in scope.get("path", "")):
            response = errors.problem(400, "Invalid request", "a NUL character is not allowed in the URL")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _health(archive: Archive) -> JSONResponse:
    checks: dict[str, str] = {}
    healthy = True
    try:
        archive.index.pending_jobs()
        checks["index"] = "ok"
    except Exception as exc:  # noqa: BLE001 - a health check reports, never raises
        checks["index"] = f"error: {exc}"
        healthy = False
    # With a spool, an object store that does not answer degrades the archive but does not
    # stop it: new objects wait on local disk (and the store is not probed again here; the
    # spool's uploader does that).
    spooling = archive.spooling if archive.spooling is not None and archive.spooling.spool_writes else None
    degraded = spooling is not None and spooling.remote_down
    if not degraded:
        try:
            archive.store.exists("healthz/probe")
            checks["storage"] = "ok"
        except ObjectStoreUnreachable as exc:
            if spooling is None:
                checks["storage"] = f"error: {exc}"
                healthy = False
            else:
                spooling.remote_failed(exc)
                degraded = True
        except Exception as exc:  # noqa: BLE001
            checks["storage"] = f"error: {exc}"
            healthy = False
    if degraded and spooling is not None:
        waiting = spooling.usage()
        checks["storage"] = (
            f"degraded: the object store fails; new objects are spooled on local disk "
            f"({waiting.objects} waiting for upload)"
        )
    status = "unavailable" if not healthy else "degraded" if degraded else "ok"
    return JSONResponse({"status": status, "checks": checks}, status_code=200 if healthy else 503)
