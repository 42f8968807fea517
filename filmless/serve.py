"""`filmless serve`: the DICOM node, the HTTP API and the compression workers, in one command.

The DICOM node runs in this process (pynetdicom: a thread per association); the HTTP API runs
in this process's main thread (uvicorn, which also handles SIGINT/SIGTERM); compression runs in
separate worker processes so that codec work, which holds the GIL, never slows acknowledgements.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from multiprocessing.process import BaseProcess

import uvicorn

from filmless.bootstrap import build_archive, configure_logging
from filmless.settings import Settings
from storage.ingest import CompressionMode

log = logging.getLogger("filmless.serve")


def compression_worker_main(settings_json: str, parent_pid: int, number: int) -> None:
    """Entry point of a compression worker process."""
    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings.log_level)
    archive = build_archive(settings)
    stop = threading.Event()

    def _stop(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    try:
        archive.compressor(worker_id=f"compress-{number}:{os.getpid()}").run_forever(stop, parent_pid=parent_pid)
    finally:
        archive.close()


def start_compression_workers(settings: Settings) -> list[BaseProcess]:
    if settings.compression.mode is not CompressionMode.BACKGROUND:
        return []
    ctx = multiprocessing.get_context("spawn")
    workers: list[BaseProcess] = []
    for number in range(settings.compression.workers):
        proc = ctx.Process(
            target=compression_worker_main,
            args=(settings.model_dump_json(), os.getpid(), number),
            name=f"filmless-compress-{number}",
            daemon=True,
        )
        proc.start()
        workers.append(proc)
    return workers


def stop_workers(workers: list[BaseProcess], timeout: float = 10.0) -> None:
    for proc in workers:
        if proc.is_alive() and proc.pid is not None:
            os.kill(proc.pid, signal.SIGTERM)
    for proc in workers:
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join(2)


def serve(settings: Settings) -> int:
    from dicom_node import ae as dicom_ae
    from viewer_api.app import create_app

    configure_logging(settings.log_level)
    archive = build_archive(settings)
    if settings.accept_unknown_aes:
        log.warning("unknown calling AE titles are accepted (development default); set accept_unknown_aes=false in production")
    log.info("index %s, objects %s", settings.index_url.split("@")[-1], settings.storage_url)
    workers = start_compression_workers(settings)
    dicom_server = dicom_ae.start(archive)
    try:
        app = create_app(archive)
        config = uvicorn.Config(
            app,
            host=settings.http_host,
            port=settings.http_port,
            log_level=settings.log_level.lower(),
            access_log=False,
        )
        uvicorn.Server(config).run()
    finally:
        log.info("shutting down")
        dicom_server.shutdown()
        stop_workers(workers)
        archive.close()
    return 0
