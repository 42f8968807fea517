"""The event-driven association reactors, between two real pynetdicom AEs on loopback.

The server side uses :class:`dicom_node.reactor.EventDrivenRequestHandler`; the client is
stock pynetdicom. What must still hold without the polling loops: requests are answered,
releases and aborts end both threads, the idle (network) timeout still fires, and nothing
(threads, file descriptors) is left behind.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.reactor import EventDrivenAssociation, EventDrivenRequestHandler
from tests.peers import LOOPBACK


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.associations: list[Any] = []
        self.stored: list[str] = []
        self.lock = threading.Lock()

    def on(self, name: str) -> Any:
        def handler(event: Any) -> None:
            with self.lock:
                self.events.append(name)
                if name == "established":
                    self.associations.append(event.assoc)

        return handler

    def store(self, event: Any) -> int:
        self.stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000


@pytest.fixture
def scp() -> Iterator[tuple[ThreadedAssociationServer, Recorder]]:
    recorder = Recorder()
    ae = echo_and_ct_ae("REACTOR")
    ae.network_timeout = 0.5
    handlers: list[Any] = [
        (evt.EVT_ESTABLISHED, recorder.on("established")),
        (evt.EVT_RELEASED, recorder.on("released")),
        (evt.EVT_ABORTED, recorder.on("aborted")),
        (evt.EVT_C_STORE, recorder.store),
    ]
    with event_driven_server(ae, handlers) as server:
        yield server, recorder


def echo_and_ct_ae(title: str) -> AE:
    """An AE that accepts Verification and CT Image Storage (Explicit VR Little Endian)."""
    ae = AE(ae_title=title)
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    return ae


@contextmanager
def event_driven_server(
    ae: AE, handlers: list[Any], server_class: type[ThreadedAssociationServer] = ThreadedAssociationServer
) -> Iterator[ThreadedAssociationServer]:
    """``ae`` serving on a free loopback port with event-driven associations."""
    server = ae.make_server(
        (LOOPBACK, 0), evt_handlers=handlers, server_class=server_class, request_handler=EventDrivenRequestHandler
    )
    ae._servers.append(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()


def _client(server: ThreadedAssociationServer) -> Any:
    ae = AE(ae_title="CLIENT")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate(LOOPBACK, server.server_address[1], ae_title="REACTOR")
    assert assoc.is_established
    return assoc


def _wait_until(condition: Any, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _ct(uid: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = uid
    ds.PatientName = "Nguyễn^Văn Đức"
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def test_the_server_side_is_event_driven(scp: tuple[ThreadedAssociationServer, Recorder]) -> None:
    server, recorder = scp
    assoc = _client(server)
    try:
        assert _wait_until(lambda: recorder.associations)
        assert isinstance(recorder.associations[0], EventDrivenAssociation)
    finally:
        assoc.release()


def test_many_requests_in_one_association_are_all_answered(scp: tuple[ThreadedAssociationServer, Recorder]) -> None:
    server, recorder = scp
    assoc = _client(server)
    uids = [generate_uid() for _ in range(40)]
    try:
        for i, uid in enumerate(uids):
            if i % 2:
                assert assoc.send_c_echo().Status == 0x0000
            else:
                assert assoc.send_c_store(_ct(uid)).Status == 0x0000
    finally:
        assoc.release()
    assert recorder.stored == uids[::2]
    assert _wait_until(lambda: "released" in recorder.events)


def test_release_and_abort_end_both_threads_and_leave_no_descriptors(
    scp: tuple[ThreadedAssociationServer, Recorder],
) -> None:
    server, recorder = scp
    warm = _client(server)  # the first association opens the server's lazily created files
    warm.release()
    assert _wait_until(lambda: len(recorder.events) >= 2)
    before = _open_fds()
    for ending in ("release", "abort", "release", "abort"):
        assoc = _client(server)
        assert assoc.send_c_echo().Status == 0x0000
        getattr(assoc, ending)()
    assert _wait_until(lambda: recorder.events.count("released") == 3 and recorder.events.count("aborted") == 2)
    server_side = recorder.associations
    assert _wait_until(lambda: not any(a.is_alive() or a.dul.is_alive() for a in server_side))
    assert _wait_until(lambda: _open_fds() <= before), "wake-up pipes or sockets left open"


def test_an_idle_association_is_aborted_by_the_network_timeout(scp: tuple[ThreadedAssociationServer, Recorder]) -> None:
    server, recorder = scp
    assoc = _client(server)
    # The server's network timeout is 0.5 s; the client just waits.
    assert _wait_until(lambda: "aborted" in recorder.events, seconds=10)
    assert _wait_until(lambda: assoc.is_aborted or not assoc.is_established, seconds=10)
    assert "released" not in recorder.events
