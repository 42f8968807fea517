"""C-STORE requests received without pynetdicom's per-message machinery.

A C-STORE through pynetdicom costs ~2 ms of Python before our handler runs: the PDU is read
4 KB at a time and decoded into PDV objects, the DIMSE message is assembled fragment by
fragment, its command set decoded into a pydicom Dataset, every UID of the primitive
validated, and the response built as a Dataset, encoded and fragmented again. On two cores
that alone caps an association near 500 instances/s, before any storage work.

:class:`StoreFastPath` sits in the DUL thread of an event-driven association
(:mod:`dicom_node.reactor`) and sees every P-DATA-TF PDU of the established association
first. It reads the command set itself (Implicit VR Little Endian, PS3.7 6.3.1); a C-STORE
request on an accepted storage context is handled right there: the data set fragments are
gathered into one buffer, the archive stores it (:class:`dicom_node.store.StoreSCP`, the
same code pynetdicom's handler calls) and the C-STORE response is encoded and sent from the
same thread. Every other message -- C-ECHO, C-FIND, C-MOVE, C-GET, C-CANCEL, responses to our
own sub-operations, N-services, anything unusual -- is handed to pynetdicom unchanged, as the
P-DATA-TF PDUs it would have read itself.

Protocol errors inside a C-STORE taken over here (fragments of another context, a command
fragment in the middle of the data set, PDV items that overrun their PDU) are treated as
pynetdicom treats an invalid PDU: the association is aborted (Evt19).
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

if TYPE_CHECKING:
    from dicom_node.store import StoreSCP
    from storage.ingest import Receiving

log = logging.getLogger("filmless.dicom.fastpath")

# PS3.7 E.1: Command Field values.
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
NO_DATASET = 0x0101

# PS3.8 9.3.5.1: message control header bits of a PDV.
_COMMAND = 0x01
_LAST = 0x02

_UID = re.compile(rb"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_ELEMENT = struct.Struct("<HHI")
_ITEM = struct.Struct(">IBB")
_PDU = struct.Struct(">BBI")

# Smallest peer Maximum Length Received a response is sent to in one PDV; a peer asking for
# less (the standard allows it) gets pynetdicom's own fragmenting path instead.
_MIN_PEER_PDU = 1024


class ProtocolError(Exception):
    """The P-DATA-TF stream breaks PS3.7/PS3.8: the association is aborted."""


@dataclass
class _Request:
    context_id: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    # The presentation context's.
    abstract_syntax: str
    transfer_syntax: str


def parse_command(data: bytes | bytearray | memoryview) -> dict[int, bytes]:
    """The elements of a command set (group 0000, Implicit VR Little Endian) by element number.

    Raises :class:`ValueError` for anything that is not a well-formed command set."""
    elements: dict[int, bytes] = {}
    view = memoryview(data)
    offset, end = 0, len(view)
    while offset < end:
        if end - offset < 8:
            raise ValueError("command set ends inside an element header")
        group, element, length = _ELEMENT.unpack_from(view, offset)
        offset += 8
        if group != 0x0000 or length > end - offset:
            raise ValueError("not a command set element")
        elements[element] = bytes(view[offset : offset + length])
        offset += length
    return elements


def _us(elements: dict[int, bytes], element: int) -> int | None:
    value = elements.get(element)
    return int.from_bytes(value, "little") if value is not None and len(value) == 2 else None


def _uid(elements: dict[int, bytes], element: int) -> str | None:
    value = elements.get(element)
    if value is None:
        return None
    value = value.rstrip(b"\0 ")
    return value.decode("ascii") if 0 < len(value) <= 64 and _UID.fullmatch(value) else None


def _encode_element(element: int, value: bytes, pad: bytes) -> bytes:
    if len(value) % 2:
        value += pad
    return _ELEMENT.pack(0x0000, element, len(value)) + value


def encode_store_response(request: _Request, status: int, extra: dict[int, bytes]) -> bytes:
    """The C-STORE-RSP command set (PS3.7 9.3.1.2), Implicit VR Little Endian.

    ``extra``: further command elements already encoded as values (Offending Element, Error
    Comment, Error ID)."""
    body = [
        _encode_element(0x0002, request.sop_class_uid.encode("ascii"), b"\0"),
        _encode_element(0x0100, C_STORE_RSP.to_bytes(2, "little"), b""),
        _encode_element(0x0120, request.message_id.to_bytes(2, "little"), b""),
        _encode_element(0x0800, NO_DATASET.to_bytes(2, "little"), b""),
        _encode_element(0x0900, status.to_bytes(2, "little"), b""),
    ]
    body += [_encode_element(element, value, b" ") for element, value in sorted(extra.items())]
    body.append(_encode_element(0x1000, request.sop_instance_uid.encode("ascii"), b"\0"))
    rest = b"".join(body)
    return _encode_element(0x0000, len(rest).to_bytes(4, "little"), b"") + rest


def p_data_tf(items: Sequence[tuple[int, int, bytes | memoryview]]) -> bytes:
    """A P-DATA-TF PDU of the given (context ID, message control header, data) PDVs."""
    body = b"".join(_ITEM.pack(len(data) + 2, context_id, header) + bytes(data) for context_id, header, data in items)
    return _PDU.pack(0x04, 0, len(body)) + body


def status_elements(result: Any) -> tuple[int, dict[int, bytes]]:
    """The status and the optional elements of a handler's answer (an int or a Dataset)."""
    if isinstance(result, int):
        return result, {}
    status = int(result.Status)
    extra: dict[int, bytes] = {}
    comment = result.get("ErrorComment")
    if comment:
        extra[0x0902] = str(comment).encode("ascii", "replace")[:64]
    offending = result.get("OffendingElement")
    if offending:
        tags = list(offending) if isinstance(offending, Sequence) else [offending]
        extra[0x0901] = b"".join(struct.pack("<HH", int(t) >> 16, int(t) & 0xFFFF) for t in tags)
    error_id = result.get("ErrorID")
    if error_id is not None:
        extra[0x0903] = int(error_id).to_bytes(2, "little")
    return status, extra


