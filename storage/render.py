"""Rendered images (PS3.18 8.3.5): one frame through the grayscale or colour pipeline of
PS3.4 N.2 to an 8-bit JPEG or PNG.

Grayscale: Modality LUT (Rescale Slope / Intercept, or a Modality LUT Sequence; PS3.3 C.11.1),
then the VOI LUT (PS3.3 C.11.2): the caller's window if given, else the object's first Window
Center / Width with its VOI LUT Function, else its first VOI LUT Sequence item, else the range of
the pixel values (Pixel Padding Value and Pixel Padding Range Limit left out); MONOCHROME1 is
inverted. Colour: RGB as it is (wider samples scaled to 8 bits), PALETTE COLOR through its
palette. The pixels come as :meth:`storage.frames.FrameSource.array` gives them: values as
stored, colour samples already RGB (a YBR_FULL / YBR_FULL_422 / YBR_RCT / YBR_ICT object's
frame is converted there), so a 3-sample frame is rendered as RGB whatever its header says.

The grey-level transform is computed once per distinct stored value (a lookup table over the
frame's value range), then applied with one indexing pass; Pillow scales and encodes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from io import BytesIO
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_color_lut

from storage.errors import CodecError

LINEAR = "LINEAR"
LINEAR_EXACT = "LINEAR_EXACT"
SIGMOID = "SIGMOID"
WINDOW_FUNCTIONS = (LINEAR, LINEAR_EXACT, SIGMOID)
"""VOI LUT Function (0028,1056) defined terms, PS3.3 C.11.2.1.3."""

JPEG = "image/jpeg"
PNG = "image/png"
MEDIA_TYPES = (JPEG, PNG)
DEFAULT_QUALITY = 90

_LUT_LIMIT = 1 << 20  # a value range wider than this is transformed pixel by pixel
Window = tuple[float, float, str]
_Array = np.ndarray[Any, Any]


def check_window(center: float, width: float, function: str) -> Window:
    """A window as PS3.3 C.11.2.1.2 allows it: finite numbers, a known function, Window Width
    >= 1 for LINEAR and > 0 for LINEAR_EXACT and SIGMOID; raise ValueError otherwise."""
    function = function.upper()
    if function not in WINDOW_FUNCTIONS:
        raise ValueError(f"unknown window function {function!r}; use one of {', '.join(WINDOW_FUNCTIONS)}")
    if not (math.isfinite(center) and math.isfinite(width)):
        raise ValueError("window center and width must be finite numbers")
    if function == LINEAR and width < 1:
        raise ValueError("the window width of a LINEAR window must be at least 1")
    if width <= 0:
        raise ValueError(f"the window width of a {function} window must be greater than 0")
    return center, width, function


def render(
    header: Dataset,
    pixels: _Array,
    *,
    window: Window | None = None,
    viewport: tuple[int, int] | None = None,
    media_type: str = JPEG,
    quality: int = DEFAULT_QUALITY,
) -> bytes:
    """One frame as a JPEG or PNG: ``viewport`` (width, height) scales it to fit inside,
    keeping the aspect ratio; ``quality`` (1-100) applies to JPEG."""
    if media_type not in MEDIA_TYPES:
        raise ValueError(f"cannot render {media_type}; only {', '.join(MEDIA_TYPES)}")
    if window is not None:
        window = check_window(*window)
    image = Image.fromarray(display(header, pixels, window))
    if viewport is not None:
        image = fit(image, viewport)
    out = BytesIO()
    if media_type == JPEG:
        image.save(out, "JPEG", quality=max(1, min(100, int(quality))))
    else:
        image.save(out, "PNG", compress_level=1)
    return out.getvalue()


def fit(image: Image.Image, viewport: tuple[int, int]) -> Image.Image:
    """Scale ``image`` to the largest size inside ``viewport`` with the same aspect ratio."""
    vw, vh = viewport
    if vw < 1 or vh < 1:
        raise ValueError("viewport width and height must be at least 1")
    width, height = image.size
    scale = min(vw / width, vh / height)
    size = (max(1, min(vw, round(width * scale))), max(1, min(vh, round(height * scale))))
    if size == image.size:
        return image
    if scale < 1:
        return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return image.resize(size, Image.Resampling.BICUBIC)


def display(header: Dataset, pixels: _Array, window: Window | None = None) -> _Array:
    """The frame as 8-bit display values: rows x columns (grey) or rows x columns x 3 (RGB)."""
    pixels = np.asarray(pixels)
    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return _rgb8(pixels, header)
    if pixels.ndim != 2:
        raise CodecError(f"cannot render pixels of shape {pixels.shape}")
    if photometric == "PALETTE COLOR":
        return _palette(pixels, header)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # extreme windows saturate
        grey = _grey(header, pixels, window)
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    return grey


# --- colour ------------------------------------------------------------------------------------
def _rgb8(pixels: _Array, header: Dataset) -> _Array:
    if pixels.dtype == np.uint8:
        return np.ascontiguousarray(pixels)
    bits = _int(header, "BitsStored", pixels.dtype.itemsize * 8)
    shifted = np.right_shift(pixels.astype(np.uint32), max(bits - 8, 0)) if bits > 8 else pixels
    return np.ascontiguousarray(np.clip(shifted, 0, 255).astype(np.uint8))


def _palette(pixels: _Array, header: Dataset) -> _Array:
    """PALETTE COLOR through its Red/Green/Blue Palette Color LUTs (PS3.3 C.7.6.3.1.5)."""
    try:
        rgb = apply_color_lut(pixels, header)
    except Exception as exc:  # noqa: BLE001 - a broken palette raises many types
        raise CodecError(f"the palette cannot be applied: {str(exc)[:200]}") from exc
    if rgb.dtype != np.uint8:
        rgb = (rgb.astype(np.uint32) >> 8) if int(rgb.max(initial=0)) > 255 else rgb
        rgb = rgb.astype(np.uint8)
    return np.ascontiguousarray(rgb)


# --- grey --------------------------------------------------------------------------------------
def _grey(header: Dataset, pixels: _Array, window: Window | None) -> _Array:
    if pixels.dtype == np.bool_:
        pixels = pixels.astype(np.uint8)
    modality = _modality(header)
    if pixels.size == 0:
        return np.zeros(pixels.shape, np.uint8)
    integer = np.issubdtype(pixels.dtype, np.integer)
    lo, hi = _value_range(pixels)
    if integer and hi - lo < _LUT_LIMIT:
        domain = np.arange(lo, hi + 1, dtype=np.int64)
        values = modality(domain)
        voi = _voi(header, window, lambda: _display_range(header, pixels, values, lo))
        lut = _to_uint8(voi(values))
        if lo == 0:
            return np.take(lut, pixels)
        return np.take(lut, np.subtract(pixels, lo, dtype=np.int64 if hi - lo > 2**31 else np.int32))
    values = modality(pixels.astype(np.float64))
    voi = _voi(header, window, lambda: _float_range(header, pixels, values))
    return _to_uint8(voi(values))


def _value_range(pixels: _Array) -> tuple[int, int]:
    if np.issubdtype(pixels.dtype, np.integer):
        return int(pixels.min()), int(pixels.max())
    return 0, 0


def _to_uint8(y: _Array) -> _Array:
    y = np.nan_to_num(y, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.floor(y + 0.5), 0, 255).astype(np.uint8)  # halves round up


def _modality(header: Dataset) -> Callable[[_Array], _Array]:
    """Stored values -> modality values (PS3.3 C.11.1): the Modality LUT Sequence if present,
    else Rescale Slope / Intercept (identity when absent)."""
    sequence = _first_item(header, "ModalityLUTSequence")
    if sequence is not None:
        table = _lut(sequence, _int(header, "PixelRepresentation", 0))
        if table is not None:
            first, data, _bits = table
            return lambda x: data[np.clip(np.rint(x).astype(np.int64) - first, 0, len(data) - 1)].astype(np.float64)
    slope = _float(header, "RescaleSlope", 1.0) or 1.0
    intercept = _float(header, "RescaleIntercept", 0.0)
    if slope == 1.0 and intercept == 0.0:
        return lambda x: x.astype(np.float64)
    return lambda x: x.astype(np.float64) * slope + intercept


def _voi(
    header: Dataset, window: Window | None, pixel_range: Callable[[], tuple[float, float]]
) -> Callable[[_Array], _Array]:
    """Modality values -> 0..255 (PS3.3 C.11.2): the given window, the object's first window,
    its first VOI LUT, else the range of the (non-padding) values."""
    if window is not None:
        return _window(*window)
    centers, widths = _floats(header, "WindowCenter"), _floats(header, "WindowWidth")
    if centers and widths and widths[0] > 0:
        function = str(header.get("VOILUTFunction", LINEAR) or LINEAR).strip().upper()
        if function not in WINDOW_FUNCTIONS:
            function = LINEAR
        width = max(widths[0], 1.0) if function == LINEAR else widths[0]
        return _window(centers[0], width, function)
    item = _first_item(header, "VOILUTSequence")
    if item is not None:
        table = _lut(item, _int(header, "PixelRepresentation", 0))
        if table is not None:
            first, data, bits = table
            top = float(max((1 << bits) - 1, int(data.max(initial=0)), 1))
            scaled = data.astype(np.float64) * (255.0 / top)
            return lambda x: scaled[np.clip(np.rint(x).astype(np.int64) - first, 0, len(data) - 1)]
    low, high = pixel_range()
    if high <= low:
        return lambda x: np.where(x > low, 255.0, 0.0) if high < low else np.zeros_like(x, dtype=np.float64)
    # LINEAR_EXACT over [low, high]: the lowest value black, the highest white
    return _window((low + high) / 2, high - low, LINEAR_EXACT)


def _window(center: float, width: float, function: str) -> Callable[[_Array], _Array]:
    """PS3.3 C.11.2.1.2 (LINEAR) and C.11.2.1.3 (LINEAR_EXACT, SIGMOID), ymin 0, ymax 255."""
    if function == SIGMOID:
        return lambda x: 255.0 / (1.0 + np.exp(np.clip(-4.0 * (x - center) / width, -700, 700)))
    if function == LINEAR_EXACT:
        return lambda x: np.clip(((x - center) / width + 0.5) * 255.0, 0.0, 255.0)
    if width <= 1:
        return lambda x: np.where(x <= center - 0.5, 0.0, 255.0)  # the threshold of Note 5
    return lambda x: np.clip(((x - (center - 0.5)) / (width - 1) + 0.5) * 255.0, 0.0, 255.0)


def _padding_mask(header: Dataset, stored: _Array) -> _Array | None:
    """Where ``stored`` holds padding (Pixel Padding Value, up to Pixel Padding Range Limit;
    PS3.3 C.7.5.1.1.2), or None when the object declares none."""
    value = _padding_value(header, "PixelPaddingValue")
    if value is None:
        return None
    limit = _padding_value(header, "PixelPaddingRangeLimit")
    if limit is None:
        return np.asarray(stored == value)
    low, high = min(value, limit), max(value, limit)
    return np.asarray((stored >= low) & (stored <= high))


def _display_range(header: Dataset, pixels: _Array, domain_values: _Array, lo: int) -> tuple[float, float]:
    """The range of modality values of the frame's non-padding pixels (LUT path)."""
    mask = _padding_mask(header, pixels)
    if mask is None:
        used = domain_values
    else:
        kept = pixels[~mask]
        if kept.size == 0:
            return 0.0, 0.0
        used = domain_values[int(kept.min()) - lo : int(kept.max()) - lo + 1]
    return float(used.min()), float(used.max())


