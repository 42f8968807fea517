"""DELETE of DICOMweb resources to the trash, and GET /api/trash, over HTTP against the real app
and archive: what the other routes see afterwards, what stays in the store, who may do it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from storage.index import trash as trash_index
from storage.trash import RestoreOutcome, Trash
from storage.verify import verify
from tests.fixtures import synthetic
from tests.web.conftest import WebArchive


@pytest.fixture
def study(web: WebArchive, tmp_path: Path) -> dict[str, Any]:
    """A CT series of three slices and an SR report in one study."""
    cts = list(synthetic.ct_series(3, rows=32, cols=32, seed=31))
    sr = synthetic.sr_document(seed=31, study_uid=str(cts[0].StudyInstanceUID))
    sr.PatientID, sr.PatientName = cts[0].PatientID, cts[0].PatientName
    paths = synthetic.write_datasets(cts, tmp_path / "ct") + synthetic.write_datasets([sr], tmp_path / "sr")
    for path in paths:
        web.ingest_file(path)
    return {
        "study": str(cts[0].StudyInstanceUID),
        "ct_series": str(cts[0].SeriesInstanceUID),
        "sr_series": str(sr.SeriesInstanceUID),
        "ct": [str(ds.SOPInstanceUID) for ds in cts],
        "sr": str(sr.SOPInstanceUID),
        "paths": paths,
    }


def _qido_instances(web: WebArchive, study_uid: str) -> set[str]:
    reply = web.client("radiologist").get(f"/dicom-web/studies/{study_uid}/instances")
    if reply.status_code == 204:
        return set()
    assert reply.status_code == 200, reply.text
    return {item["00080018"]["Value"][0] for item in reply.json()}


def test_delete_an_instance_then_the_study(web: WebArchive, study: dict[str, Any]) -> None:
    admin = web.client("admin")
    objects = set(web.archive.store.keys())
    url = f"/dicom-web/studies/{study['study']}/series/{study['ct_series']}/instances/{study['ct'][1]}"
    reply = admin.delete(url, params={"reason": "slice of another patient"})
    assert reply.status_code == 204, reply.text
    assert _qido_instances(web, study["study"]) == {study["ct"][0], study["ct"][2], study["sr"]}
    reader = web.client("radiologist")
    assert reader.get(url).status_code == 404  # WADO-RS
    # The series and the study stay consistent: two CT slices and the report.
    series = reader.get(f"/dicom-web/studies/{study['study']}/series").json()
    counts = {s["0020000E"]["Value"][0]: s["00201209"]["Value"][0] for s in series}
    assert counts == {study["ct_series"]: 2, study["sr_series"]: 1}
    (found,) = reader.get("/dicom-web/studies", params={"StudyInstanceUID": study["study"]}).json()
    assert found["00201208"]["Value"] == [3] and found["00201206"]["Value"] == [2]
    assert web.archive.index.stats()["instances"] == 3

    assert admin.delete(f"/dicom-web/studies/{study['study']}", params={"reason": "wrong patient"}).status_code == 204
    assert _qido_instances(web, study["study"]) == set()
    assert web.archive.index.retrievable(study_uids=[study["study"]]) == []
    assert web.archive.index.stats()["studies"] == 0
    wado_uri = {"requestType": "WADO", "studyUID": study["study"], "seriesUID": study["sr_series"], "objectUID": study["sr"]}
    assert reader.get("/wado", params={**wado_uri, "contentType": "application/dicom"}).status_code == 404
    assert set(web.archive.store.keys()) == objects  # nothing left the store
    assert verify(web.archive.index, web.archive.store).ok
    # Deleting it again: nothing current matches.
    assert admin.delete(f"/dicom-web/studies/{study['study']}", params={"reason": "again"}).status_code == 404

    items = trash_index.items(web.archive.index)
    assert len(items) == 4 and {i.reason for i in items} == {"slice of another patient", "wrong patient"}
    assert {i.actor for i in items} == {"admin1"}
    web.flush_audit()
    events = [e for e in web.archive.index.audit_events(50) if e.action == "api.delete"]
    assert [e.outcome for e in events] == ["not-found", "success", "success"]
    assert events[2].sop_instance_uid == study["ct"][1] and "slice of another patient" in events[2].detail
    assert events[1].study_instance_uid == study["study"] and events[1].actor == "admin1"

    # Restored, it is the same again.
    results = Trash(web.archive.index, web.archive.store, web.archive.ingest).restore(items)
    assert {r.outcome for r in results} == {RestoreOutcome.RESTORED}
    assert _qido_instances(web, study["study"]) == {*study["ct"], study["sr"]}
    sent = dcmread(study["paths"][1])
    back = reader.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert back.status_code == 200 and sent.SOPInstanceUID.encode() in back.content
    assert verify(web.archive.index, web.archive.store).ok


def test_delete_a_series(web: WebArchive, study: dict[str, Any]) -> None:
    reply = web.client().delete(f"/dicom-web/studies/{study['study']}/series/{study['sr_series']}", params={"reason": "report filed twice"})
    assert reply.status_code == 204
    (found,) = web.client("radiologist").get("/dicom-web/studies", params={"StudyInstanceUID": study["study"]}).json()
    assert found["00080061"]["Value"] == ["CT"]
    assert _qido_instances(web, study["study"]) == set(study["ct"])


def test_only_admins_delete_and_a_reason_is_required(web: WebArchive, study: dict[str, Any]) -> None:
    url = f"/dicom-web/studies/{study['study']}"
    for role in ("radiologist", "clinician", "technologist", "integration"):
        reply = web.client(role).delete(url, params={"reason": "x"})
        assert reply.status_code == 403, role
        assert reply.headers["content-type"].startswith("application/problem+json")
    assert web.anonymous.delete(url, params={"reason": "x"}).status_code == 401
    for params in ({}, {"reason": "   "}):
        reply = web.client().delete(url, params=params)
        assert reply.status_code == 400
        assert "reason" in reply.json()["detail"]
    assert web.client().delete("/dicom-web/studies/not.a.uid", params={"reason": "x"}).status_code == 400
    assert web.archive.index.stats()["instances"] == 4
    assert trash_index.items(web.archive.index) == []


def test_list_the_trash(web: WebArchive, study: dict[str, Any]) -> None:
    admin = web.client()
    admin.delete(f"/dicom-web/studies/{study['study']}/series/{study['sr_series']}", params={"reason": "one"})
    admin.delete(f"/dicom-web/studies/{study['study']}", params={"reason": "two"})
    page = admin.get("/api/trash", params={"limit": 3})
    assert page.status_code == 200, page.text
    body = page.json()
    assert [i["reason"] for i in body["items"]] == ["two", "two", "two"] and body["next"] is not None
    rest = admin.get("/api/trash", params={"limit": 3, "before": body["next"]}).json()
    assert [i["reason"] for i in rest["items"]] == ["one"] and rest["next"] is None
    assert rest["items"][0]["sop_instance_uid"] == study["sr"] and rest["items"][0]["state"] == "trashed"
    assert "object_key" not in rest["items"][0]
    assert len(admin.get("/api/trash", params={"study": study["study"], "since": "2000-01-01"}).json()["items"]) == 4
    assert admin.get("/api/trash", params={"since": "2999-01-01"}).json()["items"] == []
    assert admin.get("/api/trash", params={"state": "purged"}).json()["items"] == []
    assert admin.get("/api/trash", params={"state": "gone"}).status_code == 400
    assert admin.get("/api/trash", params={"since": "yesterday"}).status_code == 400
    assert web.client("radiologist").get("/api/trash").status_code == 403
