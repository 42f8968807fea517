"""Who may associate, and what they may do: the AE registry, checked when an association
is requested.

Registered AEs must come from their registered host (unless host checking is off). Unknown AEs
are accepted with a warning when the node allows them (development default), and rejected with
"calling AE title not recognised" (PS3.8 9.3.4, A-ASSOCIATE-RJ reason 3) otherwise.

What an AE may do (echo, store, find, move, get) comes from its registry entry, or from
``unknown_ae_services`` for unregistered AEs. Presentation contexts of services an AE may not
use are not accepted at all (the peer sees "abstract syntax not supported"), and each handler
checks again (:func:`require`), answering "Refused: Not authorized". Storage contexts are always
accepted because C-GET receivers propose them too; C-STORE requests are checked one by one.

Every association (accepted or rejected) is written to the audit log.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any

from pynetdicom.association import Association
from pynetdicom.events import Event

from storage.index import ApplicationEntity, Index
from storage.index.repository import SERVICES

log = logging.getLogger("filmless.dicom.access")

# Abstract syntaxes of the query/retrieve and verification services, by service (the
# PS3.4 Annex C information models, and Verification).
_SERVICE_OF_SOP_CLASS = {
    "1.2.840.10008.1.1": "echo",
    "1.2.840.10008.5.1.4.1.2.1.1": "find",  # Patient Root Q/R - FIND
    "1.2.840.10008.5.1.4.1.2.2.1": "find",  # Study Root Q/R - FIND
    "1.2.840.10008.5.1.4.1.2.1.2": "move",  # Patient Root Q/R - MOVE
    "1.2.840.10008.5.1.4.1.2.2.2": "move",  # Study Root Q/R - MOVE
    "1.2.840.10008.5.1.4.1.2.1.3": "get",  # Patient Root Q/R - GET
    "1.2.840.10008.5.1.4.1.2.2.3": "get",  # Study Root Q/R - GET
}


@dataclass(frozen=True)
class Peer:
    """The requestor of an association, as access control saw it."""

    ae_title: str
    host: str
    registered: ApplicationEntity | None
    services: frozenset[str]

    @property
    def ascii_only(self) -> bool:
        return bool(self.registered and self.registered.ascii_only)

    def may(self, service: str) -> bool:
        return service in self.services


class NotAuthorized(Exception):
    """The peer may not use a service (the handler answers "Refused: Not authorized")."""


def peer_of(assoc: Association) -> Peer:
    """The :class:`Peer` access control attached to ``assoc`` (every service allowed when the
    node runs without access control, as in handler unit tests)."""
    peer = getattr(assoc, "filmless_peer", None)
    if isinstance(peer, Peer):
        return peer
    return Peer(assoc.requestor.ae_title.strip(), assoc.requestor.address, None, frozenset(SERVICES))


def require(assoc: Association, service: str) -> Peer:
    """The peer, if it may use ``service``; raises :class:`NotAuthorized` otherwise."""
    peer = peer_of(assoc)
    if not peer.may(service):
        log.warning("%s from %s@%s refused: not authorised by the AE registry", service, peer.ae_title, peer.host)
        raise NotAuthorized(f"{peer.ae_title} may not use {service}")
    return peer

_REJECT_PERMANENT = 0x01
_SOURCE_SERVICE_USER = 0x01
_CALLING_AE_NOT_RECOGNISED = 0x03
_CALLED_AE_NOT_RECOGNISED = 0x07


class AccessControl:
    def __init__(
        self,
        index: Index,
        *,
        accept_unknown: bool,
        check_host: bool,
        unknown_services: frozenset[str] = frozenset(SERVICES),
        called_ae_title: str | None = None,
    ) -> None:
        self.index = index
        self.accept_unknown = accept_unknown
        self.check_host = check_host
        self.unknown_services = unknown_services
        self.called_ae_title = called_ae_title

    def handle_requested(self, event: Event) -> None:
        assoc = event.assoc
        # The requestor's AE title is filled in only after negotiation; read the A-ASSOCIATE-RQ.
        primitive = assoc.requestor.primitive
        calling = str(primitive.calling_ae_title if primitive is not None else assoc.requestor.ae_title).strip()
        called = str(primitive.called_ae_title if primitive is not None else "").strip()
        host = assoc.requestor.address
        try:
            registered = self.index.get_ae(calling)
        except Exception:  # noqa: BLE001 - the index being down must not crash the server
            log.exception("AE registry unavailable; rejecting %s from %s (transient)", calling, host)
            _reject(assoc, 0x02, _SOURCE_SERVICE_USER, 0x01)
            return
        if self.called_ae_title is not None and called != self.called_ae_title:
            # pynetdicom checks it too (require_called_aet); here it is logged and audited.
            log.warning("association from %r at %s rejected: called AE title %r is not ours", calling, host, called)
            self._audit(calling, host, "rejected", reason="called AE title not recognised", called=called)
            _reject(assoc, _REJECT_PERMANENT, _SOURCE_SERVICE_USER, _CALLED_AE_NOT_RECOGNISED)
            return
        if registered is None:
            if not self.accept_unknown:
                log.warning("association from unknown AE %r at %s rejected", calling, host)
                self._audit(calling, host, "rejected", reason="unknown AE")
                _reject(assoc, _REJECT_PERMANENT, _SOURCE_SERVICE_USER, _CALLING_AE_NOT_RECOGNISED)
                return
            log.warning("association from unregistered AE %r at %s accepted", calling, host)
            services = self.unknown_services
        elif self.check_host and not _same_host(registered.host, host):
            log.warning(
                "association from AE %r at %s rejected: registered for host %s", calling, host, registered.host
            )
            self._audit(calling, host, "rejected", reason=f"registered for host {registered.host}")
            _reject(assoc, _REJECT_PERMANENT, _SOURCE_SERVICE_USER, _CALLING_AE_NOT_RECOGNISED)
            return
        else:
            services = frozenset(registered.services)
        peer = Peer(calling, host, registered, frozenset(services))
        assoc.filmless_peer = peer  # type: ignore[attr-defined]
        _keep_permitted_contexts(assoc, peer)
        self._audit(
            calling,
            host,
            "accepted",
            registered=registered is not None,
            services=sorted(services),
            proposed=_proposed_services(primitive),
        )

    def _audit(self, calling: str, host: str, outcome: str, **detail: Any) -> None:
        try:
            self.index.record_audit("dicom.association", outcome, actor=calling, actor_host=host, detail=detail)
        except Exception:  # noqa: BLE001 - an audit failure is logged, the association goes on
            log.exception("could not write the audit event of an association from %s@%s", calling, host)


def _keep_permitted_contexts(assoc: Association, peer: Peer) -> None:
    """Drop the supported contexts of services the peer may not use, before negotiation."""
    supported = assoc.acceptor._contexts  # the per-association copy pynetdicom negotiates with
    kept = [
        cx
        for cx in supported
        if _SERVICE_OF_SOP_CLASS.get(str(cx.abstract_syntax)) is None
        or peer.may(_SERVICE_OF_SOP_CLASS[str(cx.abstract_syntax)])
    ]
    if len(kept) != len(supported):
        assoc.acceptor._contexts = kept


def _proposed_services(primitive: Any) -> list[str]:
    contexts = getattr(primitive, "presentation_context_definition_list", None) or []
    found = {_SERVICE_OF_SOP_CLASS.get(str(cx.abstract_syntax), "store") for cx in contexts}
    return sorted(found)


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


