"""WADO-RS over HTTP against a real archive: instances in the asked transfer syntax, metadata
from the cache, frames native and as stored, bulk data, caching headers and byte ranges."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import func, select

from storage.index.schema import instance_metadata
from tests.fixtures.synthetic import ct_series, write_datasets
from tests.web.conftest import WebArchive

JPEG_LS = "1.2.840.10008.1.2.4.80"
EXPLICIT = "1.2.840.10008.1.2.1"
SLICES = 3


def parse_multipart(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/related body: (headers, bytes)."""
    assert content_type.startswith("multipart/related"), content_type
    boundary = next(p.split("=", 1)[1].strip('"') for p in content_type.split(";") if p.strip().startswith("boundary="))
    delimiter = b"--" + boundary.encode()
    assert body.endswith(delimiter + b"--\r\n")
    parts = []
    for chunk in body.split(delimiter)[1:-1]:
        assert chunk.startswith(b"\r\n") and chunk.endswith(b"\r\n")
        head, _, payload = chunk[2:-2].partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        parts.append(({k.lower(): v for k, v in headers.items()}, payload))
    return parts


@pytest.fixture
def ct(web: WebArchive, tmp_path: Path) -> dict[str, Any]:
    """A small CT series, ingested and compressed to JPEG-LS by the background worker."""
    datasets = list(ct_series(SLICES, rows=64, cols=64, seed=7))
    paths = write_datasets(datasets, tmp_path / "ct")
    for path in paths:
        web.ingest_file(path)
    web.archive.compressor(worker_id="test").drain()
    first = datasets[0]
    return {
        "study": str(first.StudyInstanceUID),
        "series": str(first.SeriesInstanceUID),
        "instances": [str(ds.SOPInstanceUID) for ds in datasets],
        "pixels": {str(ds.SOPInstanceUID): bytes(ds.PixelData) for ds in datasets},
        "paths": paths,
    }


def _url(ct: dict[str, Any], instance: int | None = None, suffix: str = "") -> str:
    url = f"/dicom-web/studies/{ct['study']}/series/{ct['series']}"
    if instance is not None:
        url += f"/instances/{ct['instances'][instance]}"
    return url + suffix


def _datasets(reply: Any) -> list[Dataset]:
    return [dcmread(BytesIO(payload)) for _headers, payload in parse_multipart(reply.headers["content-type"], reply.content)]


