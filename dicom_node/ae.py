"""The DICOM node: one Application Entity, every DIMSE binding in one list.

Presentation contexts: every storage SOP class pynetdicom knows, each with every standard
transfer syntax (PS3.5 Annex A and PS3.6 Table A-1), plus Verification.
"""

from __future__ import annotations

import logging
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node import access
from dicom_node.echo import handle_echo
from dicom_node.store import handle_store
from filmless.bootstrap import Archive

log = logging.getLogger("filmless.dicom")


def build_ae(archive: Archive) -> tuple[AE, list[tuple[Any, ...]]]:
    """The AE with its supported contexts and the handler bindings for ``start_server``."""
    settings = archive.settings
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.max_associations
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.network_timeout = settings.network_timeout
    ae.acse_timeout = 30
    ae.dimse_timeout = settings.network_timeout
    ae.require_called_aet = True
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)

    control = access.AccessControl(
        archive.index,
        accept_unknown=settings.accept_unknown_aes,
        check_host=settings.check_ae_host,
    )
    handlers: list[tuple[Any, ...]] = [
        (evt.EVT_CONN_OPEN, access.handle_conn_open) if settings.tcp_nodelay else None,
        (evt.EVT_REQUESTED, control.handle_requested),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [archive.ingest]),
    ]
    return ae, [h for h in handlers if h is not None]


def start(archive: Archive) -> ThreadedAssociationServer:
    """Start listening (non-blocking); returns the server to shut down later."""
    settings = archive.settings
    ae, handlers = build_ae(archive)
    server = ae.start_server(
        (settings.dicom_host, settings.dicom_port), block=False, evt_handlers=handlers
    )
    assert server is not None
    log.info(
        "DICOM node %s listening on %s:%d", settings.ae_title, settings.dicom_host, server.server_address[1]
    )
    return server
