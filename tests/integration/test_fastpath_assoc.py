"""The C-STORE fast path inside real associations: a stock pynetdicom client against an
event-driven server whose AE has an archive store (``filmless_store``)."""

from __future__ import annotations

import socket
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.status import Status, failure_response
from tests.integration.test_reactor import _ct, echo_and_ct_ae, event_driven_server
from tests.peers import LOOPBACK


class Store:
    """The archive's side: records the requests the fast path hands over."""

    max_object_size = 1 << 20

    def __init__(self) -> None:
        self.fast: list[tuple[str, str, int]] = []
        self.slow: list[str] = []

    def receiving(self, assoc: Any, abstract: str, ts: str, cls: str, inst: str) -> None:
        return None  # nothing is written as it arrives

    def store(
        self, assoc: Any, abstract: str, ts: str, cls: str, inst: str, data: bytes | None, size: int, stream: None
    ) -> Any:
        self.fast.append((inst, ts, size))
        if inst.endswith(".9"):
            return failure_response(Status.CANNOT_UNDERSTAND, ValueError("refused for the test"))
        return 0x0000

    def handler(self, event: Any) -> int:
        self.slow.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000


@pytest.fixture
def server() -> Iterator[tuple[ThreadedAssociationServer, Store]]:
    store = Store()
    ae = echo_and_ct_ae("FAST")
    ae.filmless_store = store  # type: ignore[attr-defined]
    with event_driven_server(ae, [(evt.EVT_C_STORE, store.handler)]) as server:
        yield server, store


def _associate(server: ThreadedAssociationServer, max_pdu: int = 16382) -> Any:
    ae = AE(ae_title="CLIENT")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate(LOOPBACK, server.server_address[1], ae_title="FAST", max_pdu=max_pdu)
    assert assoc.is_established
    return assoc


def test_stores_between_echoes_are_answered_by_the_fast_path(server: tuple[ThreadedAssociationServer, Store]) -> None:
    srv, store = server
    assoc = _associate(srv)
    uids = [generate_uid() for _ in range(20)]
    try:
        for uid in uids:
            assert assoc.send_c_echo().Status == 0x0000
            assert assoc.send_c_store(_ct(uid)).Status == 0x0000
    finally:
        assoc.release()
    assert [u for u, _, _ in store.fast] == uids
    assert {ts for _, ts, _ in store.fast} == {ExplicitVRLittleEndian}
    assert store.slow == []


def test_a_failure_reaches_the_sender_with_its_comment(server: tuple[ThreadedAssociationServer, Store]) -> None:
    srv, _ = server
    assoc = _associate(srv)
    try:
        rsp = assoc.send_c_store(_ct("1.2.826.0.1.3680043.8.498.77.9"))
        assert rsp.Status == 0xC000
        assert rsp.ErrorComment == "refused for the test"
        assert assoc.send_c_store(_ct(generate_uid())).Status == 0x0000  # the association goes on
    finally:
        assoc.release()


def test_a_peer_with_tiny_pdus_gets_pynetdicoms_handler(server: tuple[ThreadedAssociationServer, Store]) -> None:
    srv, store = server
    assoc = _associate(srv, max_pdu=512)
    uid = generate_uid()
    try:
        assert assoc.send_c_store(_ct(uid)).Status == 0x0000
    finally:
        assoc.release()
    assert store.slow == [uid] and store.fast == []


def test_a_pdu_header_claiming_gigabytes_does_not_allocate_them(server: tuple[ThreadedAssociationServer, Store]) -> None:
    srv, _ = server
    tracemalloc.start()
    try:
        with socket.create_connection((LOOPBACK, srv.server_address[1]), timeout=10) as sock:
            # An A-ASSOCIATE-RQ that says it is 4 GiB long, then 1 KB of it, then the end.
            sock.sendall(b"\x01\x00" + (0xFFFFFFF0).to_bytes(4, "big") + b"\0" * 1024)
            time.sleep(0.3)
        time.sleep(0.3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024
    assoc = _associate(srv)  # the server goes on
    assoc.release()
