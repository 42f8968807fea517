"""`filmless serve`: the DICOM node, the HTTP API and the compression workers, in one command.

The DICOM node runs in this process (pynetdicom: a thread per association); the HTTP API runs
in this process's main thread (uvicorn, which also handles SIGINT/SIGTERM); compression runs in
separate worker processes so that codec work, which holds the GIL, never slows acknowledgements.

``components`` splits them over two services on the same settings (docker-compose.yml): ``dicom``
runs the DICOM node and the compression workers (the main thread then waits for SIGTERM or
SIGINT), ``api`` only the HTTP API.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import ssl
import threading
import time
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

import uvicorn

from filmless.bootstrap import Archive, build_archive, check_object_store, configure_logging, start_spool_uploader
from filmless.settings import Settings
from storage.errors import ObjectStoreError
from storage.index import RetrievableInstance
from storage.ingest import CompressionMode

if TYPE_CHECKING:
    from dicom_node.server import DicomServer

log = logging.getLogger("filmless.serve")


class ArrivalClock:
    """When the last image arrived, shared by every process of one `filmless serve`."""

    def __init__(self) -> None:
        self._value = multiprocessing.get_context("spawn").RawValue("d", 0.0)

    def tick(self) -> None:
        self._value.value = time.monotonic()

    def busy(self, quiet: float) -> bool:
        return time.monotonic() - float(self._value.value) < quiet


def compression_worker_main(
    settings_json: str, parent_pid: int, number: int, arrivals: ArrivalClock | None = None
) -> None:
    """Entry point of a compression worker process."""
    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings.log_level)
    archive = build_archive(settings)
    stop = threading.Event()

    def _stop(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    # Acknowledging modalities comes first; compression takes what CPU is left.
    os.nice(10)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    try:
        quiet = settings.compression.defer_while_receiving
        busy = (lambda: arrivals.busy(quiet)) if arrivals is not None and quiet > 0 else None
        # The first worker also makes the DICOMweb metadata of new instances when idle ...
        idle = None
        if number == 0:
            from storage.metadata import MetadataWarmer
            from storage.retrieve import Retriever

            from viewer_api.dicomweb.rendered import prerender

            data_dir = settings.data

            def _prerender(item: RetrievableInstance, data: bytes) -> bool:
                return prerender(data_dir, item, data)

            # ... and renders the first view and the thumbnail of each new image into the cache.
            idle = MetadataWarmer(archive.index, Retriever(archive.index, archive.store).read, also=_prerender).run_once
        archive.compressor().run_forever(stop, parent_pid=parent_pid, busy=busy, idle=idle)
    finally:
        archive.close()


def dicom_worker_main(
    settings_json: str,
    parent_pid: int,
    number: int,
    arrivals: ArrivalClock | None = None,
    listening: dict[int, socket.socket] | None = None,
) -> None:
    """Entry point of an extra DICOM receiver process accepting from the parent's
    listening sockets (``listening``: port -> socket)."""
    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings.log_level)
    tls_context = dicom_tls_context(settings)
    archive = build_archive(settings, on_queued=arrivals.tick if arrivals is not None else None)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _s, _f: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    servers = start_dicom_servers(archive, tls_context, listening=listening or {})
    try:
        while not stop.wait(1.0):
            if os.getppid() != parent_pid:
                log.warning("parent process is gone; DICOM receiver %d stops", number)
                break
    finally:
        for server in servers:
            server.shutdown()
        archive.close()


def dicom_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The DICOM TLS port's SSL context (None when the port is off); a file that cannot be
    used ends start-up with a message, not a traceback."""
    from dicom_node import tls

    if not settings.dicom_tls_port:
        return None
    assert settings.tls_certificate is not None and settings.tls_private_key is not None  # validated
    try:
        return tls.server_context(
            settings.tls_certificate,
            settings.tls_private_key,
            settings.tls_ca_certificates,
            require_client_certificate=settings.tls_require_client_certificate,
        )
    except tls.TlsConfigurationError as exc:
        raise SystemExit(f"filmless: DICOM TLS: {exc}") from None


def start_dicom_servers(
    archive: Archive, tls_context: ssl.SSLContext | None, *, listening: dict[int, socket.socket]
) -> list[DicomServer]:
    """The plain DIMSE server and, when configured, the DICOM TLS one (same archive, same AE
    handlers and access control, another port); on the sockets of ``listening`` (port ->
    socket) where given, shared with the other receiver processes."""
    from dicom_node import ae as dicom_ae

    settings = archive.settings
    servers = [dicom_ae.start(archive, listening=listening.get(settings.dicom_port))]
    if tls_context is not None:
        try:
            servers.append(
                dicom_ae.start(
                    archive,
                    listening=listening.get(settings.dicom_tls_port),
                    port=settings.dicom_tls_port,
                    ssl_context=tls_context,
                )
            )
        except OSError as exc:
            servers[0].shutdown()
            raise SystemExit(
                f"filmless: DICOM TLS: cannot listen on {settings.dicom_host}:{settings.dicom_tls_port}: "
                f"{exc.strerror or exc}"
            ) from None
        except BaseException:
            servers[0].shutdown()
            raise
    return servers