class StoreFastPath:
    """The C-STORE requests of one association, taken over from pynetdicom.

    ``forward(pdu)`` hands one P-DATA-TF PDU to pynetdicom (its DUL decodes and processes
    it as if just read); ``send(pdu)`` sends a PDU to the peer."""

    def __init__(
        self,
        assoc: Any,
        target: StoreSCP,
        forward: Callable[[bytes], None],
        send: Callable[[bytes], None],
    ) -> None:
        self.assoc = assoc
        self.target = target
        self.forward = forward
        self.send = send
        peer_max = assoc.requestor.maximum_length or 0
        # The whole association goes to pynetdicom when the peer's PDUs are too small for
        # our response.
        self.enabled = not (0 < peer_max < _MIN_PEER_PDU)
        # The message being received: its command fragments (kept to forward them if the
        # message is not ours), then for a C-STORE taken over, the request and data set.
        self._command: list[tuple[int, int, bytes | memoryview]] = []
        self._passing = False  # forwarding the data set of a message left to pynetdicom
        self._request: _Request | None = None
        self._stream: Receiving | None = None  # its object, written as the fragments come
        self._dataset: list[memoryview] = []
        self._size = 0
        self._too_large = False

    # --- PDUs in ----------------------------------------------------------------------------
    def feed(self, body: bytearray) -> None:
        """Process the variable field of one P-DATA-TF PDU."""
        view = memoryview(body)
        forwarded: list[tuple[int, int, bytes | memoryview]] = []
        offset, end = 0, len(view)
        while offset < end:
            if end - offset < 6:
                raise ProtocolError("a PDV item ends inside its header")
            length, context_id, header = _ITEM.unpack_from(view, offset)
            if length < 2 or length > end - offset - 4:
                raise ProtocolError(f"a PDV item of length {length} overruns its PDU")
            data = view[offset + 6 : offset + 4 + length]
            offset += 4 + length
            if self._passing or not self.enabled:
                forwarded.append((context_id, header, data))
                # Forwarding a message's data set until its last fragment.
                self._passing = self.enabled and not (not header & _COMMAND and header & _LAST)
                continue
            if forwarded:
                self.forward(p_data_tf(forwarded))
                forwarded = []
            if self._request is not None:
                self._dataset_fragment(context_id, header, data)
            elif header & _COMMAND:
                self._command.append((context_id, header, bytes(data)))
                if header & _LAST:
                    forwarded = self._command_complete()
            else:
                # A data set fragment before any command: not ours to judge.
                forwarded.append((context_id, header, data))
        if forwarded:
            self.forward(p_data_tf(forwarded))

    def _command_complete(self) -> list[tuple[int, int, bytes | memoryview]]:
        """Decide on a complete command set: take the C-STORE over, or return the fragments
        to forward (and forward the rest of the message too)."""
        fragments, self._command = self._command, []
        context_id = fragments[0][0]
        request = None
        has_dataset = True
        if all(f[0] == context_id for f in fragments):
            try:
                elements = parse_command(b"".join(f[2] for f in fragments))
            except ValueError:
                elements = None
            if elements is not None:
                has_dataset = _us(elements, 0x0800) != NO_DATASET
                request = self._store_request(context_id, elements, has_dataset)
        if request is None:
            self._passing = has_dataset
            return fragments
        self._request = request
        self._stream = self.target.receiving(
            self.assoc, request.abstract_syntax, request.transfer_syntax, request.sop_class_uid, request.sop_instance_uid
        )
        return []

    def _store_request(self, context_id: int, elements: dict[int, bytes], has_dataset: bool) -> _Request | None:
        """The C-STORE request to take over, or None to leave the message to pynetdicom."""
        if _us(elements, 0x0100) != C_STORE_RQ or not has_dataset:
            return None
        message_id = _us(elements, 0x0110)
        sop_class_uid = _uid(elements, 0x0002)
        sop_instance_uid = _uid(elements, 0x1000)
        if message_id is None or sop_class_uid is None or sop_instance_uid is None:
            return None  # pynetdicom has its own answer to a malformed request
        context = self.assoc._accepted_cx.get(context_id)
        if context is None or not context.as_scp or self.assoc._sent_release:
            return None
        if uid_to_service_class(str(context.abstract_syntax)) is not StorageServiceClass:
            return None
        if str(context.abstract_syntax) in getattr(self.assoc.acceptor, "accepted_common_extended", {}):
            return None  # SOP Class Common Extended Negotiation: pynetdicom maps the service
        return _Request(
            context_id,
            message_id,
            sop_class_uid,
            sop_instance_uid,
            str(context.abstract_syntax),
            str(context.transfer_syntax[0]),
        )

    def _dataset_fragment(self, context_id: int, header: int, data: memoryview) -> None:
        request = self._request
        assert request is not None
        if header & _COMMAND or context_id != request.context_id:
            raise ProtocolError("a C-STORE data set is interrupted by another fragment")
        self._size += len(data)
        if self._size > self.target.max_object_size:
            # Counted, not kept: the request is refused once it is complete.
            self._too_large = True
            self._dataset = []
            self._drop_stream()
        elif not self._too_large:
            # A view into its PDU's own buffer (each PDU is read into a new one): the data
            # set is copied once, when it is complete.
            self._dataset.append(data)
            if self._stream is not None:
                self._stream.add(data)
        if header & _LAST:
            self._complete()

    def _drop_stream(self) -> None:
        if self._stream is not None:
            self._stream.abandon()
            self._stream = None

    def close(self) -> None:
        """The association ended: drop the object of a C-STORE cut off mid-data set."""
        self._drop_stream()

    # --- the store and its response ----------------------------------------------------------
    def _complete(self) -> None:
        request = self._request
        assert request is not None
        dataset = None if self._too_large else b"".join(self._dataset)
        size, stream = self._size, self._stream
        self._request, self._stream, self._dataset, self._size, self._too_large = None, None, [], 0, False
        result = self.target.store(
            self.assoc,
            request.abstract_syntax,
            request.transfer_syntax,
            request.sop_class_uid,
            request.sop_instance_uid,
            dataset,
            size,
            stream,
        )
        # Not ``is_established``: the association thread may not have set it yet when the
        # first request of an association is answered (the DUL thread sent the A-ASSOCIATE-AC).
        if self.assoc.is_aborted or self.assoc.dul._kill_thread:
            return  # aborted meanwhile: there is no one to answer
        status, extra = status_elements(result)
        command = encode_store_response(request, status, extra)
        self.send(p_data_tf([(request.context_id, _COMMAND | _LAST, command)]))
