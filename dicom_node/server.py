"""The listening socket: pynetdicom's threaded server with the options a PACS needs.

- TCP_NODELAY on every accepted connection (Nagle + delayed ACK costs ~40 ms per response);
- one listening socket shared by several filmless processes (``--dicom-processes``), each
  accepting from it: how one box uses more than one core for DIMSE. The kernel's
  SO_REUSEPORT would hash each connection to one process, whatever its load (four
  associations split anywhere from 4/0 to 2/2); here every process is woken for a new
  connection, and one already serving associations waits a millisecond for each before
  accepting, so the least busy process takes it;
- presentation contexts whose per-association copy is cheap: pynetdicom deep-copies the
  supported contexts for every association, which for 170 storage SOP classes x 45 transfer
  syntaxes costs ~0.4 s of CPU per association.
"""

from __future__ import annotations

import copy
import socket
import time
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
    """ThreadedAssociationServer + TCP_NODELAY + an optional listening socket shared by
    several processes."""

    tcp_nodelay = True
    # Set (on a subclass) to listen on a socket made and shared by the parent process.
    shared_socket: socket.socket | None = None
    # How long a process serving associations waits per association before it accepts.
    yield_per_association = 0.001

    def server_bind(self) -> None:
        if self.shared_socket is None:
            super().server_bind()
            return
        assert self.socket is not None
        self.socket.close()
        self.socket = self.shared_socket
        # Non-blocking: another process may take the connection this one was woken for.
        self.socket.settimeout(0)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        if self.shared_socket is None:  # a shared socket is already listening
            super().server_activate()

    def server_close(self) -> None:
        if self.shared_socket is None:
            super().server_close()
        else:  # no shutdown(): that would stop the other processes' listening too
            self.shared_socket.close()

    def before_accept(self) -> None:
        """With a shared socket, leave a new connection to a less busy process."""
        if self.shared_socket is not None:
            busy = len(self.active_associations)
            if busy:
                time.sleep(min(busy, 10) * self.yield_per_association)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        self.before_accept()
        client, address = super().get_request()
        if self.tcp_nodelay:
            try:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        return client, address


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port``, to share with :class:`DicomServer` processes."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=128)
