"""The HTTP front door (FastAPI). For now: health and version."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

import filmless
from filmless.bootstrap import Archive
from storage.errors import ObjectStoreUnreachable
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

    @app.get("/version", summary="Software version and DICOM identity")
    def version() -> dict[str, Any]:
        return {
            "name": "filmless",
            "version": filmless.__version__,
            "ae_title": archive.settings.ae_title,
            "dicom_port": archive.settings.dicom_port,
        }

    return app
