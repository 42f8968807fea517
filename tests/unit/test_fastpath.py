"""The C-STORE fast path (dicom_node.fastpath) against pynetdicom's own encoder and decoder.

Requests are encoded by pynetdicom (as a peer would send them), fed PDU by PDU to
:class:`StoreFastPath` over a hand-written association, and its responses are decoded by
pynetdicom again: the two must agree on every field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import P_DATA_TF

from dicom_node.fastpath import ProtocolError, StoreFastPath, encode_store_response, parse_command, status_elements
from dicom_node.status import Status, failure_response

VERIFICATION = "1.2.840.10008.1.1"
CT_CONTEXT, ECHO_CONTEXT, MOVE_CONTEXT = 1, 3, 5


@dataclass
class Context:
    abstract_syntax: str
    transfer_syntax: list[str]
    as_scp: bool = True


@dataclass
class Peer:
    maximum_length: int = 16384
    ae_title: str = "MODALITY"
    address: str = "127.0.0.1"


@dataclass
class Dul:
    _kill_thread: bool = False


@dataclass
class Acceptor:
    accepted_common_extended: dict[str, Any] = field(default_factory=dict)


@dataclass
class Assoc:
    requestor: Peer = field(default_factory=Peer)
    acceptor: Acceptor = field(default_factory=Acceptor)
    dul: Dul = field(default_factory=Dul)
    is_aborted: bool = False
    _sent_release: bool = False
    _accepted_cx: dict[int, Context] = field(
        default_factory=lambda: {
            CT_CONTEXT: Context(CTImageStorage, [ExplicitVRLittleEndian]),
            ECHO_CONTEXT: Context(VERIFICATION, [ExplicitVRLittleEndian]),
            MOVE_CONTEXT: Context("1.2.840.10008.5.1.4.1.2.2.2", [ExplicitVRLittleEndian]),
        }
    )


class Stream:
    """A :class:`storage.ingest.Receiving` that records the fragments it was given."""

    def __init__(self, made_for: tuple[str, ...]) -> None:
        self.made_for = made_for
        self.fragments: list[bytes] = []
        self.abandoned = False

    def add(self, data: memoryview) -> None:
        assert not self.abandoned
        self.fragments.append(bytes(data))

    def abandon(self) -> None:
        self.abandoned = True


class Target:
    """A store that records what it was given and answers ``answer``."""

    def __init__(self, answer: Any = 0x0000, max_object_size: int = 1 << 20) -> None:
        self.answer = answer
        self.max_object_size = max_object_size
        self.calls: list[tuple[Any, ...]] = []
        self.streams: list[Stream] = []

    def receiving(self, assoc: Any, abstract: str, ts: str, cls: str, inst: str) -> Stream:
        self.streams.append(Stream((abstract, ts, cls, inst)))
        return self.streams[-1]

    def store(
        self, assoc: Any, abstract: str, ts: str, cls: str, inst: str, data: bytes | None, size: int, stream: Any = None
    ) -> Any:
        assert stream is None or stream is self.streams[-1]
        self.calls.append((abstract, ts, cls, inst, data, size))
        return self.answer


class Harness:
    def __init__(self, target: Target | None = None, assoc: Assoc | None = None) -> None:
        self.target = target or Target()
        self.assoc = assoc or Assoc()
        self.forwarded: list[bytes] = []
        self.sent: list[bytes] = []
        self.fast = StoreFastPath(self.assoc, self.target, self.forwarded.append, self.sent.append)

    def feed(self, pdus: list[bytes]) -> None:
        for pdu in pdus:
            assert pdu[0] == 0x04
            self.fast.feed(bytearray(pdu[6:]))

    def responses(self) -> list[C_STORE]:
        return [_decode(pdu) for pdu in self.sent]  # type: ignore[misc]


def _pdus(primitive: Any, message_class: type[DIMSEMessage], context_id: int, max_pdu: int = 16384) -> list[bytes]:
    message = message_class()
    message.primitive_to_message(primitive)
    out = []
    for p_data in message.encode_msg(context_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(p_data)
        out.append(pdu.encode())
    return out


def _store_rq(data: bytes, *, uid: str | None = None, message_id: int = 7, sop_class: str = CTImageStorage) -> C_STORE:
    rq = C_STORE()
    rq.MessageID = message_id
    rq.AffectedSOPClassUID = sop_class
    rq.AffectedSOPInstanceUID = uid or generate_uid()
    rq.Priority = 0
    rq.DataSet = __import__("io").BytesIO(data)
    return rq


def _decode(pdu: bytes) -> Any:
    p = P_DATA_TF()
    p.decode(pdu)
    message = DIMSEMessage()
    assert message.decode_msg(p.to_primitive())
    return message.message_to_primitive()


def test_a_c_store_is_taken_over_and_answered_as_pynetdicom_would_decode_it() -> None:
    h = Harness()
    data = bytes(range(256)) * 300
    rq = _store_rq(data, message_id=4242)
    h.feed(_pdus(rq, C_STORE_RQ, CT_CONTEXT, max_pdu=4096))
    assert h.forwarded == []
    assert h.target.calls == [
        (CTImageStorage, ExplicitVRLittleEndian, CTImageStorage, rq.AffectedSOPInstanceUID, data, len(data))
    ]
    [rsp] = h.responses()
    assert isinstance(rsp, C_STORE) and rsp.is_valid_response
    assert rsp.MessageIDBeingRespondedTo == 4242
    assert rsp.AffectedSOPClassUID == CTImageStorage
    assert rsp.AffectedSOPInstanceUID == rq.AffectedSOPInstanceUID
    assert rsp.Status == 0x0000
    # The object was written as the fragments came, and handed to the store with them.
    [stream] = h.target.streams
    assert stream.made_for == (CTImageStorage, ExplicitVRLittleEndian, CTImageStorage, rq.AffectedSOPInstanceUID)
    assert len(stream.fragments) > 1 and b"".join(stream.fragments) == data and not stream.abandoned


def test_a_failure_carries_its_comment_and_offending_element() -> None:
    answer = failure_response(Status.CANNOT_UNDERSTAND, ValueError("Study Instance UID missing"), offending=0x0020000D)
    h = Harness(Target(answer))
    h.feed(_pdus(_store_rq(b"\x08\x00\x16\x00UI\x00\x00"), C_STORE_RQ, CT_CONTEXT))
    [rsp] = h.responses()
    assert rsp.Status == 0xC000
    assert rsp.ErrorComment == "Study Instance UID missing"
    assert rsp.OffendingElement == 0x0020000D  # VM 1: pynetdicom decodes one tag


def test_other_messages_go_to_pynetdicom_unchanged_and_in_order() -> None:
    h = Harness()
    echo = C_ECHO()
    echo.MessageID = 1
    echo.AffectedSOPClassUID = VERIFICATION
    echo_pdus = _pdus(echo, C_ECHO_RQ, ECHO_CONTEXT)
    store_pdus = _pdus(_store_rq(b"x" * 10), C_STORE_RQ, CT_CONTEXT)
    h.feed(echo_pdus + store_pdus + echo_pdus)
    assert h.forwarded == echo_pdus * 2
    assert len(h.target.calls) == 1 and len(h.sent) == 1


def test_a_store_on_a_non_storage_context_is_left_to_pynetdicom_with_its_data_set() -> None:
    h = Harness()
    pdus = _pdus(_store_rq(b"y" * 5000, sop_class="1.2.840.10008.5.1.4.1.2.2.2"), C_STORE_RQ, MOVE_CONTEXT, max_pdu=1024)
    h.feed(pdus)
    assert h.target.calls == [] and h.sent == []
    # Re-encoded, but the same PDVs: pynetdicom decodes the same message from them.
    assert [P_DATA_TF().decode(p) or p for p in h.forwarded] == pdus
    # And the next message is judged afresh.
    h.feed(_pdus(_store_rq(b"z" * 10), C_STORE_RQ, CT_CONTEXT))
    assert len(h.target.calls) == 1


def test_several_messages_in_one_pdu() -> None:
    h = Harness()
    first, second = (_pdus(_store_rq(b"a" * 10, message_id=i), C_STORE_RQ, CT_CONTEXT) for i in (1, 2))
    # Both messages' PDVs in one P-DATA-TF, as the standard allows.
    bodies = b"".join(p[6:] for p in first + second)
    h.fast.feed(bytearray(bodies))
    assert [r.MessageIDBeingRespondedTo for r in h.responses()] == [1, 2]


def test_an_oversized_data_set_is_counted_not_kept_and_refused() -> None:
    target = Target(max_object_size=1000)
    h = Harness(target)
    h.feed(_pdus(_store_rq(b"q" * 5000), C_STORE_RQ, CT_CONTEXT, max_pdu=1024))
    [(_, _, _, _, data, size)] = target.calls
    assert data is None and size == 5000
    [stream] = target.streams
    assert stream.abandoned  # dropped once the limit was passed, not written on


def test_an_association_ending_mid_data_set_drops_what_was_written() -> None:
    h = Harness()
    pdus = _pdus(_store_rq(b"w" * 5000), C_STORE_RQ, CT_CONTEXT, max_pdu=1024)
    h.feed(pdus[:3])
    [stream] = h.target.streams
    assert stream.fragments and not stream.abandoned
    h.fast.close()
    assert stream.abandoned and h.target.calls == []


def test_a_command_fragment_inside_a_data_set_is_a_protocol_error() -> None:
    h = Harness()
    pdus = _pdus(_store_rq(b"w" * 5000), C_STORE_RQ, CT_CONTEXT, max_pdu=1024)
    echo = C_ECHO()
    echo.MessageID = 2
    echo.AffectedSOPClassUID = VERIFICATION
    with pytest.raises(ProtocolError):
        h.feed(pdus[:2] + _pdus(echo, C_ECHO_RQ, ECHO_CONTEXT))


@pytest.mark.parametrize("body", [b"\x00\x00\x00\x09\x01\x03", b"\x00\x00\x00\x01\x01\x03", b"\x00\x00"])
def test_items_that_overrun_their_pdu_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        Harness().fast.feed(bytearray(body))


def test_a_peer_with_tiny_pdus_is_left_to_pynetdicom() -> None:
    h = Harness(assoc=Assoc(requestor=Peer(maximum_length=512)))
    pdus = _pdus(_store_rq(b"v" * 100), C_STORE_RQ, CT_CONTEXT, max_pdu=512)
    h.feed(pdus)
    assert h.forwarded == pdus and h.target.calls == []


def test_no_answer_once_the_association_was_aborted() -> None:
    h = Harness()
    h.assoc.is_aborted = True
    h.feed(_pdus(_store_rq(b"a"), C_STORE_RQ, CT_CONTEXT))
    assert len(h.target.calls) == 1 and h.sent == []


def test_command_parsing_and_encoding_round_trip() -> None:
    from dicom_node.fastpath import _Request

    request = _Request(CT_CONTEXT, 9, CTImageStorage, "1.2.3", CTImageStorage, ExplicitVRLittleEndian)
    encoded = encode_store_response(request, 0xA700, {0x0902: b"full"})
    elements = parse_command(encoded)
    assert int.from_bytes(elements[0x0000], "little") == len(encoded) - 12
    assert elements[0x0900] == (0xA700).to_bytes(2, "little")
    assert elements[0x1000] == b"1.2.3\0"
    with pytest.raises(ValueError):
        parse_command(b"\x08\x00\x16\x00\x02\x00\x00\x00ab")  # group 0008 is no command


def test_status_elements_of_a_plain_status_and_a_dataset() -> None:
    assert status_elements(0xB000) == (0xB000, {})
    ds = Dataset()
    ds.Status = 0x0110
    ds.ErrorID = 3
    status, extra = status_elements(ds)
    assert status == 0x0110 and extra == {0x0903: b"\x03\x00"}
