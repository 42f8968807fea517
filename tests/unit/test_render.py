"""storage.render on hand-made frames: the VOI LUT functions at their edges (PS3.3 C.11.2.1.2
LINEAR, C.11.2.1.3 LINEAR_EXACT and SIGMOID), the Modality LUT, signed pixels, MONOCHROME1,
padding, palettes, the viewport's aspect ratio, the encoders, and speed."""

from __future__ import annotations

import math
import time
from io import BytesIO
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from storage.render import check_window, display, frame_header, render


def _header(**attrs: Any) -> Dataset:
    ds = Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsStored = 16
    ds.PixelRepresentation = 0
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def _row(*values: int, dtype: Any = np.uint16) -> np.ndarray[Any, Any]:
    return np.array([values], dtype=dtype)


def _decode(data: bytes) -> np.ndarray[Any, Any]:
    return np.asarray(Image.open(BytesIO(data)))


def test_linear_window_edges() -> None:
    # c=100, w=11: x <= 94.5 -> 0, x > 104.5 -> 255, else ((x - 99.5) / 10 + 0.5) * 255
    pixels = _row(94, 95, 100, 104, 105)
    out = display(_header(), pixels, (100, 11, "LINEAR"))
    assert out.tolist() == [[0, 13, 140, 242, 255]]
    # the header's window gives the same result
    assert np.array_equal(display(_header(WindowCenter="100", WindowWidth="11"), pixels), out)


def test_linear_exact_window_edges_differ_from_linear() -> None:
    # c=100, w=10: x <= 95 -> 0, x > 105 -> 255, else ((x - 100) / 10 + 0.5) * 255
    pixels = _row(95, 97, 100, 105, 106)
    exact = display(_header(), pixels, (100, 10, "LINEAR_EXACT"))
    assert exact.tolist() == [[0, 51, 128, 255, 255]]
    linear = display(_header(), pixels, (100, 10, "LINEAR"))
    # LINEAR: x <= 95 -> 0, x > 104 -> 255, ((x - 99.5) / 9 + 0.5) * 255
    assert linear.tolist() == [[0, 57, 142, 255, 255]]
    via_header = display(_header(WindowCenter=100, WindowWidth=10, VOILUTFunction="LINEAR_EXACT"), pixels)
    assert np.array_equal(via_header, exact)


def test_width_one_is_a_threshold_at_the_center() -> None:
    out = display(_header(), _row(98, 99, 100, 101), (100, 1, "LINEAR"))
    assert out.tolist() == [[0, 0, 255, 255]]


def test_sigmoid() -> None:
    c, w = 500.0, 200.0
    pixels = _row(0, 400, 500, 600, 1000)
    out = display(_header(), pixels, (c, w, "SIGMOID"))
    expected = [math.floor(255 / (1 + math.exp(-4 * (x - c) / w)) + 0.5) for x in (0, 400, 500, 600, 1000)]
    assert out.tolist() == [expected]
    assert expected[2] == 128 and expected[1] + expected[3] == 255


def test_rescale_applies_before_the_window() -> None:
    # modality value = 2 * stored - 1000; window 0 +- 50 (LINEAR_EXACT) on modality values
    header = _header(RescaleSlope="2", RescaleIntercept="-1000")
    out = display(header, _row(475, 500, 525), (0, 100, "LINEAR_EXACT"))
    assert out.tolist() == [[0, 128, 255]]


def test_signed_pixels() -> None:
    header = _header(PixelRepresentation=1, BitsStored=12)
    pixels = _row(-2048, -1000, 0, 1000, 2047, dtype=np.int16)
    out = display(header, pixels, (0, 2000, "LINEAR_EXACT"))
    assert out.tolist() == [[0, 0, 128, 255, 255]]
    # no window anywhere: the pixel range maps to 0..255
    full = display(header, pixels)
    assert full[0, 0] == 0 and full[0, -1] == 255 and full[0, 2] == 128


