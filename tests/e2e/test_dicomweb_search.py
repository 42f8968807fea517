"""QIDO-RS end to end: the ``dicomweb-client`` library (DICOMwebClient) against a running
``filmless serve`` on loopback, with studies sent over DICOM by DCMTK storescu.

One server for the module (admin made at start-up from FILMLESS_INITIAL_ADMIN_PASSWORD; an
EMR user with the integration role and an API key made through the API) holds:
- study A: a 3-slice CT of patient 0 (Nguyễn^Văn Đức);
- study B: a 2-slice CT of patient 1 (Trần^Thị Hương) and its SR report;
- study C: pydicom's CT_small.dcm (ISO_IR 100).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from tests.e2e.support import StartFilmless, Synthetic
from tests.fixtures.synthetic import VIETNAMESE_PATIENTS
from tests.peers import LOOPBACK, FilmlessServer, free_port, run_storescu

pytestmark = pytest.mark.e2e

ADMIN_PASSWORD = "e2e admin password"


@dataclass
class Loaded:
    server: FilmlessServer
    admin_token: str
    emr_key: str
    study_a: str
    study_b: str
    study_c: str
    series_a: str
    instances_a: list[str]

    @property
    def url(self) -> str:
        return f"{self.server.base_url}/dicom-web"

    def client(self, credential: str | None = None) -> DICOMwebClient:
        return DICOMwebClient(url=self.url, headers={"Authorization": f"Bearer {credential or self.admin_token}"})


def _pydicom_ct() -> Path:
    path = get_testdata_file("CT_small.dcm")
    assert isinstance(path, str)
    return Path(path)


@pytest.fixture(scope="module")
def loaded(start_filmless: StartFilmless, synthetic_data: Synthetic, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    a = synthetic_data.ct(84, slices=3, size=64)  # seed % 6: patient 0
    b = synthetic_data.ct(85, slices=2, size=64) + synthetic_data.sr(85)  # patient 1
    c = [_pydicom_ct()]
    # dicomweb-client sends "Host: 127.0.0.1" without the port (it sets the header itself),
    # so the address results point to comes from public_url, as it would in production.
    port = free_port()
    env = {"FILMLESS_INITIAL_ADMIN_PASSWORD": ADMIN_PASSWORD, "FILMLESS_PUBLIC_URL": f"http://{LOOPBACK}:{port}"}
    with start_filmless(http_port=port, env=env) as server:
        for paths in (a, b, c):
            run_storescu(paths, LOOPBACK, server.dicom_port, server.aet)
        with server.http() as http:
            reply = http.post("/api/token", data={"username": "admin", "password": ADMIN_PASSWORD})
            assert reply.status_code == 200, reply.text
            token = reply.json()["access_token"]
            auth = {"Authorization": f"Bearer {token}"}
            reply = http.post("/api/users", json={"username": "emr", "role": "integration"}, headers=auth)
            assert reply.status_code == 201, reply.text
            reply = http.post("/api/users/emr/api-keys", json={"description": "EMR"}, headers=auth)
            assert reply.status_code == 201, reply.text
            emr_key = reply.json()["key"]
        first = dcmread(a[0], stop_before_pixels=True)
        yield Loaded(
            server=server,
            admin_token=token,
            emr_key=emr_key,
            study_a=str(first.StudyInstanceUID),
            study_b=str(dcmread(b[0], stop_before_pixels=True).StudyInstanceUID),
            study_c=str(dcmread(c[0], stop_before_pixels=True).StudyInstanceUID),
            series_a=str(first.SeriesInstanceUID),
            instances_a=[str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in a],
        )


def uids(results: list[dict[str, Any]], tag: str = "0020000D") -> list[str]:
    return [r[tag]["Value"][0] for r in results]


def test_search_for_studies_with_filters_and_fields(loaded: Loaded) -> None:
    client = loaded.client()
    everything = client.search_for_studies()
    assert set(uids(everything)) == {loaded.study_a, loaded.study_b, loaded.study_c}
    datasets = {str(ds.StudyInstanceUID): ds for ds in map(Dataset.from_json, everything)}
    a = datasets[loaded.study_a]
    assert a.PatientName == VIETNAMESE_PATIENTS[0].name == "Nguyễn^Văn Đức"
    assert a.SpecificCharacterSet == "ISO_IR 192"
    assert a.RetrieveURL == f"{loaded.url}/studies/{loaded.study_a}"
    assert set(datasets[loaded.study_b].ModalitiesInStudy) == {"CT", "SR"}
    assert datasets[loaded.study_c].PatientName == "CompressedSamples^CT1"

    by_id = client.search_for_studies(search_filters={"PatientID": VIETNAMESE_PATIENTS[1].patient_id})
    assert uids(by_id) == [loaded.study_b]
    by_tag = client.search_for_studies(search_filters={"00100020": VIETNAMESE_PATIENTS[1].patient_id})
    assert uids(by_tag) == [loaded.study_b]
    with_fields = client.search_for_studies(
        search_filters={"StudyInstanceUID": loaded.study_a}, fields=["StudyDescription", "00080080"]
    )
    (study,) = map(Dataset.from_json, with_fields)
    assert study.StudyDescription == "CT ngực bụng có cản quang"
    assert study.InstitutionName == "Bệnh viện Đa khoa Tỉnh Quảng Nam"
    (every,) = client.search_for_studies(search_filters={"StudyInstanceUID": loaded.study_a}, fields=["all"])
    assert "00101002" in every  # OtherPatientIDsSequence


def test_fuzzy_matching_of_vietnamese_names(loaded: Loaded) -> None:
    client = loaded.client()
    # dicomweb-client percent-encodes the wild card (%2A) and the UTF-8 bytes.
    assert uids(client.search_for_studies(search_filters={"PatientName": "Nguyễn*"})) == [loaded.study_a]
    assert client.search_for_studies(search_filters={"PatientName": "nguyen*"}) == []
    assert uids(client.search_for_studies(search_filters={"PatientName": "nguyen*"}, fuzzymatching=True)) == [
        loaded.study_a
    ]
    assert uids(
        client.search_for_studies(search_filters={"PatientName": "tran^thi huong"}, fuzzymatching=True)
    ) == [loaded.study_b]
    assert client.search_for_studies(search_filters={"PatientName": "tran^thi huong"}, fuzzymatching=False) == []


def test_paging_with_limit_and_offset(loaded: Loaded) -> None:
    client = loaded.client()
    order = uids(client.search_for_studies())
    pages = [uids(client.search_for_studies(limit=1, offset=n)) for n in range(4)]
    assert pages == [[order[0]], [order[1]], [order[2]], []]
    # The library's own paging: asks again with a growing offset until an empty page.
    assert uids(client.search_for_studies(limit=2, get_remaining=True)) == order
    with httpx.Client(timeout=30, trust_env=False) as http:
        reply = http.get(f"{loaded.url}/studies", params={"limit": 2}, headers={"Authorization": f"Bearer {loaded.admin_token}"})
    assert reply.status_code == 200 and len(reply.json()) == 2
    assert "There are additional results that can be requested" in reply.headers["warning"]


def test_search_for_series_and_instances(loaded: Loaded) -> None:
    client = loaded.client()
    series_b = client.search_for_series(study_instance_uid=loaded.study_b)
    assert sorted(r["00080060"]["Value"][0] for r in series_b) == ["CT", "SR"]
    all_ct = client.search_for_series(search_filters={"Modality": "CT"})
    assert {r["0020000D"]["Value"][0] for r in all_ct} == {loaded.study_a, loaded.study_b, loaded.study_c}
    assert all("00100010" in r for r in all_ct)  # all series: study attributes too

    instances = client.search_for_instances(study_instance_uid=loaded.study_a, series_instance_uid=loaded.series_a)
    assert uids(instances, "00080018") == loaded.instances_a
    first = Dataset.from_json(instances[0])
    assert first.Rows == 64 and first.Columns == 64 and first.BitsAllocated == 16
    assert first.RetrieveURL == (
        f"{loaded.url}/studies/{loaded.study_a}/series/{loaded.series_a}/instances/{loaded.instances_a[0]}"
    )
    in_study = client.search_for_instances(study_instance_uid=loaded.study_b)
    assert len(in_study) == 3
    (one,) = client.search_for_instances(search_filters={"SOPInstanceUID": loaded.instances_a[1]})
    assert Dataset.from_json(one).PatientID == VIETNAMESE_PATIENTS[0].patient_id
    filters = {"InstanceNumber": 2, "Modality": "CT", "PatientID": VIETNAMESE_PATIENTS[0].patient_id}
    assert uids(client.search_for_instances(search_filters=filters), "00080018") == [loaded.instances_a[1]]


def refused(call: Callable[[], object]) -> requests.Response:
    """The HTTP error response of a client call that must fail."""
    with pytest.raises(requests.HTTPError) as raised:
        call()
    response = raised.value.response
    assert response is not None
    assert response.headers["content-type"].startswith("application/problem+json")
    return response


def test_the_emr_names_what_it_searches(loaded: Loaded) -> None:
    emr = loaded.client(loaded.emr_key)
    assert refused(emr.search_for_studies).status_code == 403
    assert refused(lambda: emr.search_for_studies(search_filters={"PatientName": "Nguy*"})).status_code == 403
    assert uids(emr.search_for_studies(search_filters={"PatientID": VIETNAMESE_PATIENTS[0].patient_id})) == [
        loaded.study_a
    ]
    assert len(emr.search_for_series(study_instance_uid=loaded.study_b)) == 2


def test_bad_parameters_and_no_credentials(loaded: Loaded) -> None:
    client = loaded.client()
    bad_date = refused(lambda: client.search_for_studies(search_filters={"StudyDate": "20241301"}))
    assert bad_date.status_code == 400 and "StudyDate" in bad_date.json()["detail"]
    assert refused(lambda: client.search_for_studies(search_filters={"NoSuchKeyword": "x"})).status_code == 400
    assert refused(DICOMwebClient(url=loaded.url).search_for_studies).status_code == 401


def test_searches_are_in_the_audit_log(loaded: Loaded) -> None:
    client = loaded.client()
    client.search_for_studies(search_filters={"PatientID": VIETNAMESE_PATIENTS[1].patient_id})
    auth = {"Authorization": f"Bearer {loaded.admin_token}"}
    deadline = time.monotonic() + 10
    with loaded.server.http() as http:
        while True:
            page = http.get("/api/audit", params={"action": "dicomweb.qido", "limit": 500}, headers=auth).json()
            events = [
                e
                for e in page["events"]
                if e["actor"] == "admin" and _detail(e)["query"] == {"PatientID": VIETNAMESE_PATIENTS[1].patient_id}
            ]
            if events or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert events, "the search was not audited"
    detail = _detail(events[0])
    assert events[0]["outcome"] == "success" and detail["level"] == "STUDY" and detail["matches"] == 1
    assert events[0]["actor_host"] == LOOPBACK


def _detail(event: dict[str, Any]) -> dict[str, Any]:
    detail = event["detail"]
    decoded: dict[str, Any] = json.loads(detail) if isinstance(detail, str) else detail
    return decoded
