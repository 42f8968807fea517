"""Several receivers accepting from one listening socket (``--dicom-processes N``): each
new association goes to the least busy receiver, and stopping one leaves the others
listening. Two servers in one process stand for two processes: each counts only its own
associations."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_node.server import DicomServer, listening_socket
from tests.integration.test_reactor import echo_and_ct_ae, event_driven_server
from tests.peers import LOOPBACK


@contextmanager
def _receiver(shared: socket.socket, name: str) -> Iterator[DicomServer]:
    class Server(DicomServer):
        shared_socket = shared.dup()  # as a process receives it: its own descriptor

    with event_driven_server(echo_and_ct_ae(name), [], Server) as server:
        assert isinstance(server, DicomServer)
        yield server


def _associate(port: int) -> Any:
    ae = AE(ae_title="CLIENT")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate(LOOPBACK, port, ae_title="ANY")
    assert assoc.is_established
    return assoc


def test_associations_are_spread_evenly() -> None:
    shared = listening_socket(LOOPBACK, 0)
    port = shared.getsockname()[1]
    with shared, _receiver(shared, "ONE") as one, _receiver(shared, "TWO") as two:
        assert one.server_address == two.server_address == (LOOPBACK, port)
        assocs = [_associate(port) for _ in range(4)]
        try:
            assert sorted([len(one.active_associations), len(two.active_associations)]) == [2, 2]
            for assoc in assocs:
                assert assoc.send_c_echo().Status == 0
        finally:
            for assoc in assocs:
                assoc.release()


def test_one_receiver_stopping_leaves_the_port_to_the_others() -> None:
    shared = listening_socket(LOOPBACK, 0)
    port = shared.getsockname()[1]
    with shared, ExitStack() as stack:
        stack.enter_context(_receiver(shared, "STAYS"))
        with _receiver(shared, "STOPS"):
            pass  # stopped: must not shut the shared socket down for the other
        for _ in range(3):
            assoc = _associate(port)
            assert assoc.send_c_echo().Status == 0
            assoc.release()