def test_monochrome1_is_inverted() -> None:
    pixels = _row(0, 50, 100)
    m2 = display(_header(), pixels, (50, 100, "LINEAR_EXACT"))
    m1 = display(_header(PhotometricInterpretation="MONOCHROME1"), pixels, (50, 100, "LINEAR_EXACT"))
    assert m2.tolist() == [[0, 128, 255]] and m1.tolist() == [[255, 127, 0]]


def test_pixel_range_leaves_out_padding() -> None:
    header = _header(PixelRepresentation=1, PixelPaddingValue=-2000, RescaleIntercept="0")
    pixels = _row(-2000, -2000, 0, 50, 100, dtype=np.int16)
    out = display(header, pixels)
    assert out.tolist() == [[0, 0, 0, 128, 255]]
    # a padding range (Pixel Padding Range Limit)
    ranged = _header(PixelPaddingValue=0, PixelPaddingRangeLimit=10)
    out = display(ranged, _row(0, 5, 10, 110, 210))
    assert out.tolist() == [[0, 0, 0, 0, 255]]


def test_first_of_several_windows_and_explicit_window_wins() -> None:
    header = _header(WindowCenter=["40", "-600"], WindowWidth=["400", "1500"], RescaleIntercept="-1024")
    pixels = _row(774, 1064, 1264)  # -250, 40, 240 HU
    assert display(header, pixels).tolist() == [[0, 128, 255]]
    assert display(header, pixels, (-600, 1500, "LINEAR_EXACT")).tolist() == [[187, 236, 255]]


def test_voi_lut_sequence_and_modality_lut_sequence() -> None:
    voi = Dataset()
    voi.LUTDescriptor = [4, 10, 8]  # 4 entries, first input 10, 8 bits
    voi.LUTData = [0, 100, 200, 255]
    header = _header(VOILUTSequence=[voi])
    assert display(header, _row(0, 10, 11, 12, 13, 99)).tolist() == [[0, 0, 100, 200, 255, 255]]
    modality = Dataset()
    modality.LUTDescriptor = [3, 0, 16]
    modality.LUTData = [1000, 2000, 3000]
    header = _header(ModalityLUTSequence=[modality], RescaleSlope="5")  # the sequence wins
    assert display(header, _row(0, 1, 2), (2000, 2000, "LINEAR_EXACT")).tolist() == [[0, 128, 255]]


def test_float_and_wide_range_pixels_take_the_direct_path() -> None:
    pixels = np.array([[0, 2**30, 2**31 - 1]], dtype=np.int64)
    assert display(_header(), pixels).tolist() == [[0, 128, 255]]
    floats = np.array([[-1.0, 0.0, 1.0]], dtype=np.float32)
    assert display(_header(), floats, (0, 2, "LINEAR_EXACT")).tolist() == [[0, 128, 255]]


def test_constant_image_renders_without_dividing_by_zero() -> None:
    assert display(_header(), np.full((3, 3), 7, np.uint16)).tolist() == [[0] * 3] * 3


def test_colour() -> None:
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    header = _header(PhotometricInterpretation="YBR_FULL", SamplesPerPixel=3, BitsStored=8)
    assert np.array_equal(display(header, rgb), rgb)  # already RGB, as FrameSource.array gives it
    wide = (rgb.astype(np.uint16) << 4) | 0xF
    assert np.array_equal(display(_header(PhotometricInterpretation="RGB", BitsStored=12), wide), rgb)
    png = _decode(render(header, rgb, media_type="image/png"))
    assert png.shape == (2, 3, 3) and np.array_equal(png, rgb)