def test_series_default_is_explicit_little_endian_pixel_exact(web: WebArchive, ct: dict[str, Any]) -> None:
    reply = web.client("clinician").get(_url(ct), headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert reply.status_code == 200, reply.text
    datasets = _datasets(reply)
    assert [str(ds.SOPInstanceUID) for ds in datasets] == ct["instances"]
    for ds in datasets:
        assert ds.file_meta.TransferSyntaxUID == EXPLICIT
        assert bytes(ds.PixelData) == ct["pixels"][str(ds.SOPInstanceUID)]
    assert reply.headers["etag"].startswith('"')


def test_series_as_stored_is_jpeg_ls(web: WebArchive, ct: dict[str, Any]) -> None:
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    reply = web.client().get(_url(ct), headers={"Accept": accept})
    assert reply.status_code == 200
    parts = parse_multipart(reply.headers["content-type"], reply.content)
    assert all(headers["content-type"] == f"application/dicom; transfer-syntax={JPEG_LS}" for headers, _ in parts)
    for headers, payload in parts:
        ds = dcmread(BytesIO(payload))
        assert ds.file_meta.TransferSyntaxUID == JPEG_LS
        assert headers["content-location"].endswith(f"/instances/{ds.SOPInstanceUID}")
        assert np.array_equal(ds.pixel_array.tobytes(), ct["pixels"][str(ds.SOPInstanceUID)])


def test_study_retrieve_streams_every_instance(web: WebArchive, ct: dict[str, Any]) -> None:
    reply = web.client().get(f"/dicom-web/studies/{ct['study']}", headers={"Accept": "*/*"})
    assert reply.status_code == 200
    assert len(_datasets(reply)) == SLICES


def test_implicit_little_endian_on_request(web: WebArchive, ct: dict[str, Any]) -> None:
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2'
    reply = web.client().get(_url(ct, 0), headers={"Accept": accept})
    assert reply.status_code == 200
    (ds,) = _datasets(reply)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert bytes(ds.PixelData) == ct["pixels"][ct["instances"][0]]


def test_unsupported_transfer_syntax_and_media_type_are_406(web: WebArchive, ct: dict[str, Any]) -> None:
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
    reply = web.client().get(_url(ct, 0), headers={"Accept": accept})
    assert reply.status_code == 406 and reply.headers["content-type"].startswith("application/problem+json")
    assert web.client().get(_url(ct, 0), headers={"Accept": "image/png"}).status_code == 406


def test_single_instance_as_application_dicom_honours_ranges(web: WebArchive, ct: dict[str, Any]) -> None:
    client = web.client()
    accept = "application/dicom; transfer-syntax=*"
    whole = client.get(_url(ct, 1), headers={"Accept": accept})
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    assert whole.content[128:132] == b"DICM"
    part = client.get(_url(ct, 1), headers={"Accept": accept, "Range": "bytes=128-131"})
    assert part.status_code == 206 and part.content == b"DICM"
    assert part.headers["content-range"] == f"bytes 128-131/{len(whole.content)}"
    tail = client.get(_url(ct, 1), headers={"Accept": accept, "Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == whole.content[-10:]
    beyond = client.get(_url(ct, 1), headers={"Accept": accept, "Range": f"bytes={len(whole.content)}-"})
    assert beyond.status_code == 416
    stale = client.get(_url(ct, 1), headers={"Accept": accept, "Range": "bytes=0-3", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == whole.content


def test_etag_gives_304(web: WebArchive, ct: dict[str, Any]) -> None:
    client = web.client()
    first = client.get(_url(ct, suffix="/metadata"))
    again = client.get(_url(ct, suffix="/metadata"), headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and not again.content


def test_series_metadata_is_made_once_and_points_at_bulk_data(web: WebArchive, ct: dict[str, Any]) -> None:
    client = web.client("radiologist")
    reply = client.get(_url(ct, suffix="/metadata"))
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("application/dicom+json")
    items = reply.json()
    assert [item["00080018"]["Value"][0] for item in items] == ct["instances"]
    first = items[0]
    assert first["00080005"]["Value"] == ["ISO_IR 192"]
    assert first["00083002"]["Value"] == [JPEG_LS]  # Available Transfer Syntax: as stored
    pixel_uri = first["7FE00010"]["BulkDataURI"]
    assert pixel_uri.startswith("http") and pixel_uri.endswith(f"/instances/{ct['instances'][0]}/bulkdata/7FE00010")
    assert "PatientName" not in json.dumps(first)  # keyed by tag, not keyword
    # Vietnamese text arrives intact as UTF-8.
    original = dcmread(ct["paths"][0])
    assert first["00100010"]["Value"][0]["Alphabetic"] == str(original.PatientName)
    with web.archive.index.read() as conn:
        assert conn.execute(select(func.count()).select_from(instance_metadata)).scalar_one() == SLICES
    # The second time comes from the cache, identical.
    assert client.get(_url(ct, suffix="/metadata")).content == reply.content
    study_level = client.get(f"/dicom-web/studies/{ct['study']}/metadata").json()
    instance_level = client.get(_url(ct, 2, "/metadata")).json()
    assert len(study_level) == SLICES and instance_level == [items[2]]


def test_frames_native_and_as_stored(web: WebArchive, ct: dict[str, Any]) -> None:
    client = web.client()
    uid = ct["instances"][0]
    native = client.get(_url(ct, 0, "/frames/1"), headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert native.status_code == 200, native.text
    ((headers, payload),) = parse_multipart(native.headers["content-type"], native.content)
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT}"
    assert payload == ct["pixels"][uid]
    # What a viewer (cornerstone) asks for: any syntax; it gets the JPEG-LS bitstream.
    accept = "multipart/related; type=application/octet-stream; transfer-syntax=*"
    stored = client.get(_url(ct, 0, "/frames/1"), headers={"Accept": accept})
    ((headers, payload),) = parse_multipart(stored.headers["content-type"], stored.content)
    assert headers["content-type"] == f"image/jls; transfer-syntax={JPEG_LS}"
    assert payload[:2] == b"\xff\xd8"  # a JPEG-LS codestream starts with SOI
    import jpeg_ls

    decoded = jpeg_ls.decode(np.frombuffer(payload, dtype=np.uint8))
    assert decoded.astype("<u2").tobytes() == ct["pixels"][uid] or decoded.astype("<i2").tobytes() == ct["pixels"][uid]
    jls = client.get(_url(ct, 0, "/frames/1"), headers={"Accept": 'multipart/related; type="image/jls"'})
    assert jls.status_code == 200
    assert parse_multipart(jls.headers["content-type"], jls.content)[0][1] == payload


def test_frames_errors(web: WebArchive, ct: dict[str, Any]) -> None:
    client = web.client()
    assert client.get(_url(ct, 0, "/frames/2")).status_code == 404
    assert client.get(_url(ct, 0, "/frames/0")).status_code == 400
    assert client.get(_url(ct, 0, "/frames/a,b")).status_code == 400
    reply = client.get(_url(ct, 0, "/frames/1"), headers={"Accept": 'multipart/related; type="image/jp2"'})
    assert reply.status_code == 406


def test_pixel_bulk_data(web: WebArchive, ct: dict[str, Any]) -> None:
    reply = web.client().get(_url(ct, 2, "/bulkdata/7FE00010"), headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert reply.status_code == 200
    ((_headers, payload),) = parse_multipart(reply.headers["content-type"], reply.content)
    assert payload == ct["pixels"][ct["instances"][2]]


def test_not_found_invalid_and_unauthenticated(web: WebArchive, ct: dict[str, Any]) -> None:
    client = web.client()
    assert client.get("/dicom-web/studies/1.2.3.4/metadata").status_code == 404
    bad = client.get("/dicom-web/studies/not-a-uid/metadata")
    assert bad.status_code == 400 and bad.headers["content-type"].startswith("application/problem+json")
    assert web.anonymous.get(_url(ct, suffix="/metadata")).status_code == 401


def test_reads_are_audited(web: WebArchive, ct: dict[str, Any]) -> None:
    web.client("clinician").get(_url(ct, suffix="/metadata"))
    web.flush_audit()
    events = [e for e in web.archive.index.audit_events(50) if e.action == "dicomweb.wado"]
    assert events and events[0].actor == "clinician1" and events[0].series_instance_uid == ct["series"]
    assert json.loads(events[0].detail)["resource"] == "metadata"
