"""Rendered images and thumbnails over HTTP (PS3.18 rendered resources) on a real archive:
a synthetic CT series stored as JPEG-LS, a MONOCHROME1 radiograph, RGB and YCbCr images, a
multi-frame MR; pictures decoded with Pillow and compared with an independent computation of
the window; ETags, the thumbnail cache, errors and the audit log."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import JPEGLSLossless

from tests.fixtures import synthetic
from tests.unit.support import read, sample_bytes, to_part10
from tests.web.conftest import WebArchive

DICOMWEB = "/dicom-web"


def _ingest_bytes(web: WebArchive, data: bytes) -> Any:
    from storage.index import Source

    return web.archive.ingest.store_file(data, Source(aet="TEST", host="127.0.0.1"))


def _ct(web: WebArchive, n: int = 3) -> list[Dataset]:
    series = list(synthetic.ct_series(n, rows=64, cols=64, seed=21))
    for ds in series:
        _ingest_bytes(web, to_part10(ds))
    web.archive.compressor(worker_id="rendered").drain()
    row = web.archive.index.get_instance(series[0].SOPInstanceUID)
    assert row is not None and row.stored_transfer_syntax == JPEGLSLossless
    return series


def _url(ds: Dataset, suffix: str = "rendered") -> str:
    return (
        f"{DICOMWEB}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/{suffix}"
    )


def _image(reply: Any) -> np.ndarray[Any, Any]:
    return np.asarray(Image.open(BytesIO(reply.content)))


def _linear(values: np.ndarray[Any, Any], center: float, width: float) -> np.ndarray[Any, Any]:
    """PS3.3 C.11.2.1.2, written out independently of storage.render."""
    x = values.astype(np.float64)
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255
    y = np.where(x <= center - 0.5 - (width - 1) / 2, 0, np.where(x > center - 0.5 + (width - 1) / 2, 255, y))
    return np.floor(y + 0.5).astype(np.int64)


def _multipart(reply: Any) -> list[tuple[dict[str, str], bytes]]:
    content_type = reply.headers["content-type"]
    assert content_type.startswith("multipart/related")
    boundary = content_type.split("boundary=")[1].split(";")[0].strip('"')
    parts = []
    for chunk in reply.content.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().strip().split("\r\n"))
        parts.append((headers, body[:-2]))
    return parts


def test_ct_instance_rendered_with_its_window(web: WebArchive) -> None:
    series = _ct(web)
    client = web.client("clinician")
    ds = series[1]
    reply = client.get(_url(ds), headers={"Accept": "image/png"})
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "image/png"
    picture = _image(reply)
    assert picture.shape == (64, 64) and picture.dtype == np.uint8
    # the object's first window (40/400 HU) over Rescale Intercept -1024
    expected = _linear(ds.pixel_array.astype(np.int64) - 1024, 40, 400)
    assert np.abs(picture.astype(np.int64) - expected).max() <= 1
    assert 0 < picture.mean() < 255
    # default (*/*): JPEG, roughly the same picture
    jpeg = client.get(_url(ds))
    assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(BytesIO(jpeg.content)).mode == "L"
    assert np.abs(_image(jpeg).astype(np.int64) - expected).mean() < 6
    # an explicit window, sigmoid
    sigmoid = _image(client.get(_url(ds), params={"window": "-600,1500,sigmoid", "accept": "image/png"}))
    hu = ds.pixel_array.astype(np.float64) - 1024
    expected_sigmoid = np.floor(255 / (1 + np.exp(-4 * (hu + 600) / 1500)) + 0.5)
    assert np.abs(sigmoid.astype(np.int64) - expected_sigmoid).max() <= 1


def test_etag_cache_control_and_accept(web: WebArchive) -> None:
    ds = _ct(web, 1)[0]
    client = web.client("radiologist")
    first = client.get(_url(ds))
    tag = first.headers["etag"]
    assert tag.startswith('"') and not tag.startswith("W/")
    assert first.headers["cache-control"] == "private, max-age=86400"
    again = client.get(_url(ds), headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == tag
    # other parameters, other tag
    png = client.get(_url(ds), params={"accept": "image/png"}, headers={"Accept": "image/jpeg"})
    assert png.headers["content-type"] == "image/png" and png.headers["etag"] != tag
    assert client.get(_url(ds), headers={"Accept": "image/webp, image/png;q=0.5"}).headers["content-type"] == "image/png"
    windowed = client.get(_url(ds), params={"window": "40,400"})
    assert windowed.headers["etag"] != tag
    for refused in ({"headers": {"Accept": "image/gif"}}, {"params": {"accept": "application/dicom"}}):
        reply = client.get(_url(ds), **refused)  # type: ignore[arg-type]
        assert reply.status_code == 406 and reply.headers["content-type"] == "application/problem+json"


def test_viewport_quality_and_source_region(web: WebArchive) -> None:
    ds = read(sample_bytes("JPEG-LL.dcm"))  # 256 wide, 1024 high, signed 16-bit, JPEG lossless
    _ingest_bytes(web, sample_bytes("JPEG-LL.dcm"))
    client = web.client()
    full = _image(client.get(_url(ds), params={"accept": "image/png"}))
    assert full.shape == (1024, 256)
    assert Image.open(BytesIO(client.get(_url(ds), params={"viewport": "64,64"}).content)).size == (16, 64)
    assert Image.open(BytesIO(client.get(_url(ds), params={"viewport": "128"}).content)).size == (128, 512)
    small = client.get(_url(ds), params={"quality": "10"}).content
    large = client.get(_url(ds), params={"quality": "95"}).content
    assert len(small) < len(large)
    # vw,vh,sx,sy,sw,sh: the top-left 100x50 region, then the same flipped left to right
    region = _image(client.get(_url(ds), params={"viewport": "100,50,0,0,100,50", "accept": "image/png"}))
    assert region.shape == (50, 100)
    flipped = _image(client.get(_url(ds), params={"viewport": "100,50,99,0,-100,50", "accept": "image/png"}))
    assert np.array_equal(flipped, region[:, ::-1])


def test_monochrome1_is_shown_inverted(web: WebArchive) -> None:
    dx = synthetic.dx_image(rows=64, cols=48, seed=3, photometric="MONOCHROME1")
    _ingest_bytes(web, to_part10(dx))
    picture = _image(web.client().get(_url(dx), params={"accept": "image/png"}))
    assert picture.shape == (64, 48)
    expected = 255 - _linear(dx.pixel_array, 2047, 3000)  # the object's window, then inverted
    assert np.abs(picture.astype(np.int64) - expected).max() <= 1
    # low stored values (dense anatomy in MONOCHROME1) are bright
    low, high = np.unravel_index(dx.pixel_array.argmin(), dx.pixel_array.shape), np.unravel_index(dx.pixel_array.argmax(), dx.pixel_array.shape)
    assert picture[low] > picture[high]


def test_rgb_and_ybr_images(web: WebArchive) -> None:
    names = ("SC_rgb.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_ybr_full_uncompressed.dcm")
    for name in names:
        _ingest_bytes(web, sample_bytes(name))
    client = web.client()
    rgb = read(sample_bytes("SC_rgb.dcm")).pixel_array
    exact = _image(client.get(_url(read(sample_bytes("SC_rgb.dcm"))), params={"accept": "image/png"}))
    assert exact.shape == (100, 100, 3) and np.array_equal(exact, rgb)
    for name in names[1:]:
        reply = client.get(_url(read(sample_bytes(name))), params={"accept": "image/png"})
        assert reply.status_code == 200, reply.text
        picture = _image(reply)
        assert Image.open(BytesIO(reply.content)).mode == "RGB"
        # YCbCr converted to RGB: the same colours as the RGB original, up to rounding and JPEG
        assert np.abs(picture.astype(np.int64) - rgb.astype(np.int64)).mean() < 4, name
    jpeg = client.get(_url(read(sample_bytes("SC_rgb.dcm"))))
    assert Image.open(BytesIO(jpeg.content)).mode == "RGB"


def test_multiframe_frames(web: WebArchive) -> None:
    ds = read(sample_bytes("emri_small.dcm"))  # MR, 10 frames of 64x64, no window: the pixel range
    _ingest_bytes(web, sample_bytes("emri_small.dcm"))
    client = web.client()

    def expected(frame: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        lo, hi = int(frame.min()), int(frame.max())
        return np.floor((frame.astype(np.float64) - lo) / (hi - lo) * 255 + 0.5).astype(np.int64)

    first = _image(client.get(_url(ds), params={"accept": "image/png"}))
    assert np.abs(first.astype(np.int64) - expected(ds.pixel_array[0])).max() <= 1  # the first frame
    third = _image(client.get(_url(ds, "frames/3/rendered"), params={"accept": "image/png"}))
    assert np.abs(third.astype(np.int64) - expected(ds.pixel_array[2])).max() <= 1
    several = client.get(_url(ds, "frames/2,10/rendered"), headers={"Accept": 'multipart/related; type="image/png"'})
    parts = _multipart(several)
    assert [h["Content-Type"] for h, _ in parts] == ["image/png", "image/png"]
    assert parts[1][0]["Content-Location"].endswith(f"/instances/{ds.SOPInstanceUID}/frames/10/rendered")
    tenth = np.asarray(Image.open(BytesIO(parts[1][1])))
    assert np.abs(tenth.astype(np.int64) - expected(ds.pixel_array[9])).max() <= 1
    missing = client.get(_url(ds, "frames/11/rendered"))
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    assert client.get(_url(ds, "frames/0/rendered")).status_code == 400
    assert client.get(_url(ds, "frames/x/thumbnail")).status_code == 400


def test_series_and_study_rendered_as_multipart(web: WebArchive) -> None:
    series = _ct(web)
    report = synthetic.sr_document(seed=21, study_uid=series[0].StudyInstanceUID)
    _ingest_bytes(web, to_part10(report))
    client = web.client()
    ds = series[0]
    for url in (
        f"{DICOMWEB}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/rendered",
        f"{DICOMWEB}/studies/{ds.StudyInstanceUID}/rendered",
    ):
        reply = client.get(url)
        assert reply.status_code == 200, reply.text
        assert 'type="image/jpeg"' in reply.headers["content-type"]
        parts = _multipart(reply)
        assert len(parts) == 3  # the SR has no image
        locations = [h["Content-Location"] for h, _ in parts]
        assert locations == [f"http://testserver{_url(s)}" for s in series]
        for _headers, body in parts:
            image = Image.open(BytesIO(body))
            assert image.format == "JPEG" and image.size == (64, 64)
        assert client.get(url, headers={"If-None-Match": reply.headers["etag"]}).status_code == 304
    # the report alone: nothing to render
    sr = client.get(_url(report))
    assert sr.status_code == 422 and sr.headers["content-type"] == "application/problem+json"


def test_thumbnails_are_representative_and_cached(web: WebArchive, monkeypatch: pytest.MonkeyPatch) -> None:
    series = _ct(web, 5)
    other = list(synthetic.ct_series(2, rows=64, cols=64, seed=21, series_number=2))
    for ds in other:
        _ingest_bytes(web, to_part10(ds))
    client = web.client("clinician")
    ds = series[0]
    study_url = f"{DICOMWEB}/studies/{ds.StudyInstanceUID}/thumbnail"
    reply = client.get(study_url)
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/jpeg"
    assert Image.open(BytesIO(reply.content)).size == (128, 128)
    # the middle instance of the largest series
    middle = client.get(_url(series[2], "thumbnail"))
    assert middle.content == reply.content
    series_reply = client.get(f"{DICOMWEB}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/thumbnail")
    assert series_reply.content == reply.content
    cache_root = web.archive.settings.data / "cache" / "thumbnails"
    assert len([p for p in cache_root.glob("*/*") if p.suffix == ".jpg"]) == 1
    # a second request reads no object
    def no_reads(*_args: Any) -> bytes:
        raise AssertionError("the object was read")

    monkeypatch.setattr(web.app.state.web.retriever, "read", no_reads)
    cached = client.get(study_url)
    assert cached.status_code == 200 and cached.content == reply.content
    assert client.get(study_url, headers={"If-None-Match": reply.headers["etag"]}).status_code == 304
    monkeypatch.undo()
    # parameters: a viewport keeps the aspect ratio; PNG
    png = client.get(_url(ds, "thumbnail"), params={"viewport": "64,32", "accept": "image/png"})
    assert png.headers["content-type"] == "image/png" and Image.open(BytesIO(png.content)).size == (32, 32)
    frame = client.get(_url(ds, "frames/1/thumbnail"))
    assert frame.status_code == 200 and Image.open(BytesIO(frame.content)).size == (128, 128)


def test_thumbnail_cache_stays_bounded(tmp_path: Any) -> None:
    from viewer_api.dicomweb.rendered import ThumbnailCache

    cache = ThumbnailCache(tmp_path / "thumbs", limit=10_000)
    for i in range(30):
        cache.put(f"{i:064x}", "image/jpeg", bytes(1000))
    files = list((tmp_path / "thumbs").glob("*/*"))
    assert sum(p.stat().st_size for p in files) <= 10_000
    assert cache.get(f"{29:064x}", "image/jpeg") == bytes(1000)  # the newest is kept
    assert cache.get(f"{0:064x}", "image/jpeg") is None  # the oldest went


BAD_PARAMETERS = [
    {"window": "abc"},
    {"window": "40"},
    {"window": "40,0"},
    {"window": "40,400,cubic"},
    {"viewport": "0,10"},
    {"viewport": "a,b"},
    {"viewport": "10,10,0,0,0,5"},
    {"viewport": "10,10,500,0,5,5"},
    {"quality": "0"},
    {"quality": "best"},
    {"annotation": "patient"},
    {"quality": "\u00b2"},
    {"viewport": "\u00b2,3"},
    {"window": "1e400,10"},
    {"window": "nan,10"},
]


def test_bad_parameters_are_400_problems(web: WebArchive) -> None:
    ds = synthetic.dx_image(rows=32, cols=32, seed=4)
    _ingest_bytes(web, to_part10(ds))
    for params in BAD_PARAMETERS:
        for suffix in ("rendered", "thumbnail"):
            reply = web.client().get(_url(ds, suffix), params=params)
            assert reply.status_code == 400, (params, reply.text)
            assert reply.headers["content-type"] == "application/problem+json"
            assert reply.json()["detail"]
    cache_root = web.archive.settings.data / "cache" / "thumbnails"
    assert not list(cache_root.glob("*/*"))  # nothing was written
    assert web.client().get(_url(ds, "frames/\u00b2/rendered")).status_code == 400
    # odd but valid: extreme windows saturate, a viewport width alone fits the width
    for params in ({"window": "1e308,1e308"}, {"window": "-1e308,1e-300,linear-exact"}, {"viewport": "10,"}):
        reply = web.client().get(_url(ds), params=params)
        assert reply.status_code == 200, (params, reply.text)


def test_not_found_unauthenticated_and_audited(web: WebArchive) -> None:
    ds = _ct(web, 1)[0]
    client = web.client("integration")
    unknown = f"{DICOMWEB}/studies/1.2.3.4/series/1.2.3.5/instances/1.2.3.6/rendered"
    assert client.get(unknown).status_code == 404
    assert client.get(f"{DICOMWEB}/studies/1.2.3.4/thumbnail").status_code == 404
    assert client.get(f"{DICOMWEB}/studies/not-a-uid/rendered").status_code == 400
    assert web.anonymous.get(_url(ds)).status_code == 401
    assert client.get(_url(ds)).status_code == 200
    assert client.get(_url(ds, "thumbnail")).status_code == 200
    web.flush_audit()
    events = {(e.action, e.outcome, e.actor, e.sop_instance_uid) for e in web.archive.index.audit_events(20)}
    assert ("dicomweb.rendered", "success", "integration1", ds.SOPInstanceUID) in events
    assert ("dicomweb.thumbnail", "success", "integration1", ds.SOPInstanceUID) in events
