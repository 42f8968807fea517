"""STOW-RS (PS3.18 10.5) over HTTP against the real app and archive: real multipart bodies
built here, then the index and the object store are asked what was stored."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.fixtures import synthetic
from tests.web.conftest import WebArchive

BOUNDARY = "filmless-test-boundary-7d1f"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
CANNOT_UNDERSTAND, NOT_SOP_CLASS, OUT_OF_RESOURCES = 0xC000, 0xA900, 0xA700


def ct_files(n: int, seed: int = 1, *, study_uid: str | None = None, size: int = 32) -> list[bytes]:
    """``n`` small synthetic CT slices of one study, as Part 10 bytes."""
    out = []
    for ds in synthetic.ct_series(n, rows=size, cols=size, seed=seed, study_uid=study_uid):
        buf = BytesIO()
        synthetic.encode(ds).save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def multipart(*parts: bytes | tuple[bytes, str | None], boundary: str = BOUNDARY) -> bytes:
    body = b""
    for part in parts:
        data, ctype = part if isinstance(part, tuple) else (part, "application/dicom")
        body += f"--{boundary}\r\n".encode()
        if ctype is not None:
            body += f"Content-Type: {ctype}\r\n".encode()
        body += b"\r\n" + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def uids(data: bytes) -> tuple[str, str, str, str]:
    ds = dcmread(BytesIO(data))
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), str(ds.SOPClassUID)


def post(web: WebArchive, body: bytes | Iterator[bytes], *, role: str = "technologist", path: str = "/dicom-web/studies", content_type: str = CONTENT_TYPE) -> Any:
    return web.client(role).post(path, content=body, headers={"Content-Type": content_type})


def response_dataset(reply: Any) -> Dataset:
    assert reply.headers["content-type"] == "application/dicom+json"
    return Dataset.from_json(reply.json())


def test_store_instances_all_stored_and_retrievable(web: WebArchive) -> None:
    files = ct_files(3)
    study_uid = uids(files[0])[0]
    reply = post(web, multipart(*files))
    assert reply.status_code == 200, reply.text
    ds = response_dataset(reply)
    assert ds.RetrieveURL == f"http://testserver/dicom-web/studies/{study_uid}"
    assert "FailedSOPSequence" not in ds
    assert len(ds.ReferencedSOPSequence) == 3
    for item, data in zip(ds.ReferencedSOPSequence, files, strict=True):
        _study, series, sop, sop_class = uids(data)
        assert item.ReferencedSOPInstanceUID == sop and item.ReferencedSOPClassUID == sop_class
        assert item.RetrieveURL == f"http://testserver/dicom-web/studies/{study_uid}/series/{series}/instances/{sop}"
    # In the index, and the objects read back hold what was sent.
    found = web.archive.index.retrievable(study_uids=[study_uid])
    assert {f.sop_instance_uid for f in found} == {uids(f)[2] for f in files}
    retriever = web.app.state.web.retriever
    sent = {uids(f)[2]: dcmread(BytesIO(f)) for f in files}
    for item in found:
        back = dcmread(BytesIO(retriever.read(item)))
        assert back.PixelData == sent[item.sop_instance_uid].PixelData
        assert back.PatientName == sent[item.sop_instance_uid].PatientName
    events = [e for e in web.archive.index.audit_events(50) if e.action == "dicomweb.stow"]
    assert events and events[0].outcome == "success" and events[0].actor == "technologist1"
    assert events[0].study_instance_uid == study_uid
    rows = {r.sop_instance_uid: r for r in (web.archive.index.get_instance(u) for u in sent) if r is not None}
    assert all(r.source_host == "http:testclient" for r in rows.values())


def test_garbage_and_truncated_parts_fail_alone(web: WebArchive) -> None:
    good = ct_files(2, seed=2)
    truncated = ct_files(1, seed=3)[0]
    reply = post(web, multipart(good[0], b"this is not DICOM at all", truncated[: len(truncated) - 700], good[1]))
    assert reply.status_code == 202, reply.text
    ds = response_dataset(reply)
    assert [i.ReferencedSOPInstanceUID for i in ds.ReferencedSOPSequence] == [uids(g)[2] for g in good]
    reasons = [i.FailureReason for i in ds.FailedSOPSequence]
    assert reasons == [CANNOT_UNDERSTAND, CANNOT_UNDERSTAND]
    # The truncated file's header could be read: its failure names it.
    assert ds.FailedSOPSequence[1].ReferencedSOPInstanceUID == uids(truncated)[2]
    assert "part 2" in reply.headers["warning"] and "part 3" in reply.headers["warning"]
    assert web.archive.index.get_instance(uids(truncated)[2]) is None
    assert web.archive.index.stats()["instances"] == 2


def test_all_parts_failing_is_409(web: WebArchive) -> None:
    reply = post(web, multipart(b"garbage one", b"garbage two"))
    assert reply.status_code == 409
    ds = response_dataset(reply)
    assert len(ds.FailedSOPSequence) == 2 and "ReferencedSOPSequence" not in ds
    assert web.archive.index.stats()["instances"] == 0


def test_study_path_refuses_instances_of_another_study(web: WebArchive) -> None:
    target = ct_files(2, seed=4)
    other = ct_files(1, seed=5)[0]
    study_uid = uids(target[0])[0]
    reply = post(web, multipart(target[0], other, target[1]), path=f"/dicom-web/studies/{study_uid}")
    assert reply.status_code == 202
    ds = response_dataset(reply)
    assert [i.FailureReason for i in ds.FailedSOPSequence] == [NOT_SOP_CLASS]
    assert ds.FailedSOPSequence[0].ReferencedSOPInstanceUID == uids(other)[2]
    assert ds.RetrieveURL.endswith(f"/studies/{study_uid}")
    assert web.archive.index.get_instance(uids(other)[2]) is None
    assert web.archive.index.stats()["instances"] == 2
    assert post(web, multipart(target[0]), path="/dicom-web/studies/not-a-uid").status_code == 400


def test_duplicates_count_as_stored(web: WebArchive) -> None:
    files = ct_files(2, seed=6)
    assert post(web, multipart(*files)).status_code == 200
    objects = set(web.archive.store.keys())
    reply = post(web, multipart(files[0], files[0], files[1]))
    assert reply.status_code == 200
    assert len(response_dataset(reply).ReferencedSOPSequence) == 3
    assert web.archive.index.stats()["instances"] == 2
    assert set(web.archive.store.keys()) == objects


def test_parts_may_omit_their_content_type_and_the_type_parameter(web: WebArchive) -> None:
    files = ct_files(2, seed=7)
    content_type = f"multipart/related; boundary={BOUNDARY}"
    reply = post(web, multipart((files[0], None), (files[1], "application/dicom; transfer-syntax=*")), content_type=content_type)
    assert reply.status_code == 200, reply.text
    reply = post(web, multipart((ct_files(1, seed=8)[0], "application/dicom+json")))
    assert reply.status_code == 409
    assert "application/dicom+json" in reply.headers["warning"]


def _no_change(web: WebArchive) -> None:
    assert web.archive.index.stats()["instances"] == 0
    assert list(web.archive.store.keys()) == []


def test_oversized_body_is_413_and_stores_nothing(make_web: Any) -> None:
    web = make_web(max_upload_size=10000)
    files = ct_files(4, seed=9)
    body = multipart(*files)
    assert len(body) > 10000
    reply = post(web, body)
    assert reply.status_code == 413
    assert reply.headers["content-type"].startswith("application/problem+json")
    _no_change(web)

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted while it streams
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    reply = post(web, chunked())
    assert reply.status_code == 413
    assert "nothing was stored" in reply.json()["detail"]
    _no_change(web)
    web.flush_audit()
    events = [e for e in web.archive.index.audit_events(50) if e.action == "dicomweb.stow"]
    assert [e.outcome for e in events] == ["failure", "failure"]


def test_part_over_max_object_size_fails_alone(make_web: Any) -> None:
    web = make_web(max_object_size=4096)
    small = Dataset()
    small.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    small.SOPInstanceUID = generate_uid()
    small.StudyInstanceUID = generate_uid()
    small.SeriesInstanceUID = generate_uid()
    small.PatientID = "P-STOW"
    small.Modality = "OT"
    buf = BytesIO()
    small.save_as(buf, implicit_vr=False, little_endian=True)
    big = ct_files(1, seed=10, size=64)[0]
    assert len(big) > 4096
    reply = post(web, multipart(big, buf.getvalue()))
    assert reply.status_code == 202, reply.text
    ds = response_dataset(reply)
    assert [i.FailureReason for i in ds.FailedSOPSequence] == [OUT_OF_RESOURCES]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/dicom",
        'multipart/related; type="application/dicom+json"; boundary=x',
        'multipart/related; type="application/dicom+xml"; boundary=x',
        "application/json",
    ],
)
def test_unsupported_media_types_are_415(web: WebArchive, content_type: str) -> None:
    reply = post(web, ct_files(1, seed=11)[0], content_type=content_type)
    assert reply.status_code == 415
    assert reply.headers["content-type"].startswith("application/problem+json")
    if "dicom+json" in content_type:
        assert "not supported" in reply.json()["detail"]
    _no_change(web)


@pytest.mark.parametrize(
    "body",
    [
        b"no multipart here",
        multipart(b"abc", boundary="another-boundary"),
        multipart(b"abc")[:-30],  # no closing delimiter
        b"--" + BOUNDARY.encode() + b"--\r\n",  # no part at all
    ],
)
def test_unparsable_bodies_are_400(web: WebArchive, body: bytes) -> None:
    reply = post(web, body)
    assert reply.status_code == 400
    assert reply.headers["content-type"].startswith("application/problem+json")
    _no_change(web)


def test_truncated_body_stores_nothing(web: WebArchive) -> None:
    body = multipart(*ct_files(2, seed=12))
    reply = post(web, body[: len(body) // 2 + 100])
    assert reply.status_code == 400
    _no_change(web)


def test_permission_store_is_needed(web: WebArchive) -> None:
    body = multipart(ct_files(1, seed=13)[0])
    assert post(web, body, role="clinician").status_code == 403
    reply = web.anonymous.post("/dicom-web/studies", content=body, headers={"Content-Type": CONTENT_TYPE})
    assert reply.status_code == 401
    assert post(web, body, role="integration").status_code == 200