def _float_range(header: Dataset, pixels: _Array, values: _Array) -> tuple[float, float]:
    mask = _padding_mask(header, pixels)
    used = values if mask is None else values[~mask]
    used = used[np.isfinite(used)]
    if used.size == 0:
        return 0.0, 0.0
    return float(used.min()), float(used.max())


# --- attribute reading (tolerant: a bad value falls back to the default) ------------------------
def _first_item(header: Dataset, keyword: str) -> Dataset | None:
    try:
        sequence = header.get(keyword)
        return sequence[0] if sequence else None
    except Exception:  # noqa: BLE001 - an unreadable sequence is treated as absent
        return None


def _lut(item: Dataset, pixel_representation: int) -> tuple[int, _Array, int] | None:
    """(first stored value mapped, entries, bits per entry) of a LUT item (PS3.3 C.11.1.1)."""
    try:
        count, first, bits = (int(v) for v in item.LUTDescriptor)
        raw = item.LUTData
    except Exception:  # noqa: BLE001 - a broken LUT is ignored
        return None
    count = count or 65536
    if pixel_representation == 1 and first >= 32768:
        first -= 65536
    if isinstance(raw, bytes | bytearray):
        data = np.frombuffer(raw, dtype=np.uint8 if len(raw) == count else np.dtype("<u2"))
    else:
        data = np.asarray([raw] if isinstance(raw, int | float) else list(raw), dtype=np.int64).ravel()
    if data.size == 0:
        return None
    return first, data[:count].astype(np.int64), bits


