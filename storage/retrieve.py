"""Reading stored instances back out, in a transfer syntax the caller accepts.

C-MOVE, C-GET (and WADO later) all come here: :class:`Retriever` resolves what a request
names into stored instances, reads each object (checking its sha256 against the index, so a
corrupt object is reported, never sent), and, when the receiver does not accept the stored
transfer syntax, decodes the pixels to native explicit VR little endian.

Objects filmless compressed itself (JPEG-LS or JPEG 2000 lossless) decode through the same
codecs that verified them at compression time, with the bits above Bits Stored restored (sign
extension for signed pixels), so the pixel bytes are identical to what the modality sent.
Objects received compressed by the sender decode through pydicom's pixel handlers.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.filereader import read_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    UID,
)

from storage import part10, rewrite
from storage.codecs import _ENCODERS, PIXEL_DATA, UNCOMPRESSED, PixelLayout
from storage.errors import ArchiveError, CodecError, ObjectStoreError
from storage.index import Index, RetrievableInstance
from storage.objects import ObjectStore

log = logging.getLogger("filmless.retrieve")

# What we convert to when the receiver does not take the stored syntax, best first. Big
# endian is left out: converting raw little-endian values would need every value swapped.
NATIVE_TARGETS = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))


class CorruptObject(ObjectStoreError):
    """The stored object's bytes do not match the sha256 the index recorded."""


class NoAcceptableTransferSyntax(ArchiveError):
    """The receiver accepts none of the transfer syntaxes this instance can be sent in."""


@dataclass(frozen=True)
class Outgoing:
    """An instance ready to send: the dataset (file meta included) and its syntax."""

    dataset: Dataset
    transfer_syntax_uid: str
    transcoded: bool


class Retriever:
    """Resolves and reads instances for the retrieve services."""

    def __init__(self, index: Index, store: ObjectStore) -> None:
        self.index = index
        self.store = store

    def locate(self, **keys: Any) -> list[RetrievableInstance]:
        """The current instances under the given entities: the keyword arguments of
        :meth:`storage.index.Index.retrievable` (patient_id, study_uids, series_uids,
        sop_instance_uids, limit)."""
        return self.index.retrievable(**keys)

    def read(self, item: RetrievableInstance) -> bytes:
        """The stored object's bytes, checked against the index's sha256."""
        data = self.store.read(item.object_key)
        if hashlib.sha256(data).hexdigest() != item.object_sha256:
            raise CorruptObject(f"object of {item.sop_instance_uid} does not match its sha256; not sent")
        return data

    def outgoing(self, item: RetrievableInstance, accepted: Iterable[str]) -> Outgoing:
        """The instance as a dataset in a transfer syntax from ``accepted``.

        The stored syntax is sent as it is when accepted; otherwise the pixels are decoded to
        native little endian (pynetdicom converts explicit to implicit VR when needed)."""
        accepted = [str(ts) for ts in accepted]
        stored_ts = item.stored_transfer_syntax
        data = self.read(item)
        if stored_ts in accepted:
            return Outgoing(_dataset(data), stored_ts, False)
        if not any(ts in NATIVE_TARGETS for ts in accepted):
            raise NoAcceptableTransferSyntax(
                f"{item.sop_instance_uid} is stored as {UID(stored_ts).name}; the receiver accepts "
                f"{', '.join(UID(ts).name for ts in accepted) or 'nothing'} for its SOP class"
            )
        if stored_ts in UNCOMPRESSED:
            ds = _dataset(data)
            if stored_ts in (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian):
                ds = dcmread(BytesIO(_reencoded_native(data)))
            return Outgoing(ds, str(ds.file_meta.TransferSyntaxUID), stored_ts != ds.file_meta.TransferSyntaxUID)
        return Outgoing(_dataset(decode_to_native(data)), str(ExplicitVRLittleEndian), True)


def _dataset(data: bytes) -> Dataset:
    return dcmread(BytesIO(data))


def _reencoded_native(data: bytes) -> bytes:
    """A deflated or big endian object as explicit VR little endian (pydicom converts)."""
    ds = dcmread(BytesIO(data))
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True, little_endian=True, implicit_vr=False)
    return out.getvalue()


def decode_to_native(data: bytes) -> bytes:
    """A Part 10 object with encapsulated pixel data as explicit VR little endian with native
    pixel data; every other attribute keeps its value bytes."""
    split = part10.split(data)
    ts = split.transfer_syntax_uid
    if ts in UNCOMPRESSED:
        return data
    if ts not in _ENCODERS:
        return _decode_with_pydicom(data)
    dataset = split.dataset
    header = read_dataset(BytesIO(dataset), False, True, stop_when=lambda tag, vr, length: tag == PIXEL_DATA)
    span = rewrite.top_level(dataset, rewrite.PIXEL_DATA)
    if span is None or span.length != part10.UNDEFINED_LENGTH:
        raise CodecError("no encapsulated pixel data to decode")
    layout = PixelLayout.of(header)
    _encode, decode = _ENCODERS[ts]
    encapsulated = dataset[span.value_start : span.end]
    frames = []
    for index, fragment in enumerate(generate_frames(encapsulated, number_of_frames=layout.number_of_frames)):
        try:
            raw = decode(fragment, layout)
        except Exception as exc:  # noqa: BLE001 - codec libraries raise many types
            raise CodecError(f"frame {index + 1}: cannot decode: {exc}") from exc
        if len(raw) != layout.frame_bytes:
            raise CodecError(f"frame {index + 1}: decoded {len(raw)} bytes, expected {layout.frame_bytes}")
        frames.append(_restore_high_bits(raw, layout))
    pixels = b"".join(frames)
    if len(pixels) % 2:
        pixels += b"\x00"
    vr = b"OW" if layout.bits_allocated > 8 else b"OB"
    native = rewrite.replace_pixel_data(dataset, span, rewrite.native_pixel_data(vr, pixels))
    return part10.build_file(
        native,
        transfer_syntax_uid=str(ExplicitVRLittleEndian),
        sop_class_uid=str(header.SOPClassUID),
        sop_instance_uid=str(header.SOPInstanceUID),
        source_aet=split.source_aet,
    )


def _restore_high_bits(raw: bytes, layout: PixelLayout) -> bytes:
    """Codecs return samples masked to Bits Stored; signed pixels get their sign extension
    back (the compressor only encoded images whose high bits were exactly that)."""
    if layout.pixel_representation == 0 or layout.bits_stored >= layout.bits_allocated:
        return raw
    dtype = np.uint8 if layout.bits_allocated == 8 else np.dtype("<u2")
    arr = np.frombuffer(raw, dtype=dtype).astype(np.int32)
    sign = 1 << (layout.bits_stored - 1)
    extended = (arr ^ sign) - sign
    out_type = np.int8 if layout.bits_allocated == 8 else np.dtype("<i2")
    return extended.astype(out_type).tobytes()


def _decode_with_pydicom(data: bytes) -> bytes:
    ds = dcmread(BytesIO(data))
    try:
        ds.decompress(generate_instance_uid=False)  # the decoded object is the same instance
    except Exception as exc:  # noqa: BLE001 - the pixel handlers raise many types
        raise CodecError(f"cannot decode {ds.file_meta.TransferSyntaxUID.name}: {exc}") from exc
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def acceptable(stored_ts: str, accepted: Iterable[str]) -> bool:
    """Whether an instance stored as ``stored_ts`` can be sent to a receiver accepting ``accepted``."""
    accepted = set(map(str, accepted))
    return stored_ts in accepted or bool(accepted & set(NATIVE_TARGETS))
