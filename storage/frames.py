"""One frame of a stored object, as stored or decoded, without decoding the other frames.

WADO-RS frames, WADO-URI and rendered images all start here. :class:`FrameSource` parses a
stored Part 10 object once and then answers per frame:

- :meth:`FrameSource.stored_frame`: the frame as stored, i.e. the compressed bitstream (its
  fragments joined, PS3.5 A.4) of an encapsulated object, or the native frame's bytes;
- :meth:`FrameSource.native_frame`: native little-endian pixel bytes, pixel-exact: the same bytes
  as that frame's slice of :func:`storage.retrieve.decode_to_native` (objects filmless
  compressed itself decode through the codecs that verified them, with the bits above Bits
  Stored restored; other compressed syntaxes through pydicom's pixel decoders, which convert
  YCbCr to RGB as ``decode_to_native`` does);
- :meth:`FrameSource.array`: a numpy array for rendering, values as stored (before the Modality
  LUT), colour as RGB.

A frame of an encapsulated multi-frame object is found through the Basic (or Extended) Offset
Table, or by counting fragments (pydicom's :func:`pydicom.encaps.get_frame`); native frames are
slices of the Pixel Data value.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import convert_color_space
from pydicom.uid import ExplicitVRBigEndian

from storage.codecs import _ENCODERS, PixelLayout
from storage.errors import ArchiveError, CodecError
from storage.retrieve import _restore_high_bits

PIXEL_DATA = 0x7FE00010
_YBR_TO_CONVERT = ("YBR_FULL", "YBR_FULL_422")


class FrameNotFound(ArchiveError):
    """The object has no frame with that number (1-based), or no pixel data at all."""


class FrameSource:
    """The frames of one stored object; build it with :meth:`from_bytes`.

    ``header`` holds every attribute before Pixel Data (the file meta included);
    ``number_of_frames`` is 0 for an object without Pixel Data."""

    header: Dataset
    transfer_syntax_uid: str
    number_of_frames: int
    encapsulated: bool

    def __init__(self, dataset: Dataset, transfer_syntax_uid: str) -> None:
        self._dataset = dataset
        self.transfer_syntax_uid = transfer_syntax_uid
        self.header = _header(dataset)
        element = dataset.get_item(PIXEL_DATA)
        self._pixels: bytes = b""
        self.encapsulated = False
        self.number_of_frames = 0
        self._layout: PixelLayout | None = None
        if element is None:
            return
        value = element.value
        if value is None:
            return
        self._pixels = bytes(value)
        self.encapsulated = bool(getattr(element, "is_undefined_length", False)) or (
            getattr(element, "length", 0) == 0xFFFFFFFF
        )
        self._layout = PixelLayout.of(self.header)
        self.number_of_frames = self._layout.number_of_frames

    @classmethod
    def from_bytes(cls, data: bytes) -> FrameSource:
        """A Part 10 object as filmless stores it (one parse of the whole dataset)."""
        try:
            dataset = dcmread(BytesIO(data), force=True)
            ts = str(dataset.file_meta.TransferSyntaxUID)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types on broken input
            raise CodecError(f"the object cannot be read: {str(exc)[:200]}") from exc
        return cls(dataset, ts)

    # --- per frame ------------------------------------------------------------------------
    @property
    def layout(self) -> PixelLayout:
        if self._layout is None:
            raise FrameNotFound("the object has no pixel data")
        return self._layout

    def _check(self, number: int) -> PixelLayout:
        layout = self.layout
        if not 1 <= number <= self.number_of_frames:
            raise FrameNotFound(
                f"frame {number} does not exist (the object has {self.number_of_frames} "
                f"frame{'s' if self.number_of_frames != 1 else ''})"
            )
        return layout

    def stored_frame(self, number: int) -> bytes:
        """Frame ``number`` (1-based) as stored: its compressed bitstream when encapsulated,
        else its native bytes (in the stored byte order)."""
        layout = self._check(number)
        if self.encapsulated:
            return self._encapsulated_frame(number)
        return self._native_slice(number, layout)

    def native_frame(self, number: int) -> bytes:
        """Frame ``number`` (1-based) as native little-endian pixel bytes, pixel-exact."""
        layout = self._check(number)
        if not self.encapsulated:
            raw = self._native_slice(number, layout)
            if self.transfer_syntax_uid == ExplicitVRBigEndian and layout.bits_allocated > 8:
                swapped = np.frombuffer(raw, dtype=f">u{layout.bits_allocated // 8}")
                return swapped.astype(f"<u{layout.bits_allocated // 8}").tobytes()
            return raw
        if self.transfer_syntax_uid in _ENCODERS:
            return self._codec_frame(number, layout)
        arr, _info = self._pydicom_frame(number)
        return bytes(arr.tobytes())

    def array(self, number: int) -> np.ndarray[Any, Any]:
        """Frame ``number`` (1-based) for rendering: rows x columns (x 3 for colour), values as
        stored (before the Modality LUT; bits above Bits Stored masked, or sign-extended for
        signed pixels), YBR_FULL / YBR_FULL_422 converted to RGB."""
        layout = self._check(number)
        if self.encapsulated and self.transfer_syntax_uid in _ENCODERS:
            arr = self._codec_array(self._codec_frame(number, layout), layout)
            photometric = str(self.header.get("PhotometricInterpretation", "")).strip()
        else:
            # native data and other compressed syntaxes: pydicom's decoders (byte order,
            # planar configuration, 1-bit and 4:2:2 data, masking to Bits Stored)
            arr, info = self._pydicom_frame(number)
            photometric = str(info.get("photometric_interpretation", "")).strip()
        if layout.samples_per_pixel == 3 and photometric in _YBR_TO_CONVERT:
            arr = convert_color_space(arr, photometric, "RGB")
        return arr

    # --- helpers ----------------------------------------------------------------------------
    def _encapsulated_frame(self, number: int) -> bytes:
        extended: tuple[bytes, bytes] | None = None
        offsets, lengths = self.header.get("ExtendedOffsetTable"), self.header.get("ExtendedOffsetTableLengths")
        if offsets is not None and lengths is not None:
            extended = (bytes(offsets), bytes(lengths))
        try:
            return get_frame(self._pixels, number - 1, number_of_frames=self.number_of_frames, extended_offsets=extended)
        except Exception as exc:  # noqa: BLE001 - malformed fragments raise many types
            raise CodecError(f"frame {number}: cannot find its fragments: {str(exc)[:200]}") from exc

    def _frame_bytes(self, layout: PixelLayout) -> int:
        photometric = str(self.header.get("PhotometricInterpretation", "")).strip()
        if photometric == "YBR_FULL_422" and layout.samples_per_pixel == 3:
            # native 4:2:2 data holds two luminance and two chrominance samples per 2 pixels
            return layout.rows * layout.columns * 2 * (layout.bits_allocated // 8)
        return layout.frame_bytes

    def _native_slice(self, number: int, layout: PixelLayout) -> bytes:
        if layout.bits_allocated == 1:
            return self._bit_frame(number, layout)
        size = self._frame_bytes(layout)
        start = (number - 1) * size
        if start + size > len(self._pixels):
            raise CodecError(f"frame {number}: Pixel Data holds {len(self._pixels)} bytes, too few for it")
        return self._pixels[start : start + size]

    def _bit_frame(self, number: int, layout: PixelLayout) -> bytes:
        """A frame of 1-bit data (PS3.5 8.1.1): bits packed little-endian, frames not
        necessarily starting on a byte boundary; returned packed from bit 0."""
        bits = layout.rows * layout.columns * layout.samples_per_pixel
        first = (number - 1) * bits
        if (first + bits + 7) // 8 > len(self._pixels):
            raise CodecError(f"frame {number}: Pixel Data holds {len(self._pixels)} bytes, too few for it")
        if first % 8 == 0:
            return self._pixels[first // 8 : (first + bits + 7) // 8]
        chunk = np.frombuffer(self._pixels, dtype=np.uint8, count=(first + bits + 7) // 8 - first // 8, offset=first // 8)
        unpacked = np.unpackbits(chunk, bitorder="little")[first % 8 : first % 8 + bits]
        return bytes(np.packbits(unpacked, bitorder="little").tobytes())

    def _codec_frame(self, number: int, layout: PixelLayout) -> bytes:
        """A JPEG-LS / JPEG 2000 lossless frame through filmless's codecs, exactly as
        :func:`storage.retrieve.decode_to_native` decodes it."""
        _encode, decode = _ENCODERS[self.transfer_syntax_uid]
        fragment = self._encapsulated_frame(number)
        try:
            raw = decode(fragment, layout)
        except Exception as exc:  # noqa: BLE001 - codec libraries raise many types
            raise CodecError(f"frame {number}: cannot decode: {exc}") from exc
        if len(raw) != layout.frame_bytes:
            raise CodecError(f"frame {number}: decoded {len(raw)} bytes, expected {layout.frame_bytes}")
        return _restore_high_bits(raw, layout)

    @staticmethod
    def _codec_array(native: bytes, layout: PixelLayout) -> np.ndarray[Any, Any]:
        signed = layout.pixel_representation == 1
        if layout.bits_allocated == 8:
            dtype = np.dtype(np.int8 if signed else np.uint8)
        elif layout.bits_allocated == 16:
            dtype = np.dtype("<i2" if signed else "<u2")
        else:
            raise CodecError(f"Bits Allocated {layout.bits_allocated} is not decoded by the archive's codecs")
        arr = np.frombuffer(native, dtype=dtype)
        if layout.samples_per_pixel == 1:
            return arr.reshape(layout.rows, layout.columns)
        # the codecs return colour-by-pixel samples
        return arr.reshape(layout.rows, layout.columns, layout.samples_per_pixel)

    def _pydicom_frame(self, number: int) -> tuple[np.ndarray[Any, Any], dict[str, Any]]:
        try:
            decoder = get_decoder(self.transfer_syntax_uid)
        except NotImplementedError as exc:
            raise CodecError(f"no decoder for the transfer syntax {self.transfer_syntax_uid}") from exc
        if not decoder.is_available:
            raise CodecError(f"the decoder for {self.transfer_syntax_uid} is not installed")
        try:
            options: dict[str, Any] = {"as_rgb": True}
            if not self.encapsulated:
                options["allow_excess_frames"] = False  # Number of Frames is the truth
            arr, info = decoder.as_array(self._dataset, index=number - 1, **options)
        except Exception as exc:  # noqa: BLE001 - the pixel decoders raise many types
            raise CodecError(f"frame {number}: cannot decode: {str(exc)[:200]}") from exc
        return arr, dict(info)


def _header(dataset: Dataset) -> Dataset:
    """Every attribute before Pixel Data, sharing the parsed (still raw) elements; the file
    meta and the original encoding come along, so values decode as in the object."""
    header = Dataset({tag: dataset.get_item(tag) for tag in dataset.keys() if tag < PIXEL_DATA})
    header.file_meta = dataset.file_meta
    implicit, little = dataset.original_encoding
    if implicit is not None and little is not None:
        header.set_original_encoding(implicit, little, dataset.original_character_set)
    return header


__all__ = ["FrameNotFound", "FrameSource"]
