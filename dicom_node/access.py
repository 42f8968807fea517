"""Who may associate: the AE registry, checked when an association is requested.

Registered AEs must come from their registered host (unless host checking is off). Unknown AEs
are accepted with a warning when the node allows them (development default), and rejected with
"calling AE title not recognised" (PS3.8 9.3.4, A-ASSOCIATE-RJ reason 3) otherwise.


"""

from __future__ import annotations

import logging
import socket

from pynetdicom.association import Association
from pynetdicom.events import Event

from storage.index import Index

log = logging.getLogger("filmless.dicom.access")

_REJECT_PERMANENT = 0x01
_SOURCE_SERVICE_USER = 0x01
_CALLING_AE_NOT_RECOGNISED = 0x03


class AccessControl:
    def __init__(self, index: Index, *, accept_unknown: bool, check_host: bool) -> None:
        self.index = index
        self.accept_unknown = accept_unknown
        self.check_host = check_host

    def handle_requested(self, event: Event) -> None:
        assoc = event.assoc
        # The requestor's AE title is filled in only after negotiation; read the A-ASSOCIATE-RQ.
        primitive = assoc.requestor.primitive
        calling = str(primitive.calling_ae_title if primitive is not None else assoc.requestor.ae_title).strip()
        host = assoc.requestor.address
        try:
            registered = self.index.get_ae(calling)
        except Exception:  # noqa: BLE001 - the index being down must not crash the server
            log.exception("AE registry unavailable; rejecting %s from %s (transient)", calling, host)
            _reject(assoc, 0x02, _SOURCE_SERVICE_USER, 0x01)
            return
        if registered is None:
            if self.accept_unknown:
                log.warning("association from unregistered AE %r at %s accepted", calling, host)
                return
            log.warning("association from unknown AE %r at %s rejected", calling, host)
            _reject(assoc, _REJECT_PERMANENT, _SOURCE_SERVICE_USER, _CALLING_AE_NOT_RECOGNISED)
            return
        if self.check_host and not _same_host(registered.host, host):
            log.warning(
                "association from AE %r at %s rejected: registered for host %s", calling, host, registered.host
            )
            _reject(assoc, _REJECT_PERMANENT, _SOURCE_SERVICE_USER, _CALLING_AE_NOT_RECOGNISED)


def _reject(assoc: Association, result: int, source: int, diagnostic: int) -> None:
    """Send the A-ASSOCIATE-RJ and wait until it is on the wire: pynetdicom only queues the
    PDU, and closes the socket as soon as this handler returns (the peer would then see the
    connection drop instead of the rejection). ``kill`` waits for the DUL to finish, as
    pynetdicom's own rejections do."""
    assoc.acse.send_reject(result, source, diagnostic)
    assoc.kill()


def _same_host(registered: str, address: str) -> bool:
    if registered in ("*", address):
        return True
    try:
        infos = socket.getaddrinfo(registered, None)
    except OSError:
        return False
    return any(info[4][0] == address for info in infos)


