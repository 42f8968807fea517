"""WADO-URI (PS3.18 9) over HTTP against the real app and archive."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless

from storage.index import RetrievableInstance
from tests.fixtures import synthetic
from tests.web.conftest import WebArchive


@pytest.fixture
def ct(web: WebArchive, tmp_path: Path) -> tuple[WebArchive, RetrievableInstance, Path]:
    """One CT slice stored (and compressed to JPEG-LS by the background worker)."""
    path = synthetic.write_datasets(synthetic.ct_series(2, rows=64, cols=64, seed=21), tmp_path / "ct")[0]
    web.ingest_file(path)
    web.archive.compressor().drain()
    sop = str(dcmread(path).SOPInstanceUID)
    item = web.archive.index.retrievable(sop_instance_uids=[sop])[0]
    return web, item, path


def query(item: RetrievableInstance, **extra: str) -> dict[str, str]:
    return {
        "requestType": "WADO",
        "studyUID": item.study_instance_uid,
        "seriesUID": item.series_instance_uid,
        "objectUID": item.sop_instance_uid,
        **extra,
    }


def get(web: WebArchive, params: dict[str, str], role: str = "integration") -> Any:
    return web.client(role).get("/wado", params=params)


def test_application_dicom_as_stored(ct: tuple[WebArchive, RetrievableInstance, Path]) -> None:
    web, item, _path = ct
    assert item.stored_transfer_syntax == JPEGLSLossless
    reply = get(web, query(item, contentType="application/dicom"))
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == f"application/dicom; transfer-syntax={JPEGLSLossless}"
    assert reply.content == web.archive.store.read(item.object_key)
    web.flush_audit()
    event = next(e for e in web.archive.index.audit_events(20) if e.action == "dicomweb.wado-uri")
    assert (event.outcome, event.actor, event.sop_instance_uid) == ("success", "integration1", item.sop_instance_uid)


@pytest.mark.parametrize("syntax", [str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)])
def test_application_dicom_transcoded_pixel_exact(ct: tuple[WebArchive, RetrievableInstance, Path], syntax: str) -> None:
    web, item, path = ct
    reply = get(web, query(item, contentType="application/dicom", transferSyntax=syntax))
    assert reply.status_code == 200, reply.text
    ds = dcmread(BytesIO(reply.content))
    assert ds.file_meta.TransferSyntaxUID == syntax
    sent = dcmread(path)
    assert np.array_equal(ds.pixel_array, sent.pixel_array)
    assert ds.PatientName == sent.PatientName


def test_unofferable_transfer_syntax_is_406(ct: tuple[WebArchive, RetrievableInstance, Path]) -> None:
    web, item, _path = ct
    reply = get(web, query(item, contentType="application/dicom", transferSyntax="1.2.840.10008.1.2.4.90"))
    assert reply.status_code == 406
    assert reply.headers["content-type"].startswith("application/problem+json")


BAD_PARAMETERS: list[tuple[dict[str, str | None], str]] = [
    ({"requestType": None}, "requestType is required"),
    ({"requestType": "WADO-RS"}, "must be WADO"),
    ({"studyUID": None}, "studyUID is required"),
    ({"seriesUID": None}, "seriesUID is required"),
    ({"objectUID": None}, "objectUID is required"),
    ({"objectUID": "1.2.abc"}, "not a DICOM UID"),
    ({"anonymize": "yes"}, "anonymize is not supported"),
    ({"annotation": "patient"}, "annotation is not supported"),
    ({"region": "0.1,0.1,0.5,0.5"}, "region is not supported"),
    ({"charset": "ISO-8859-1"}, "charset"),
    ({"windowCenter": "40"}, "go together"),
    ({"windowCenter": "40", "windowWidth": "0"}, "greater than 0"),
    ({"windowCenter": "x", "windowWidth": "400"}, "not a number"),
    ({"rows": "-3"}, "rows must be"),
    ({"imageQuality": "101"}, "imageQuality must be"),
    ({"frameNumber": "0"}, "frameNumber must be"),
    ({"contentType": "application/dicom", "frameNumber": "1"}, "frameNumber"),
    ({"contentType": "application/dicom", "rows": "64"}, "rendered images"),
    ({"contentType": "image/png", "transferSyntax": "1.2.840.10008.1.2.1"}, "transferSyntax applies"),
]


def test_bad_parameters_are_400_and_say_why(ct: tuple[WebArchive, RetrievableInstance, Path]) -> None:
    web, item, _path = ct
    for change, words in BAD_PARAMETERS:
        params = query(item)
        for name, value in change.items():
            if value is None:
                params.pop(name)
            else:
                params[name] = value
        reply = get(web, params)
        assert reply.status_code == 400, (change, reply.text)
        assert reply.headers["content-type"].startswith("application/problem+json")
        assert words in reply.json()["detail"], (change, reply.json())


def test_charset_utf8_is_accepted(ct: tuple[WebArchive, RetrievableInstance, Path]) -> None:
    web, item, _path = ct
    assert get(web, query(item, contentType="application/dicom", charset="UTF-8")).status_code == 200


def test_unknown_object_is_404_and_unknown_content_type_406(ct: tuple[WebArchive, RetrievableInstance, Path]) -> None:
    web, item, _path = ct
    reply = get(web, query(item, objectUID="1.2.3.4.5.6.7"))
    assert reply.status_code == 404
    assert reply.headers["content-type"].startswith("application/problem+json")
    # The right instance under the wrong series is not found either.
    assert get(web, query(item, seriesUID="1.2.3")).status_code == 404
    assert get(web, query(item, contentType="text/html")).status_code == 406


def test_needs_read_permission(ct: tuple[WebArchive, RetrievableInstance, Path]) -> None:
    web, item, _path = ct
    assert web.anonymous.get("/wado", params=query(item)).status_code == 401


# --- rendered images -----------------------------------------------------------------------------
def _image(reply: Any) -> Image.Image:
    assert reply.status_code == 200, reply.text
    return Image.open(BytesIO(reply.content))


def test_single_frame_image_defaults_to_jpeg(ct: tuple[WebArchive, RetrievableInstance, Path]) -> None:
    web, item, _path = ct
    reply = get(web, query(item))
    assert reply.headers["content-type"] == "image/jpeg"
    image = _image(reply)
    assert image.format == "JPEG" and image.size == (64, 64) and image.mode == "L"
    web.flush_audit()
    event = next(e for e in web.archive.index.audit_events(20) if e.action == "dicomweb.wado-uri")
    assert '"content_type": "image/jpeg"' in event.detail


def test_png_in_a_viewport_with_a_window(ct: tuple[WebArchive, RetrievableInstance, Path]) -> None:
    web, item, _path = ct
    image = _image(get(web, query(item, contentType="image/gif, image/png", rows="32")))
    assert image.format == "PNG" and image.size == (32, 32)
    assert _image(get(web, query(item, contentType="image/png", rows="500", columns="500"))).size == (64, 64)  # never enlarged
    default = np.asarray(_image(get(web, query(item, contentType="image/png"))))
    lung = np.asarray(_image(get(web, query(item, contentType="image/png", windowCenter="-600", windowWidth="1500"))))
    assert default.shape == lung.shape and not np.array_equal(default, lung)
    low = get(web, query(item, imageQuality="5"))
    high = get(web, query(item, imageQuality="100"))
    assert len(low.content) < len(high.content)
    reply = get(web, query(item, contentType="image/png", windowCenter="40", windowWidth="0.5"))
    assert reply.status_code == 400 and "at least 1" in reply.json()["detail"]


def test_multiframe_and_non_image_objects(web: WebArchive, tmp_path: Path) -> None:
    us = synthetic.write_datasets([synthetic.us_multiframe(4, rows=48, cols=64, seed=22)], tmp_path / "us")[0]
    sr = synthetic.write_datasets([synthetic.sr_document(seed=22)], tmp_path / "sr")[0]
    for path in (us, sr):
        web.ingest_file(path)
    us_item = web.archive.index.retrievable(sop_instance_uids=[str(dcmread(us).SOPInstanceUID)])[0]
    sr_item = web.archive.index.retrievable(sop_instance_uids=[str(dcmread(sr).SOPInstanceUID)])[0]
    # Without contentType a multi-frame image and a report go as DICOM.
    for item in (us_item, sr_item):
        reply = get(web, query(item))
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("application/dicom")
    frame = _image(get(web, query(us_item, frameNumber="3")))
    assert frame.format == "JPEG" and frame.size == (64, 48)
    reply = get(web, query(us_item, contentType="image/png", frameNumber="9"))
    assert reply.status_code == 400 and "4 frame" in reply.json()["detail"]
    reply = get(web, query(sr_item, contentType="image/jpeg"))
    assert reply.status_code == 406 and "not an image" in reply.json()["detail"]