def test_palette_color() -> None:
    header = _header(PhotometricInterpretation="PALETTE COLOR", BitsStored=8, BitsAllocated=8)
    for colour, values in (("Red", [0, 65535, 0]), ("Green", [0, 0, 65535]), ("Blue", [65535, 0, 0])):
        setattr(header, f"{colour}PaletteColorLookupTableDescriptor", [3, 0, 16])
        setattr(header, f"{colour}PaletteColorLookupTableData", np.array(values, "<u2").tobytes())
    out = display(header, _row(0, 1, 2, dtype=np.uint8))
    assert out.tolist() == [[[0, 0, 255], [255, 0, 0], [0, 255, 0]]]


def test_viewport_keeps_the_aspect_ratio() -> None:
    pixels = np.tile(np.arange(200, dtype=np.uint16), (100, 1))  # 200 wide, 100 high
    sizes = {}
    for viewport in ((64, 64), (50, 200), (1000, 30), (400, 400)):
        image = Image.open(BytesIO(render(_header(), pixels, viewport=viewport, media_type="image/png")))
        sizes[viewport] = image.size
    assert sizes == {(64, 64): (64, 32), (50, 200): (50, 25), (1000, 30): (60, 30), (400, 400): (400, 200)}
    same = _decode(render(_header(), pixels, media_type="image/png"))
    assert same.shape == (100, 200) and same[0, 0] == 0 and same[0, -1] == 255
    with pytest.raises(ValueError):
        render(_header(), pixels, viewport=(0, 10))


def test_jpeg_quality_and_media_types() -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 4096, (64, 64), dtype=np.uint16)
    low = render(_header(), pixels, quality=10)
    high = render(_header(), pixels, quality=95)
    assert low[:2] == high[:2] == b"\xff\xd8" and len(low) < len(high)
    assert Image.open(BytesIO(high)).mode == "L"
    assert render(_header(), pixels, media_type="image/png")[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        render(_header(), pixels, media_type="image/gif")


def test_check_window() -> None:
    assert check_window(40, 400, "linear_exact") == (40, 400, "LINEAR_EXACT")
    for bad in ((40, 0.5, "LINEAR"), (40, 0, "SIGMOID"), (40, -1, "LINEAR_EXACT"), (math.nan, 1, "LINEAR"), (1, 1, "CUBIC")):
        with pytest.raises(ValueError):
            check_window(*bad)


def test_frame_header_takes_the_functional_groups() -> None:
    def group(**attrs: Any) -> Dataset:
        transform, voi = Dataset(), Dataset()
        transform.RescaleSlope, transform.RescaleIntercept = attrs.get("slope", "1"), attrs.get("intercept", "0")
        outer = Dataset()
        outer.PixelValueTransformationSequence = [transform]
        if "center" in attrs:
            voi.WindowCenter, voi.WindowWidth = attrs["center"], attrs["width"]
            outer.FrameVOILUTSequence = [voi]
        return outer

    header = _header(SharedFunctionalGroupsSequence=[group(intercept="-1024")])
    header.PerFrameFunctionalGroupsSequence = [group(intercept="-1024", center="40", width="400"), group(intercept="0", center="100", width="10")]
    first, second = frame_header(header, 1), frame_header(header, 2)
    assert (float(first.RescaleIntercept), float(first.WindowCenter)) == (-1024.0, 40.0)
    assert (float(second.RescaleIntercept), float(second.WindowWidth)) == (0.0, 10.0)
    assert "PerFrameFunctionalGroupsSequence" not in first
    plain = _header()
    assert frame_header(plain, 1) is plain


def test_a_ct_frame_renders_in_a_few_milliseconds() -> None:
    rng = np.random.default_rng(3)
    pixels = rng.normal(1100, 300, (512, 512)).clip(0, 4095).astype(np.uint16)
    header = _header(BitsStored=12, RescaleIntercept="-1024", WindowCenter="40", WindowWidth="400")
    render(header, pixels)
    timings = []
    for _ in range(15):
        start = time.perf_counter()
        render(header, pixels)
        timings.append(time.perf_counter() - start)
    # a few ms on one core; generous against a loaded test machine
    assert sorted(timings)[len(timings) // 2] < 0.03