def _float(header: Dataset, keyword: str, default: float) -> float:
    values = _floats(header, keyword)
    return values[0] if values else default


def _floats(header: Dataset, keyword: str) -> list[float]:
    try:
        value = header.get(keyword)
        if value is None or value == "":
            return []
        items = list(value) if isinstance(value, list | tuple | MultiValue) else [value]
        return [float(v) for v in items if v not in (None, "") and math.isfinite(float(v))]
    except Exception:  # noqa: BLE001 - an invalid DS value is treated as absent
        return []


def _int(header: Dataset, keyword: str, default: int) -> int:
    try:
        value = header.get(keyword)
        return int(value) if value not in (None, "") else default
    except Exception:  # noqa: BLE001
        return default


def _padding_value(header: Dataset, keyword: str) -> int | None:
    try:
        value = header.get(keyword)
        if value is None or value == "":
            return None
        value = int(value[0] if isinstance(value, list | tuple | MultiValue) else value)
    except Exception:  # noqa: BLE001
        return None
    if _int(header, "PixelRepresentation", 0) == 1 and value >= 32768:
        value -= 65536  # read as US
    return value


# --- enhanced multi-frame objects ---------------------------------------------------------------
_FUNCTIONAL_GROUPS = (0x52009229, 0x52009230)  # Shared, Per-frame Functional Groups Sequence
_FRAME_MACROS = (
    ("PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept")),
    ("FrameVOILUTSequence", ("WindowCenter", "WindowWidth", "VOILUTFunction")),
)


