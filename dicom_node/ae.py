"""The DICOM node: one Application Entity, every DIMSE binding in one list.

Presentation contexts: every storage SOP class pynetdicom knows, each with every standard
transfer syntax (PS3.5 Annex A and PS3.6 Table A-1) and SCP/SCU role selection allowed (for
C-GET), Verification, and the Patient Root and Study Root Query/Retrieve FIND, MOVE and GET
models.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from typing import Any

from pydicom import config as pydicom_config
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from dicom_node import access
from dicom_node.echo import handle_echo
from dicom_node.find import MODELS, FindService, handle_sop_extended
from dicom_node.reactor import EventDrivenRequestHandler
from dicom_node.server import DicomServer, shared_contexts
from dicom_node.retrieve import RETRIEVE_SOP_CLASSES, RetrieveService
from dicom_node.store import StoreSCP, handle_store
from dicom_node.tls import TlsDicomServer
from filmless.bootstrap import Archive
from storage.retrieve import Retriever

log = logging.getLogger("filmless.dicom")


def accepted_transfer_syntaxes() -> list[str]:
    """Our preference when a context proposes several syntaxes (pynetdicom accepts the first
    of ours that the requestor proposed): the sender's own lossless compression first (no work
    on either side, nothing lost), then explicit VR (keeps private tags' VRs), deflated, big
    endian, implicit VR; lossy syntaxes last, so that we never ask a sender to compress lossily."""
    lossless_compressed = [
        "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
        "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
        "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
        "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
        "1.2.840.10008.1.2.4.57",  # JPEG lossless
        "1.2.840.10008.1.2.5",  # RLE lossless
    ]
    uncompressed = [
        "1.2.840.10008.1.2.1",  # explicit VR little endian
        "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
        "1.2.840.10008.1.2.2",  # explicit VR big endian
        "1.2.840.10008.1.2",  # implicit VR little endian
    ]
    first = lossless_compressed + uncompressed
    return first + [ts for ts in ALL_TRANSFER_SYNTAXES if ts not in first]


def build_ae(archive: Archive) -> tuple[AE, list[PresentationContext], list[tuple[Any, ...]]]:
    """The AE, the presentation contexts it accepts and the handler bindings."""
    settings = archive.settings
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.max_associations
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.network_timeout = settings.network_timeout
    ae.acse_timeout = 30
    ae.dimse_timeout = settings.network_timeout
    ae.require_called_aet = True
    syntaxes = accepted_transfer_syntaxes()
    storage = shared_contexts([(str(cx.abstract_syntax), syntaxes) for cx in AllStoragePresentationContexts])
    for cx in storage:
        # A C-GET requestor proposes the storage contexts with itself as SCP (PS3.7 D.3.3.4).
        cx.scu_role = True
        cx.scp_role = True
    # Identifiers are small: the uncompressed syntaxes are enough (deflate too, PS3.5 A.5).
    query_syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian]
    query_retrieve = shared_contexts(
        [(uid, query_syntaxes) for uid in (*MODELS, *RETRIEVE_SOP_CLASSES)]
    )
    contexts = storage + shared_contexts([(Verification, syntaxes)]) + query_retrieve

    control = access.AccessControl(
        archive.index,
        accept_unknown=settings.accept_unknown_aes,
        check_host=settings.check_ae_host,
        unknown_services=settings.unknown_services(),
        called_ae_title=settings.ae_title,
    )
    find = FindService(archive.index, ae_title=settings.ae_title, max_matches=settings.max_find_matches)
    # C-MOVE / C-GET are served by the event-driven associations (dicom_node.reactor).
    ae.filmless_retrieve = RetrieveService(  # type: ignore[attr-defined]
        archive.index, Retriever(archive.index, archive.store), ae, ae_title=settings.ae_title
    )
    store = StoreSCP(archive.ingest)
    # C-STORE requests are read by the event-driven associations' fast path
    # (dicom_node.fastpath) when the AE has a store; pynetdicom's handler takes the rest.
    ae.filmless_store = store  # type: ignore[attr-defined]
    handlers: list[tuple[Any, ...]] = [
        (evt.EVT_REQUESTED, control.handle_requested),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [store]),
        (evt.EVT_C_FIND, find.handle),
        (evt.EVT_SOP_EXTENDED, handle_sop_extended),
    ]
    return ae, contexts, handlers


def start(
    archive: Archive,
    *,
    listening: socket.socket | None = None,
    port: int | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> DicomServer:
    """Start listening in a background thread; returns the server to ``stop`` later.

    ``port``: default ``settings.dicom_port``. ``ssl_context``: serve DICOM over TLS
    (:mod:`dicom_node.tls`) with the same AE, handlers and access control. ``listening``: a
    socket already listening on that port, shared with other receiver processes."""
    settings = archive.settings
    # pynetdicom builds every DIMSE command set as a pydicom Dataset; pydicom re-validates
    # each value it writes (~0.3 ms per C-STORE response). Our values are generated, not
    # user input, and received datasets are never re-encoded by this process.
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    if settings.log_level != "DEBUG":
        # pynetdicom's standard notification handlers format a log text for every PDU and
        # DIMSE message, and its C-FIND service pretty-prints every request and response
        # identifier, whether or not the pynetdicom logger shows them (it does not below
        # DEBUG): ~0.1 ms a message.
        pynetdicom_config.LOG_HANDLER_LEVEL = "none"
        pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
        pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    ae, contexts, handlers = build_ae(archive)

    class Server(DicomServer if ssl_context is None else TlsDicomServer):  # type: ignore[misc]
        pass

    Server.shared_socket = listening
    Server.tcp_nodelay = settings.tcp_nodelay
    server = ae.make_server(
        (settings.dicom_host, settings.dicom_port if port is None else port),
        evt_handlers=handlers,
        ssl_context=ssl_context,
        server_class=Server,
        contexts=contexts,
        request_handler=EventDrivenRequestHandler,
    )
    assert isinstance(server, DicomServer)
    ae._servers.append(server)  # so that server.shutdown() finds itself, as in start_server
    name = "dicom-server" if ssl_context is None else "dicom-tls-server"
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    log.info(
        "DICOM node %s listening on %s:%d%s",
        settings.ae_title,
        settings.dicom_host,
        server.server_address[1],
        "" if ssl_context is None else " (DICOM TLS)",
    )
    return server
