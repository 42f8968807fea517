"""DICOM Part 10 framing: splitting files, building file meta, checking a dataset is whole.

Everything here works on bytes, below pydicom, because two things need exactness pydicom does
not give: the stored object must keep the received dataset bytes unchanged, and a truncated
dataset must be recognised (pydicom reads a cut-off file silently as a shorter dataset).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from storage.errors import MalformedDataset, NotDicom

IMPLEMENTATION_CLASS_UID = "2.25.147700958428791829120096936184081408001"  # a UUID-derived UID (PS3.5 B.2)
IMPLEMENTATION_VERSION_NAME = "FILMLESS_010"

_PREAMBLE = b"\x00" * 128 + b"DICM"
# VRs whose explicit encoding has a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = _LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_ALL_VRS = _LONG_VRS | {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
    b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
}
UNDEFINED_LENGTH = _UNDEFINED = 0xFFFFFFFF
ITEM = _ITEM = (0xFFFE, 0xE000)
ITEM_DELIMITER = _ITEM_DELIM = (0xFFFE, 0xE00D)
SEQUENCE_DELIMITER = _SEQ_DELIM = (0xFFFE, 0xE0DD)


@dataclass(frozen=True)
class Part10:
    """A split Part 10 object: its transfer syntax and the dataset bytes after the meta."""

    transfer_syntax_uid: str
    dataset: bytes
    source_aet: str | None = None


def split(data: bytes) -> Part10:
    """Split a file's bytes into transfer syntax and dataset bytes.

    Accepts Part 10 files (preamble + ``DICM`` + group 2), files with the meta but no
    preamble, and bare datasets (implicit or explicit VR little endian) as old systems wrote.
    """
    if len(data) >= 132 and data[128:132] == b"DICM":
        return _split_meta(data, 132)
    if len(data) >= 8 and data[0:2] == b"\x02\x00" and data[4:6] in _ALL_VRS:
        return _split_meta(data, 0)
    if len(data) >= 8 and data[0:2] in (b"\x08\x00", b"\x10\x00"):
        explicit = data[4:6] in _ALL_VRS
        ts = ExplicitVRLittleEndian if explicit else ImplicitVRLittleEndian
        return Part10(str(ts), data)
    raise NotDicom("not a DICOM file (no DICM prefix and no recognisable dataset start)")


def _split_meta(data: bytes, offset: int) -> Part10:
    ts: str | None = None
    source_aet: str | None = None
    pos = offset
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(data):
                raise MalformedDataset("file meta information is truncated")
            (length,) = struct.unpack_from("<I", data, pos + 8)
            header = 12
        elif vr in _ALL_VRS:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            header = 8
        else:
            raise MalformedDataset("file meta information is not explicit VR little endian")
        value = data[pos + header : pos + header + length]
        if len(value) < length:
            raise MalformedDataset("file meta information is truncated")
        if elem == 0x0010:
            ts = value.rstrip(b"\x00 ").decode("ascii", "replace")
        elif elem == 0x0016:
            source_aet = value.strip(b"\x00 ").decode("ascii", "replace") or None
        pos += header + length
    if not ts:
        raise MalformedDataset("file meta information has no Transfer Syntax UID")
    return Part10(ts, data[pos:], source_aet)


def _meta_element(group_elem: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB") else b" "
    tag = struct.pack("<HH", group_elem >> 16, group_elem & 0xFFFF)
    if vr in _LONG_VRS:
        return tag + vr + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return tag + vr + struct.pack("<H", len(value)) + value


def build_file(
    dataset: bytes,
    *,
    transfer_syntax_uid: str,
    sop_class_uid: str,
    sop_instance_uid: str,
    source_aet: str | None = None,
) -> bytes:
    """Preamble + File Meta Information (PS3.10 7.1, explicit VR little endian) + the
    dataset bytes unchanged."""
    head = file_meta(
        transfer_syntax_uid=transfer_syntax_uid,
        sop_class_uid=sop_class_uid,
        sop_instance_uid=sop_instance_uid,
        source_aet=source_aet,
    )
    return b"".join((head, dataset))


def file_meta(
    *,
    transfer_syntax_uid: str,
    sop_class_uid: str,
    sop_instance_uid: str,
    source_aet: str | None = None,
) -> bytes:
    """What :func:`build_file` puts before the dataset: the preamble and the File Meta
    Information (for a file written as its dataset arrives)."""
    elements = [
        _meta_element(0x00020001, b"OB", b"\x00\x01"),
        _meta_element(0x00020002, b"UI", sop_class_uid.encode("ascii")),
        _meta_element(0x00020003, b"UI", sop_instance_uid.encode("ascii")),
        _meta_element(0x00020010, b"UI", transfer_syntax_uid.encode("ascii")),
        _meta_element(0x00020012, b"UI", IMPLEMENTATION_CLASS_UID.encode("ascii")),
        _meta_element(0x00020013, b"SH", IMPLEMENTATION_VERSION_NAME.encode("ascii")),
    ]
    if source_aet:
        elements.append(_meta_element(0x00020016, b"AE", source_aet[:16].encode("ascii", "replace")))
    body = b"".join(elements)
    group_length = _meta_element(0x00020000, b"UL", struct.pack("<I", len(body)))
    return b"".join((_PREAMBLE, group_length, body))


def encoding_of(transfer_syntax_uid: str) -> tuple[bool, bool]:
    """(implicit VR, little endian) of the dataset encoding of a transfer syntax."""
    if transfer_syntax_uid == ImplicitVRLittleEndian:
        return True, True
    if transfer_syntax_uid == ExplicitVRBigEndian:
        return False, False
    return False, True


def inflate(dataset: bytes) -> bytes:
    """The raw deflate stream of Deflated Explicit VR Little Endian (PS3.5 A.5), inflated."""
    try:
        return zlib.decompress(dataset, -zlib.MAX_WBITS)
    except zlib.error as exc:
        raise MalformedDataset(f"deflated dataset cannot be inflated: {exc}") from exc


@dataclass(frozen=True)
class Scanned:
    """A dataset whose structure was walked: whole, with its top-level elements located.

    ``data`` is the dataset as parsed (inflated if it was deflated); ``elements`` maps each
    top-level tag to ``(vr, header offset, value offset, value end)`` (``vr`` is ``b""`` in
    implicit VR); ``implicit``/``little`` the encoding actually found."""

    data: bytes
    implicit: bool
    little: bool
    has_pixels: bool
    elements: dict[int, tuple[bytes, int, int, int]]


def check_complete(dataset: bytes, transfer_syntax_uid: str) -> bool:
    """Walk the element structure and raise :class:`MalformedDataset` if it is cut short.

    Every defined length must fit in the bytes that remain, every undefined-length sequence,
    item and encapsulated pixel data must be closed by its delimiter (PS3.5 7.5).
    Returns whether the dataset has top-level Pixel Data.
    """
    return scan(dataset, transfer_syntax_uid).has_pixels


def scan(dataset: bytes, transfer_syntax_uid: str) -> Scanned:
    """:func:`check_complete`, keeping where each top-level element lies (one pass serves
    the completeness check and the reading of the index attributes)."""
    if transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
        dataset = inflate(dataset)
    implicit, little = encoding_of(transfer_syntax_uid)
    if not dataset:
        raise MalformedDataset("the dataset is empty")
    top: dict[int, tuple[bytes, int, int, int]] = {}
    try:
        end = _walk(dataset, 0, len(dataset), implicit, little, until=None, top=top)
    except MalformedDataset:
        if implicit or not little or dataset[4:6] in _ALL_VRS:
            raise
        # Some writers put an implicit VR dataset behind an explicit transfer syntax;
        # pydicom reads those by looking, and so do we.
        implicit, top = True, {}
        end = _walk(dataset, 0, len(dataset), True, little, until=None, top=top)
    if end != len(dataset) and dataset[end:].strip(b"\x00"):
        raise MalformedDataset(f"unparseable bytes at offset {end} of the dataset")
    return Scanned(dataset, implicit, little, _PIXEL_DATA in top, top)


_PIXEL_DATA = 0x7FE00010


def sequence_items(scanned: Scanned, tag: int) -> list[dict[int, tuple[bytes, int, int, int]]]:
    """The items of the top-level sequence ``tag`` of a scanned dataset, each as an element
    table like :attr:`Scanned.elements` (offsets into ``scanned.data``); [] if absent."""
    found = scanned.elements.get(tag)
    if found is None:
        return []
    data, implicit, little = scanned.data, scanned.implicit, scanned.little
    fmt = "<" if little else ">"
    pos, end = found[2], found[3]
    items: list[dict[int, tuple[bytes, int, int, int]]] = []
    while pos + 8 <= end:
        group, elem = struct.unpack_from(fmt + "HH", data, pos)
        (length,) = struct.unpack_from(fmt + "I", data, pos + 4)
        pos += 8
        if (group, elem) != _ITEM:
            break  # the sequence delimiter (the walk checked the structure)
        item: dict[int, tuple[bytes, int, int, int]] = {}
        if length == _UNDEFINED:
            pos = _walk(data, pos, end, implicit, little, until=_ITEM_DELIM, top=item)
        else:
            _walk(data, pos, pos + length, implicit, little, until=None, top=item)
            pos += length
        items.append(item)
    return items


def _walk(
    data: bytes,
    pos: int,
    end: int,
    implicit: bool,
    little: bool,
    until: tuple[int, int] | None,
    top: dict[int, tuple[bytes, int, int, int]] | None = None,
) -> int:
    """Walk elements from ``pos``; stop at ``end`` or after the ``until`` delimiter.

    ``top`` (passed for the top level) receives each element's
    ``(vr, header offset, value offset, value end)``."""
    fmt = "<" if little else ">"
    header_fmt = fmt + "HH"
    long_fmt, short_fmt = fmt + "I", fmt + "H"
    unpack_from = struct.unpack_from
    while pos < end:
        if pos + 8 > end:
            if until is None and not data[pos:end].strip(b"\x00"):
                return end  # trailing padding
            raise MalformedDataset(f"element header cut off at offset {pos}")
        start = pos
        group, elem = unpack_from(header_fmt, data, pos)
        tag = (group, elem)
        if group == 0xFFFE:
            (length,) = unpack_from(long_fmt, data, pos + 4)
            pos += 8
            if until is not None and tag == until:
                return pos
            raise MalformedDataset(f"unexpected delimiter ({group:04X},{elem:04X}) at offset {pos - 8}")
        vr = b""
        if implicit:
            (length,) = unpack_from(long_fmt, data, pos + 4)
            pos += 8
        else:
            vr = data[pos + 4 : pos + 6]
            if vr in _LONG_VRS or vr not in _ALL_VRS:
                if vr not in _ALL_VRS:
                    raise MalformedDataset(
                        f"invalid VR at offset {pos} in tag ({group:04X},{elem:04X})"
                    )
                if pos + 12 > end:
                    raise MalformedDataset(f"element header cut off at offset {pos}")
                (length,) = unpack_from(long_fmt, data, pos + 8)
                pos += 12
            else:
                (length,) = unpack_from(short_fmt, data, pos + 6)
                pos += 8
        value_at = pos
        if length == _UNDEFINED:
            if tag == (0x7FE0, 0x0010):
                pos = _walk_fragments(data, pos, end, fmt)
            else:
                # A sequence; an undefined-length UN holds one in implicit VR (PS3.5 6.2.2).
                pos = _walk_items(data, pos, end, implicit or vr == b"UN", little)
        else:
            if pos + length > end:
                raise MalformedDataset(
                    f"element ({group:04X},{elem:04X}) is cut short: declared {length} bytes, "
                    f"{end - pos} remain"
                )
            if vr == b"SQ" or (implicit and _is_known_sequence(tag)):
                _walk_items(data, pos, pos + length, implicit, little, defined=True)
            pos += length
        if top is not None:
            top[(group << 16) | elem] = (vr, start, value_at, pos)
    if until is not None:
        raise MalformedDataset("an undefined-length sequence or item is not closed")
    return pos


def _walk_items(
    data: bytes, pos: int, end: int, implicit: bool, little: bool, *, defined: bool = False
) -> int:
    fmt = "<" if little else ">"
    while True:
        if pos >= end:
            if defined:
                return pos
            raise MalformedDataset("a sequence is not closed by its delimiter")
        if pos + 8 > end:
            raise MalformedDataset(f"item header cut off at offset {pos}")
        group, elem = struct.unpack_from(fmt + "HH", data, pos)
        (length,) = struct.unpack_from(fmt + "I", data, pos + 4)
        pos += 8
        if (group, elem) == _SEQ_DELIM:
            return pos
        if (group, elem) != _ITEM:
            raise MalformedDataset(f"expected a sequence item at offset {pos - 8}")
        if length == _UNDEFINED:
            pos = _walk(data, pos, end, implicit, little, until=_ITEM_DELIM)
        else:
            if pos + length > end:
                raise MalformedDataset(f"sequence item at offset {pos - 8} is cut short")
            _walk(data, pos, pos + length, implicit, little, until=None)
            pos += length


def _walk_fragments(data: bytes, pos: int, end: int, fmt: str) -> int:
    while True:
        if pos + 8 > end:
            raise MalformedDataset("encapsulated pixel data is cut short")
        group, elem = struct.unpack_from(fmt + "HH", data, pos)
        (length,) = struct.unpack_from(fmt + "I", data, pos + 4)
        pos += 8
        if (group, elem) == _SEQ_DELIM:
            return pos
        if (group, elem) != _ITEM or length == _UNDEFINED:
            raise MalformedDataset(f"malformed pixel data fragment at offset {pos - 8}")
        if pos + length > end:
            raise MalformedDataset("a pixel data fragment is cut short")
        pos += length


def _is_known_sequence(tag: tuple[int, int]) -> bool:
    from pydicom.datadict import dictionary_VR

    try:
        return bool(dictionary_VR((tag[0] << 16) | tag[1]) == "SQ")
    except KeyError:
        return False