def frame_header(header: Dataset, number: int) -> Dataset:
    """The header with the frame's rescale and window (Pixel Value Transformation and Frame
    VOI LUT functional groups of an enhanced multi-frame object, PS3.3 C.7.6.16: shared, then
    per frame) as top-level attributes; ``header`` itself when it has no functional groups."""
    found: dict[str, Any] = {}
    for group_keyword, index in (("SharedFunctionalGroupsSequence", 0), ("PerFrameFunctionalGroupsSequence", number - 1)):
        try:
            groups = header.get(group_keyword)
            if not groups or index >= len(groups):
                continue
            group = groups[index]
            for macro, keywords in _FRAME_MACROS:
                item = _first_item(group, macro)
                if item is None:
                    continue
                for keyword in keywords:
                    if keyword in item:
                        found[keyword] = item[keyword].value
        except Exception:  # noqa: BLE001 - unreadable functional groups are ignored
            continue
    if not found:
        return header
    flat = Dataset()
    for tag in header.keys():
        if tag not in _FUNCTIONAL_GROUPS:
            flat[tag] = header[tag]
    for keyword, value in found.items():
        setattr(flat, keyword, value)
    return flat


__all__ = [
    "DEFAULT_QUALITY",
    "JPEG",
    "LINEAR",
    "LINEAR_EXACT",
    "MEDIA_TYPES",
    "PNG",
    "SIGMOID",
    "WINDOW_FUNCTIONS",
    "check_window",
    "display",
    "fit",
    "frame_header",
    "render",
]
