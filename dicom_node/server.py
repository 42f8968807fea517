"""The listening socket: pynetdicom's threaded server with the options a PACS needs.

- TCP_NODELAY on every accepted connection (Nagle + delayed ACK costs ~40 ms per response);
- SO_REUSEPORT, so several filmless processes can share one DICOM port (the kernel spreads
  associations over them) -- how one box uses more than one core for DIMSE;
- presentation contexts whose per-association copy is cheap: pynetdicom deep-copies the
  supported contexts for every association, which for 170 storage SOP classes x 45 transfer
  syntaxes costs ~0.4 s of CPU per association.
"""

from __future__ import annotations

import copy
import socket
from collections.abc import Iterable, Sequence
from typing import Any

from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import ThreadedAssociationServer


class SharedContext(PresentationContext):
    """A presentation context whose deep copy shares the immutable UID objects."""

    def __deepcopy__(self, memo: dict[int, Any]) -> PresentationContext:
        clone = copy.copy(self)
        clone._transfer_syntax = list(self._transfer_syntax)
        return clone


def shared_contexts(pairs: Iterable[tuple[str, Sequence[str]]]) -> list[PresentationContext]:
    contexts: list[PresentationContext] = []
    for abstract_syntax, transfer_syntaxes in pairs:
        cx = SharedContext()
        cx.abstract_syntax = abstract_syntax
        cx.transfer_syntax = list(transfer_syntaxes)
        contexts.append(cx)
    return contexts


class DicomServer(ThreadedAssociationServer):
    """ThreadedAssociationServer + TCP_NODELAY + optional SO_REUSEPORT."""

    reuse_port = False
    tcp_nodelay = True

    def server_bind(self) -> None:
        if self.reuse_port and hasattr(socket, "SO_REUSEPORT"):
            assert self.socket is not None
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = super().get_request()
        if self.tcp_nodelay:
            try:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        return client, address
