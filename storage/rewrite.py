"""Byte-preserving dataset rewriting: implicit VR to explicit VR, and swapping Pixel Data.

Compression may change only the pixel encoding and the file meta (the archive's invariant), so
the stored object is built from the received bytes, not re-encoded by a DICOM library (pydicom
decodes and re-encodes text on the way, losing padding and odd encodings). For an explicit VR
little endian dataset everything except the Pixel Data element is copied verbatim; for an
implicit VR one each element gets the explicit header of its dictionary VR (PS3.5 7.1.2) in
front of its unchanged value bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from storage.errors import MalformedDataset
from storage.part10 import ITEM as _ITEM
from storage.part10 import ITEM_DELIMITER as _ITEM_DELIM
from storage.part10 import LONG_VRS
from storage.part10 import SEQUENCE_DELIMITER as _SEQ_DELIM
from storage.part10 import UNDEFINED_LENGTH as _UNDEFINED
from storage.part10 import inflate

_LONG_VRS = {vr.decode("ascii") for vr in LONG_VRS}
PIXEL_DATA = (0x7FE0, 0x0010)


@dataclass(frozen=True)
class Span:
    """Where a top-level element sits in a dataset: header start, value start/length, end."""

    start: int
    value_start: int
    length: int
    end: int


def explicit_little_endian(dataset: bytes, transfer_syntax_uid: str) -> bytes:
    """The dataset as explicit VR little endian with every value's bytes unchanged."""
    if transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
        return inflate(dataset)
    if transfer_syntax_uid == ImplicitVRLittleEndian:
        pixel_representation = _implicit_us(dataset, (0x0028, 0x0103)) or 0
        out, _pos = _convert(dataset, 0, len(dataset), None, pixel_representation)
        return out
    if transfer_syntax_uid == ExplicitVRLittleEndian:
        return dataset
    raise MalformedDataset(f"cannot rewrite a dataset in {transfer_syntax_uid}")


def top_level(dataset: bytes, tag: tuple[int, int]) -> Span | None:
    """Find a top-level element of an explicit VR little endian dataset."""
    pos, end = 0, len(dataset)
    while pos + 8 <= end:
        group, elem = struct.unpack_from("<HH", dataset, pos)
        vr = dataset[pos + 4 : pos + 6].decode("ascii", "replace")
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", dataset, pos + 8)
            value_start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", dataset, pos + 6)
            value_start = pos + 8
        if length == _UNDEFINED:
            value_end = _skip_undefined(dataset, value_start, end, (group, elem) == PIXEL_DATA, vr == "UN")
        else:
            value_end = value_start + length
        if (group, elem) == tag:
            return Span(pos, value_start, length, value_end)
        if (group, elem) > tag:
            return None
        pos = value_end
    return None


def encapsulated_pixel_data(frames: list[bytes]) -> bytes:
    """An encapsulated Pixel Data element (PS3.5 A.4): Basic Offset Table, one fragment a frame."""
    offsets = b""
    if len(frames) > 1:
        position = 0
        table = []
        for frame in frames:
            table.append(position)
            position += 8 + len(frame)
        offsets = struct.pack(f"<{len(table)}I", *table)
    parts = [
        struct.pack("<HH", *PIXEL_DATA) + b"OB\x00\x00" + struct.pack("<I", _UNDEFINED),
        struct.pack("<HHI", *_ITEM, len(offsets)) + offsets,
    ]
    for frame in frames:
        parts.append(struct.pack("<HHI", *_ITEM, len(frame)) + frame)
    parts.append(struct.pack("<HHI", *_SEQ_DELIM, 0))
    return b"".join(parts)


def native_pixel_data(vr: bytes, value: bytes) -> bytes:
    """A native Pixel Data element (explicit VR little endian; ``vr`` is OB or OW)."""
    return struct.pack("<HH", *PIXEL_DATA) + vr + b"\x00\x00" + struct.pack("<I", len(value)) + value


def replace_pixel_data(dataset: bytes, span: Span, element: bytes) -> bytes:
    """Put ``element`` in place of the Pixel Data at ``span``; a retired (7FE0,0000) group
    length, which described the old element, is dropped."""
    out = dataset[: span.start] + element + dataset[span.end :]
    group_length = top_level(out, (0x7FE0, 0x0000))
    if group_length is not None:
        out = out[: group_length.start] + out[group_length.end :]
    return out


def set_us(dataset: bytes, tag: tuple[int, int], value: int) -> bytes:
    """Set a top-level US value in place (e.g. Planar Configuration)."""
    span = top_level(dataset, tag)
    if span is None or span.length != 2:
        return dataset
    return dataset[: span.value_start] + struct.pack("<H", value) + dataset[span.value_start + 2 :]


# --- implicit -> explicit ------------------------------------------------------------------------
def _implicit_us(data: bytes, tag: tuple[int, int]) -> int | None:
    pos = 0
    while pos + 8 <= len(data):
        group, elem, length = struct.unpack_from("<HHI", data, pos)
        if (group, elem) == tag and length == 2:
            return int(struct.unpack_from("<H", data, pos + 8)[0])
        if length == _UNDEFINED or (group, elem) > tag:
            return None
        pos += 8 + length
    return None


