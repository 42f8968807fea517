"""The HTTP front door (FastAPI). For now: health and version."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

import filmless
from filmless.bootstrap import Archive
from viewer_api import errors


def create_app(archive: Archive) -> FastAPI:
    app = FastAPI(
        title="filmless",
        version=filmless.__version__,
        description="filmless PACS/RIS HTTP API",
    )
    errors.install(app)

    @app.get("/healthz", summary="Liveness and readiness: the index and the object store answer")
    def healthz() -> JSONResponse:
        checks: dict[str, str] = {}
        healthy = True
        try:
            archive.index.pending_jobs()
            checks["index"] = "ok"
        except Exception as exc:  # noqa: BLE001 - a health check reports, never raises
            checks["index"] = f"error: {exc}"
            healthy = False
        try:
            archive.store.exists("healthz/probe")
            checks["storage"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["storage"] = f"error: {exc}"
            healthy = False
        return JSONResponse(
            {"status": "ok" if healthy else "unavailable", "checks": checks},
            status_code=200 if healthy else 503,
        )

    @app.get("/version", summary="Software version and DICOM identity")
    def version() -> dict[str, Any]:
        return {
            "name": "filmless",
            "version": filmless.__version__,
            "ae_title": archive.settings.ae_title,
            "dicom_port": archive.settings.dicom_port,
        }

    return app
