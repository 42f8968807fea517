"""Transfer-syntax policy and lossless pixel encoding with a pixel-exact check.

Uncompressed images are re-encoded losslessly (JPEG-LS by default, PS3.5 A.4.3 / 8.2.3;
JPEG 2000 reversible as an option, PS3.5 A.4.4 / 8.2.4). Every encoded frame is decoded again
and compared with the original bits before the original may be dropped: any mismatch keeps the
original. Only the Pixel Data encoding and the file meta change; every other attribute keeps its
value bytes, which :func:`same_attributes` checks on the written result.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.filereader import read_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
)
from pydicom.tag import BaseTag

from storage.errors import CodecError
from storage import part10, rewrite

UNCOMPRESSED = frozenset(
    {ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian}
)
PIXEL_DATA = 0x7FE00010


class StorageCodec(enum.StrEnum):
    """How an uncompressed image is stored (the setting's exact spellings)."""

    JPEG_LS = "jpeg-ls"
    JPEG_2000 = "jpeg2000"
    AS_RECEIVED = "as-received"


CODEC_TRANSFER_SYNTAX: Mapping[StorageCodec, str] = {
    StorageCodec.JPEG_LS: str(JPEGLSLossless),
    StorageCodec.JPEG_2000: str(JPEG2000Lossless),
}


@dataclass(frozen=True)
class CompressionPolicy:
    """Which codec applies to an instance: SOP class rules win over modality rules, which win
    over the default."""

    default: StorageCodec = StorageCodec.JPEG_LS
    by_modality: Mapping[str, StorageCodec] | None = None
    by_sop_class: Mapping[str, StorageCodec] | None = None

    def codec_for(self, modality: str | None, sop_class_uid: str) -> StorageCodec:
        if self.by_sop_class and sop_class_uid in self.by_sop_class:
            return self.by_sop_class[sop_class_uid]
        if self.by_modality and modality and modality.upper() in self.by_modality:
            return self.by_modality[modality.upper()]
        return self.default

    def target_for(
        self, *, received_transfer_syntax: str, modality: str | None, sop_class_uid: str, has_pixels: bool
    ) -> str | None:
        """The transfer syntax to store in, or None to keep the object as received."""
        if not has_pixels or received_transfer_syntax not in UNCOMPRESSED:
            return None
        if received_transfer_syntax == ExplicitVRBigEndian:
            # Retired and rare; its other binary values would need byte swapping to re-encode.
            return None
        codec = self.codec_for(modality, sop_class_uid)
        return CODEC_TRANSFER_SYNTAX.get(codec)


@dataclass(frozen=True)
class PixelLayout:
    """The Image Pixel module attributes that describe native pixel data (PS3.3 C.7.6.3)."""

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    planar_configuration: int
    number_of_frames: int

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.columns * self.samples_per_pixel * (self.bits_allocated // 8)

    @classmethod
    def of(cls, ds: Dataset) -> PixelLayout:
        try:
            frames_value = ds.get("NumberOfFrames", 1)
            frames = int(frames_value) if frames_value not in (None, "") else 1
            return cls(
                rows=int(ds.Rows),
                columns=int(ds.Columns),
                samples_per_pixel=int(ds.get("SamplesPerPixel", 1) or 1),
                bits_allocated=int(ds.BitsAllocated),
                bits_stored=int(ds.get("BitsStored", ds.BitsAllocated) or ds.BitsAllocated),
                pixel_representation=int(ds.get("PixelRepresentation", 0) or 0),
                planar_configuration=int(ds.get("PlanarConfiguration", 0) or 0),
                number_of_frames=max(frames, 1),
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise CodecError(f"image pixel attributes are missing or invalid: {exc}") from exc


@dataclass(frozen=True)
class Compressed:
    """The outcome of :func:`compress_object`: either new object bytes, or a reason to keep
    the original (``data is None``)."""

    data: bytes | None
    transfer_syntax_uid: str
    note: str = ""
    flag: str = ""

    @property
    def kept_original(self) -> bool:
        return self.data is None


def _dtype(layout: PixelLayout) -> np.dtype[np.generic]:
    return np.dtype(np.uint8) if layout.bits_allocated == 8 else np.dtype("<u2")


def _canonical_frames(pixel_bytes: bytes, layout: PixelLayout) -> list[np.ndarray]:
    """Split native little-endian pixel data into frames of unsigned samples masked to Bits
    Stored, refusing data whose bits above Bits Stored are not what a decoder reconstructs."""
    if layout.bits_allocated not in (8, 16):
        raise CodecError(f"Bits Allocated {layout.bits_allocated} is not encoded (only 8 and 16)")
    if not 1 <= layout.bits_stored <= layout.bits_allocated:
        raise CodecError(f"Bits Stored {layout.bits_stored} is not valid")
    if layout.samples_per_pixel not in (1, 3):
        raise CodecError(f"Samples per Pixel {layout.samples_per_pixel} is not encoded")
    needed = layout.frame_bytes * layout.number_of_frames
    if len(pixel_bytes) < needed:
        raise CodecError(f"Pixel Data holds {len(pixel_bytes)} bytes, the image needs {needed}")
    arr = np.frombuffer(pixel_bytes, dtype=_dtype(layout), count=needed // _dtype(layout).itemsize)
    mask = (1 << layout.bits_stored) - 1
    masked = arr & np.array(mask, dtype=arr.dtype)
    if layout.bits_stored < layout.bits_allocated:
        if layout.pixel_representation == 0:
            if not np.array_equal(masked, arr):
                raise CodecError("pixel values use bits above Bits Stored (overlay or garbage bits)")
        else:
            sign = 1 << (layout.bits_stored - 1)
            extended = (masked.astype(np.int32) ^ sign) - sign
            signed_view = arr.view(np.int8 if layout.bits_allocated == 8 else np.dtype("<i2"))
            if not np.array_equal(extended, signed_view.astype(np.int32)):
                raise CodecError("signed pixel values are not sign-extended from Bits Stored")
    shape: tuple[int, ...]
    if layout.samples_per_pixel == 1:
        shape = (layout.number_of_frames, layout.rows, layout.columns)
    elif layout.planar_configuration == 0:
        shape = (layout.number_of_frames, layout.rows, layout.columns, 3)
    else:
        shape = (layout.number_of_frames, 3, layout.rows, layout.columns)
    frames = masked.reshape(shape)
    if layout.samples_per_pixel == 3 and layout.planar_configuration == 1:
        frames = np.ascontiguousarray(frames.transpose(0, 2, 3, 1))  # colour-by-pixel
    return [np.ascontiguousarray(f) for f in frames]


def _jpegls_encode(frame: np.ndarray, layout: PixelLayout) -> bytes:
    import jpeg_ls

    return bytes(
        jpeg_ls.encode_buffer(
            frame.tobytes(),
            layout.rows,
            layout.columns,
            layout.samples_per_pixel,
            layout.bits_stored,
            0,
            2 if layout.samples_per_pixel == 3 else None,
        )
    )


def _jpegls_decode(data: bytes, layout: PixelLayout) -> bytes:
    import jpeg_ls

    decoded, _info = jpeg_ls.decode_buffer(data)
    return bytes(decoded)


def _j2k_encode(frame: np.ndarray, layout: PixelLayout) -> bytes:
    import openjpeg.utils

    return bytes(
        openjpeg.utils.encode_buffer(
            frame.tobytes(),
            layout.columns,
            layout.rows,
            layout.samples_per_pixel,
            layout.bits_stored,
            False,  # the masked bit pattern is coded; readers sign-extend from Bits Stored
            photometric_interpretation=1 if layout.samples_per_pixel == 3 else 2,
            use_mct=False,  # keeps Photometric Interpretation as it is
        )
    )


def _j2k_decode(data: bytes, layout: PixelLayout) -> bytes:
    from openjpeg.utils import decode

    arr = decode(data)
    return np.ascontiguousarray(arr.astype(np.uint8 if layout.bits_allocated == 8 else "<u2")).tobytes()


_ENCODERS: Mapping[str, tuple[Callable[[np.ndarray, PixelLayout], bytes], Callable[[bytes, PixelLayout], bytes]]] = {
    str(JPEGLSLossless): (_jpegls_encode, _jpegls_decode),
    str(JPEG2000Lossless): (_j2k_encode, _j2k_decode),
}


def encode_frames(frames: list[np.ndarray], layout: PixelLayout, transfer_syntax_uid: str) -> list[bytes]:
    """Encode each frame and prove the round trip is bit-exact; raise :class:`CodecError`."""
    try:
        encode, decode = _ENCODERS[transfer_syntax_uid]
    except KeyError as exc:
        raise CodecError(f"no lossless encoder for {transfer_syntax_uid}") from exc
    encoded: list[bytes] = []
    for index, frame in enumerate(frames):
        try:
            data = encode(frame, layout)
            roundtrip = decode(data, layout)
        except CodecError:
            raise
        except Exception as exc:  # noqa: BLE001 - codec libraries raise many types
            raise CodecError(f"frame {index + 1}: codec failed: {exc}") from exc
        if roundtrip != frame.tobytes():
            raise CodecError(f"frame {index + 1}: decoded pixels differ from the original")
        encoded.append(data if len(data) % 2 == 0 else data + b"\x00")
    return encoded


def compress_object(original: bytes, target_transfer_syntax: str) -> Compressed:
    """Re-encode the pixel data of a stored Part 10 object; keep the original on any doubt.

    The new object is the received dataset with only its Pixel Data element replaced (and,
    for colour-by-plane data, Planar Configuration set to 0); implicit VR datasets get explicit
    VR headers in front of unchanged value bytes (:mod:`storage.rewrite`)."""
    ts = ""
    try:
        split = part10.split(original)
        ts = split.transfer_syntax_uid
        explicit = rewrite.explicit_little_endian(split.dataset, ts)
        header = read_dataset(
            BytesIO(explicit), False, True, stop_when=lambda tag, vr, length: tag == PIXEL_DATA
        )
        span = rewrite.top_level(explicit, rewrite.PIXEL_DATA)
        if span is None:
            return Compressed(None, ts, "no pixel data")
        if span.length == 0xFFFFFFFF:
            return Compressed(None, ts, "pixel data is already encapsulated")
        layout = PixelLayout.of(header)
        frames = _canonical_frames(explicit[span.value_start : span.value_start + span.length], layout)
        encoded = encode_frames(frames, layout, target_transfer_syntax)
        dataset = rewrite.replace_pixel_data(explicit, span, rewrite.encapsulated_pixel_data(encoded))
        if layout.samples_per_pixel == 3 and layout.planar_configuration == 1:
            # frames were encoded colour-by-pixel (PS3.5 8.2.3, 8.2.4)
            dataset = rewrite.set_us(dataset, (0x0028, 0x0006), 0)
        out = part10.build_file(
            dataset,
            transfer_syntax_uid=target_transfer_syntax,
            sop_class_uid=str(header.SOPClassUID),
            sop_instance_uid=str(header.SOPInstanceUID),
            source_aet=split.source_aet,
        )
        difference = _check_rewritten(original, out, encoded)
    except CodecError as exc:
        return Compressed(None, ts, f"kept as received: {exc}")
    except Exception as exc:  # noqa: BLE001 - anything unexpected keeps the original
        return Compressed(None, ts, f"kept as received: unreadable image: {str(exc)[:200]}")
    if difference:
        return Compressed(None, ts, f"kept as received: {difference}")
    return Compressed(out, target_transfer_syntax, "")


def _check_rewritten(original: bytes, out: bytes, encoded: list[bytes]) -> str | None:
    """Read the new object back as a DICOM reader would: same attributes, same fragments."""
    new = dcmread(BytesIO(out))
    difference = same_attributes(dcmread(BytesIO(original)), new)
    if difference:
        return difference
    frames = list(generate_frames(new.PixelData, number_of_frames=len(encoded)))
    if frames != encoded:
        return "encapsulated frames do not read back"
    return None


def same_attributes(a: Dataset, b: Dataset, *, path: str = "") -> str | None:
    """Compare two datasets' value bytes, except Pixel Data, Planar Configuration, the file
    meta and retired Group Length elements (gggg,0000), which pydicom never writes and whose
    values depend on the encoding (PS3.5 7.2); return the first difference, or None."""
    skip = {PIXEL_DATA, 0x00280006}
    tags_a = [t for t in a.keys() if int(t) not in skip and t.group != 0x0002 and t.element != 0]
    tags_b = [t for t in b.keys() if int(t) not in skip and t.group != 0x0002 and t.element != 0]
    if tags_a != tags_b:
        missing = sorted(set(tags_a) ^ set(tags_b))
        return f"attribute set changed at {path or 'top level'}: {missing[:3]}"
    for tag in tags_a:
        ea, eb = a.get_item(tag), b.get_item(tag)
        if _is_sequence(a, tag) or _is_sequence(b, tag):
            seq_a, seq_b = a[tag].value, b[tag].value
            if len(seq_a) != len(seq_b):
                return f"sequence {tag} changed length"
            for i, (ia, ib) in enumerate(zip(seq_a, seq_b, strict=True)):
                diff = same_attributes(ia, ib, path=f"{path}{tag}[{i}]")
                if diff:
                    return diff
            continue
        if isinstance(ea, RawDataElement) and isinstance(eb, RawDataElement):
            if _raw_value(ea) != _raw_value(eb):
                return f"value of {tag} changed"
        elif a[tag].value != b[tag].value:
            return f"value of {tag} changed"
    return None


def _is_sequence(ds: Dataset, tag: BaseTag) -> bool:
    elem = ds.get_item(tag)
    if elem is None:
        return False
    if isinstance(elem, RawDataElement):
        if elem.VR == "SQ":
            return True
        if elem.VR is None or elem.VR == "UN":
            return bool(ds[tag].VR == "SQ")
        return False
    return bool(elem.VR == "SQ")


def _raw_value(elem: RawDataElement) -> bytes:
    return bytes(elem.value or b"")


def same_content(a: bytes, b: bytes) -> bool:
    """Whether two Part 10 objects hold the same attributes and the same pixel values, whatever
    their transfer syntaxes (a resend in another syntax is not a new version)."""
    try:
        ds_a, ds_b = dcmread(BytesIO(a)), dcmread(BytesIO(b))
        if same_attributes(ds_a, ds_b) is not None:
            return False
        has_a, has_b = ds_a.get_item(PIXEL_DATA) is not None, ds_b.get_item(PIXEL_DATA) is not None
        if has_a != has_b:
            return False
        return not has_a or bool(np.array_equal(ds_a.pixel_array, ds_b.pixel_array))
    except Exception:  # noqa: BLE001 - anything unreadable counts as different
        return False


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_pixels_decodable(original: bytes) -> str | None:
    """Decode every frame of an encapsulated object; return the problem, or None if it decodes."""
    try:
        ds = dcmread(BytesIO(original))
        if ds.get_item(PIXEL_DATA) is None:
            return None
        ds.pixel_array  # noqa: B018 - decoding is the check
    except Exception as exc:  # noqa: BLE001 - any decoder failure means a corrupt stream
        return f"compressed pixel data does not decode: {str(exc)[:200]}"
    return None


__all__ = [
    "CODEC_TRANSFER_SYNTAX",
    "Compressed",
    "CompressionPolicy",
    "PixelLayout",
    "StorageCodec",
    "check_pixels_decodable",
    "compress_object",
    "encode_frames",
    "same_attributes",
    "sha256",
]