def _vr_for(tag: tuple[int, int], length: int, creators: dict[tuple[int, int], str], pixel_rep: int) -> str:
    group, elem = tag
    if elem == 0x0000:
        return "UL"
    if group % 2:
        if 0x0010 <= elem <= 0x00FF:
            return "LO"  # private creator (PS3.5 7.8.1)
        creator = creators.get((group, elem >> 8))
        if creator is None:
            return "UN"
        try:
            vr = private_dictionary_VR((group << 16) | elem, creator)
        except KeyError:
            return "UN"
    else:
        try:
            vr = dictionary_VR((group << 16) | elem)
        except KeyError:
            return "UN"
    if " or " in vr:
        options = vr.split(" or ")
        if "OW" in options and (length > 2 or length == _UNDEFINED):
            vr = "OW"
        elif "US" in options or "SS" in options:
            vr = "SS" if pixel_rep == 1 and "SS" in options else "US"
        else:
            vr = options[0]
    if vr not in _LONG_VRS and length != _UNDEFINED and length > 0xFFFF:
        return "UN"  # a value too long for a 2-byte length field keeps its bytes as UN
    return vr


def _header(tag: tuple[int, int], vr: str, length: int) -> bytes:
    if vr in _LONG_VRS:
        return struct.pack("<HH", *tag) + vr.encode() + b"\x00\x00" + struct.pack("<I", length)
    return struct.pack("<HH", *tag) + vr.encode() + struct.pack("<H", length)


def _convert(
    data: bytes, pos: int, end: int, until: tuple[int, int] | None, pixel_rep: int
) -> tuple[bytes, int]:
    out: list[bytes] = []
    creators: dict[tuple[int, int], str] = {}
    while pos < end:
        if pos + 8 > end:
            raise MalformedDataset(f"element header cut off at offset {pos}")
        group, elem, length = struct.unpack_from("<HHI", data, pos)
        tag = (group, elem)
        pos += 8
        if group == 0xFFFE:
            if until is not None and tag == until:
                return b"".join(out), pos
            raise MalformedDataset(f"unexpected delimiter at offset {pos - 8}")
        if elem == 0x0000 and length == 4:
            # Retired group lengths (PS3.5 7.2) would be wrong with longer explicit headers.
            pos += 4
            continue
        vr = _vr_for(tag, length, creators, pixel_rep)
        if length == _UNDEFINED:
            if tag == PIXEL_DATA:
                raise MalformedDataset("encapsulated pixel data in an implicit VR dataset")
            items, pos = _convert_items(data, pos, end, pixel_rep)
            out.append(_header(tag, "SQ", _UNDEFINED) + items + struct.pack("<HHI", *_SEQ_DELIM, 0))
            continue
        if pos + length > end:
            raise MalformedDataset(f"element ({group:04X},{elem:04X}) is cut short")
        value = data[pos : pos + length]
        pos += length
        if group % 2 and 0x0010 <= elem <= 0x00FF:
            creators[(group, elem)] = value.decode("latin-1").strip(" \x00")
        if vr == "SQ":
            items, _ = _convert_items(value, 0, len(value), pixel_rep, defined=True)
            out.append(_header(tag, "SQ", len(items)) + items)
        else:
            out.append(_header(tag, vr, length) + value)
    if until is not None:
        raise MalformedDataset("an undefined-length item is not closed")
    return b"".join(out), pos


def _convert_items(data: bytes, pos: int, end: int, pixel_rep: int, *, defined: bool = False) -> tuple[bytes, int]:
    out: list[bytes] = []
    while True:
        if pos >= end:
            if defined:
                return b"".join(out), pos
            raise MalformedDataset("a sequence is not closed by its delimiter")
        group, elem, length = struct.unpack_from("<HHI", data, pos)
        pos += 8
        if (group, elem) == _SEQ_DELIM:
            return b"".join(out), pos
        if (group, elem) != _ITEM:
            raise MalformedDataset(f"expected a sequence item at offset {pos - 8}")
        if length == _UNDEFINED:
            body, pos = _convert(data, pos, end, _ITEM_DELIM, pixel_rep)
            out.append(struct.pack("<HHI", *_ITEM, _UNDEFINED) + body + struct.pack("<HHI", *_ITEM_DELIM, 0))
        else:
            body, _ = _convert(data[pos : pos + length], 0, length, None, pixel_rep)
            pos += length
            out.append(struct.pack("<HHI", *_ITEM, len(body)) + body)


def _skip_undefined(data: bytes, pos: int, end: int, fragments: bool, implicit_inside: bool) -> int:
    """Skip an undefined-length value of an explicit VR LE dataset; returns its end."""
    depth = 0
    while pos + 8 <= end:
        group, elem = struct.unpack_from("<HH", data, pos)
        (length,) = struct.unpack_from("<I", data, pos + 4)
        if (group, elem) == _SEQ_DELIM and depth == 0:
            return pos + 8
        if fragments:
            pos += 8 + length
            continue
        if (group, elem) in (_ITEM, _ITEM_DELIM, _SEQ_DELIM):
            if (group, elem) == _ITEM and length != _UNDEFINED:
                pos += 8 + length
            else:
                pos += 8
            continue
        # an element inside an undefined-length item
        if implicit_inside:
            header, length = 8, length
        else:
            vr = data[pos + 4 : pos + 6].decode("ascii", "replace")
            if vr in _LONG_VRS:
                header, length = 12, struct.unpack_from("<I", data, pos + 8)[0]
            else:
                header, length = 8, struct.unpack_from("<H", data, pos + 6)[0]
        if length == _UNDEFINED:
            pos = _skip_undefined(data, pos + header, end, False, implicit_inside)
        else:
            pos += header + length
    raise MalformedDataset("an undefined-length value is not closed")