def _spawn(
    target: object, settings: Settings, number: int, name: str, arrivals: ArrivalClock, *extra: object
) -> BaseProcess:
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(
        target=target,  # type: ignore[arg-type]
        args=(settings.for_child_process(), os.getpid(), number, arrivals, *extra),
        name=name,
        daemon=True,
    )
    proc.start()
    return proc


def shared_listening_sockets(settings: Settings) -> dict[int, socket.socket]:
    """With several DICOM receiver processes, the listening sockets they share (port ->
    socket), made here in the parent; with one, none (the server makes its own)."""
    from dicom_node.server import listening_socket

    if settings.receiver_processes < 2:
        return {}
    ports = [settings.dicom_port] + ([settings.dicom_tls_port] if settings.dicom_tls_port else [])
    made: dict[int, socket.socket] = {}
    try:
        for port in ports:
            made[port] = listening_socket(settings.dicom_host, port)
    except OSError as exc:
        for sock in made.values():
            sock.close()
        raise SystemExit(f"filmless: cannot listen on {settings.dicom_host}:{port}: {exc.strerror or exc}") from None
    return made


def start_dicom_workers(
    settings: Settings, arrivals: ArrivalClock, listening: dict[int, socket.socket]
) -> list[BaseProcess]:
    return [
        _spawn(dicom_worker_main, settings, number, f"filmless-dicom-{number}", arrivals, listening)
        for number in range(1, settings.receiver_processes)
    ]


def start_compression_workers(settings: Settings, arrivals: ArrivalClock) -> list[BaseProcess]:
    if settings.compression.mode is not CompressionMode.BACKGROUND:
        return []
    return [
        _spawn(compression_worker_main, settings, number, f"filmless-compress-{number}", arrivals)
        for number in range(settings.compression.workers)
    ]


def stop_workers(workers: list[BaseProcess], timeout: float = 10.0) -> None:
    for proc in workers:
        if proc.is_alive() and proc.pid is not None:
            os.kill(proc.pid, signal.SIGTERM)
    for proc in workers:
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join(2)


def wait_for_stop_signal() -> None:
    """Block until SIGTERM or SIGINT (what uvicorn does when the HTTP API runs). Handlers
    are installed explicitly: as PID 1 of a container, a signal left at its default is ignored."""
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        log.info("%s received", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_http_api(config: uvicorn.Config) -> None:
    """Run uvicorn until SIGTERM or SIGINT. Once shut down, uvicorn raises the signal again for
    the handler it found installed; with this one, that returns here (and the caller stops the
    DICOM node and the workers) instead of ending the process on the spot."""

    def _stopped(signum: int, _frame: object) -> None:
        log.info("%s received", signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        uvicorn.Server(config).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(settings: Settings) -> int:
    from viewer_api.app import create_app

    run_dicom = settings.components in ("all", "dicom")
    run_api = settings.components in ("all", "api")
    configure_logging(settings.log_level)
    if run_dicom and settings.receiver_processes > 1 and settings.dicom_port == 0:
        raise SystemExit("dicom_processes > 1 needs a fixed --dicom-port")
    tls_context = dicom_tls_context(settings) if run_dicom else None
    arrivals = ArrivalClock()
    archive = build_archive(settings, on_queued=arrivals.tick if run_dicom else None)
    try:
        check_object_store(archive.store)
    except ObjectStoreError as exc:
        archive.close()
        raise SystemExit(f"filmless: the object store {settings.storage_url} is not usable: {exc}") from exc
    if run_api:
        from storage.index.users import Users
        from viewer_api.security import check_remote_access, ensure_initial_admin

        users = Users(archive.index)
        try:
            ensure_initial_admin(users, settings)
            check_remote_access(users, settings)
        except BaseException:
            archive.close()
            raise
    if run_dicom and settings.accept_unknown_aes:
        log.warning("unknown calling AE titles are accepted (development default); set accept_unknown_aes=false in production")
    log.info(
        "components %s; index %s, objects %s",
        settings.components,
        settings.index_url.split("@")[-1],
        settings.storage_url,
    )
    dicom_servers: list[DicomServer] = []
    workers: list[BaseProcess] = []
    # What the object store failed to take waits in the spool; it goes up from here.
    uploader = start_spool_uploader(archive) if run_dicom else None
    try:
        if run_dicom:
            listening = shared_listening_sockets(settings)
            dicom_servers = start_dicom_servers(archive, tls_context, listening=listening)
            # Only the component that writes objects and runs compression workers cleans up
            # after an earlier crash of its own kind (the API never holds either).
            sweep = getattr(archive.store, "sweep_temporaries", None)
            if sweep is not None and (swept := sweep()):
                log.warning("removed %d partial object files left by an earlier crash", swept)
            released = archive.index.release_dead_claims(socket.gethostname())
            if released:
                log.warning("released %d compression jobs claimed by workers that died", released)
            workers = start_compression_workers(settings, arrivals) + start_dicom_workers(settings, arrivals, listening)
        if run_api:
            app = create_app(archive)
            config = uvicorn.Config(
                app,
                host=settings.http_host,
                port=settings.http_port,
                log_level=settings.log_level.lower(),
                access_log=False,
            )
            run_http_api(config)
        else:
            wait_for_stop_signal()
    finally:
        log.info("shutting down")
        for server in dicom_servers:
            server.shutdown()
        stop_workers(workers)
        if uploader is not None:
            uploader.close()
        archive.close()
    return 0
