"""QIDO-RS over HTTP (the real app, a real archive on SQLite and PostgreSQL): matching by
keyword and tag, wild cards with and without percent-encoding, fuzzy person names, UID lists,
includefield, paging, the resources of each level, content negotiation, bad parameters, the
integration role's restriction and the audit trail."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from tests.fixtures import synthetic
from tests.fixtures.synthetic import VIETNAMESE_PATIENTS
from tests.web.conftest import WebArchive

STUDY_DATE = "00080020"
ACCESSION = "00080050"
MODALITIES_IN_STUDY = "00080061"
PATIENT_NAME = "00100010"
PATIENT_ID = "00100020"
STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
SOP_UID = "00080018"
RETRIEVE_URL = "00081190"
CHARSET = "00080005"

STUDY_REQUIRED = {
    CHARSET, STUDY_DATE, "00080030", ACCESSION, "00080056", MODALITIES_IN_STUDY, "00080090", PATIENT_NAME,
    PATIENT_ID, "00100030", "00100040", STUDY_UID, "00200010", "00201206", "00201208", RETRIEVE_URL,
}  # fmt: skip
"""PS3.18 Table 10.6.3-3, without Timezone Offset From UTC (not known to the archive)."""
SERIES_REQUIRED = {CHARSET, "00080060", "0008103E", RETRIEVE_URL, SERIES_UID, "00200011", "00201209"}
INSTANCE_REQUIRED = {CHARSET, "00080016", SOP_UID, "00080056", RETRIEVE_URL, "00200013", "00280010", "00280011", "00280100"}


@dataclass
class Population:
    """What :func:`populate` put in: six studies of six patients."""

    sr_studies: list[str]  # patients 0, 1, 2 of VIETNAMESE_PATIENTS (Basic Text SR only)
    ct_study: str  # patient 3: a CT series of 3 images and an SR report
    ct_series: str
    ct_instances: list[str]
    pydicom_ct: str  # CT_small.dcm
    pydicom_mr: str  # MR_small.dcm

    @property
    def all_studies(self) -> set[str]:
        return {*self.sr_studies, self.ct_study, self.pydicom_ct, self.pydicom_mr}


def sample(name: str) -> str:
    """A file bundled with pydicom."""
    path = get_testdata_file(name)
    assert isinstance(path, str), name
    return path


def populate(web: WebArchive, root: Path) -> Population:
    sr_studies = []
    for seed in range(3):
        (path,) = synthetic.write_datasets([synthetic.sr_document(seed=seed)], root / f"sr{seed}")
        web.ingest_file(path)
        sr_studies.append(str(dcmread(path).StudyInstanceUID))
    ct = synthetic.write_datasets(synthetic.ct_series(3, rows=32, cols=32, seed=3), root / "ct")
    (report,) = synthetic.write_datasets([synthetic.sr_document(seed=3)], root / "ct-report")
    for path in [*ct, report]:
        web.ingest_file(path)
    first = dcmread(ct[0])
    for name in ("CT_small.dcm", "MR_small.dcm"):
        web.ingest_file(sample(name))
    return Population(
        sr_studies=sr_studies,
        ct_study=str(first.StudyInstanceUID),
        ct_series=str(first.SeriesInstanceUID),
        ct_instances=[str(dcmread(p).SOPInstanceUID) for p in ct],
        pydicom_ct=str(dcmread(sample("CT_small.dcm")).StudyInstanceUID),
        pydicom_mr=str(dcmread(sample("MR_small.dcm")).StudyInstanceUID),
    )


@pytest.fixture
def pop(web: WebArchive, tmp_path: Path) -> Population:
    return populate(web, tmp_path)


def value(result: dict[str, Any], tag: str) -> Any:
    values = result.get(tag, {}).get("Value")
    return values[0] if values else None


def name_of(result: dict[str, Any]) -> str | None:
    person = value(result, PATIENT_NAME)
    return person["Alphabetic"] if person else None


def search(web: WebArchive, path: str, role: str = "clinician", **params: Any) -> list[dict[str, Any]]:
    reply = web.client(role).get(f"/dicom-web{path}", params=params)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/dicom+json"
    results: list[dict[str, Any]] = reply.json()
    return results


def studies(web: WebArchive, **params: Any) -> set[str]:
    return {value(r, STUDY_UID) for r in search(web, "/studies", **params)}


def assert_problem(reply: Any, status: int, *words: str) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = reply.json()
    for word in words:
        assert word in body["detail"], body
    return body


def qido_events(web: WebArchive) -> list[Any]:
    web.flush_audit()
    return [e for e in web.archive.index.audit_events(200) if e.action == "dicomweb.qido"]


# --- studies: default attributes, character set, matching ----------------------------------
def test_all_studies_with_the_default_attributes(web: WebArchive, pop: Population) -> None:
    reply = web.client("clinician").get("/dicom-web/studies")
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/dicom+json"
    results = reply.json()
    assert {value(r, STUDY_UID) for r in results} == pop.all_studies
    for result in results:
        assert STUDY_REQUIRED <= set(result), STUDY_REQUIRED - set(result)
        assert "00080052" not in result  # Query/Retrieve Level is C-FIND's, not QIDO's
        assert value(result, CHARSET) == "ISO_IR 192"
        assert value(result, "00080056") == "ONLINE"
        assert value(result, RETRIEVE_URL) == f"http://testserver/dicom-web/studies/{value(result, STUDY_UID)}"
        assert result[MODALITIES_IN_STUDY]["Value"], "ModalitiesInStudy is always valued"
        assert list(result) == sorted(result)
    by_uid = {value(r, STUDY_UID): r for r in results}
    assert set(by_uid[pop.ct_study][MODALITIES_IN_STUDY]["Value"]) == {"CT", "SR"}
    assert value(by_uid[pop.ct_study], "00201206") == 2
    assert value(by_uid[pop.ct_study], "00201208") == 4
    # UTF-8 on the wire, Vietnamese names intact (NFC).
    assert "Nguyễn^Văn Đức".encode() in reply.content
    assert name_of(by_uid[pop.sr_studies[0]]) == "Nguyễn^Văn Đức"
    assert name_of(by_uid[pop.pydicom_ct]) == "CompressedSamples^CT1"


def test_match_by_keyword_or_tag(web: WebArchive, pop: Population) -> None:
    patient = VIETNAMESE_PATIENTS[1]
    assert studies(web, PatientID=patient.patient_id) == {pop.sr_studies[1]}
    assert studies(web, **{"00100020": patient.patient_id}) == {pop.sr_studies[1]}
    assert studies(web, **{"00100020": "BN99999999"}) == set()
    assert studies(web, ModalitiesInStudy="CT") == {pop.ct_study, pop.pydicom_ct}
    assert studies(web, StudyDate="20040101-20041231") == {pop.pydicom_ct, pop.pydicom_mr}
    assert studies(web, StudyDate="-20040131") == {pop.pydicom_ct}


def test_no_match_is_200_and_an_empty_array(web: WebArchive, pop: Population) -> None:
    reply = web.client().get("/dicom-web/studies", params={"PatientID": "nobody"})
    assert reply.status_code == 200 and reply.json() == []
    assert reply.headers["content-type"] == "application/dicom+json"


def test_wildcards_percent_encoded_or_not(web: WebArchive, pop: Population) -> None:
    client = web.client()
    plain = client.get("/dicom-web/studies?PatientName=Nguyễn*")
    encoded = client.get("/dicom-web/studies?PatientName=Nguy%E1%BB%85n%2A")
    tag = client.get("/dicom-web/studies?00100010=Nguy%E1%BB%85n*")
    for reply in (plain, encoded, tag):
        assert reply.status_code == 200, reply.text
        assert [value(r, STUDY_UID) for r in reply.json()] == [pop.sr_studies[0]]
    question = client.get("/dicom-web/studies?PatientID=BN0001234%3F")
    assert {value(r, STUDY_UID) for r in question.json()} == {*pop.sr_studies, pop.ct_study}
    assert studies(web, PatientID="BN0001234?") == {*pop.sr_studies, pop.ct_study}
    assert studies(web, PatientName="*Đức") == {pop.sr_studies[0]}


def test_person_names_case_insensitive_and_fuzzy_accent_insensitive(web: WebArchive, pop: Population) -> None:
    # Without fuzzymatching: case-insensitive (PS3.4 C.2.2.2.1), accents count.
    assert studies(web, PatientName="NGUYỄN*") == {pop.sr_studies[0]}
    assert studies(web, PatientName="nguyen*") == set()
    assert studies(web, PatientName="nguyen*", fuzzymatching="false") == set()
    # fuzzymatching=true: accent- and case-insensitive (đ -> d).
    assert studies(web, PatientName="nguyen*", fuzzymatching="true") == {pop.sr_studies[0]}
    assert studies(web, PatientName="nguyen^van duc", fuzzymatching="true") == {pop.sr_studies[0]}
    assert studies(web, PatientName="TRAN*", fuzzymatching="TRUE") == {pop.sr_studies[1]}
    assert studies(web, PatientName="*duc", fuzzymatching="true") == {pop.sr_studies[0]}
    assert studies(web, ReferringPhysicianName="vo*", fuzzymatching="true") == {*pop.sr_studies, pop.ct_study}


def test_uid_lists_comma_separated_or_repeated(web: WebArchive, pop: Population) -> None:
    wanted = {pop.sr_studies[0], pop.pydicom_mr}
    assert studies(web, StudyInstanceUID=",".join(wanted)) == wanted
    client = web.client()
    reply = client.get("/dicom-web/studies", params=[("StudyInstanceUID", uid) for uid in wanted])
    assert {value(r, STUDY_UID) for r in reply.json()} == wanted
    reply = client.get("/dicom-web/studies", params=[("0020000D", pop.ct_study), ("0020000D", "1.2.3")])
    assert {value(r, STUDY_UID) for r in reply.json()} == {pop.ct_study}
    # A repeated key of another VR is Multiple Value Matching.
    reply = client.get("/dicom-web/studies", params=[("ModalitiesInStudy", "MR"), ("ModalitiesInStudy", "SR")])
    assert {value(r, STUDY_UID) for r in reply.json()} == {pop.pydicom_mr, pop.ct_study, *pop.sr_studies}


def test_sequence_item_matching(web: WebArchive, pop: Population) -> None:
    citizen_id = VIETNAMESE_PATIENTS[2].other_ids[0][0]
    assert studies(web, **{"OtherPatientIDsSequence.PatientID": citizen_id}) == {pop.sr_studies[2]}
    assert studies(web, **{"00101002.00100020": citizen_id}) == {pop.sr_studies[2]}


# --- includefield --------------------------------------------------------------------------
def test_includefield_keywords_tags_repeated_and_comma_separated(web: WebArchive, pop: Population) -> None:
    default = search(web, "/studies", PatientID=VIETNAMESE_PATIENTS[0].patient_id)[0]
    assert "00081030" not in default and "00080080" not in default  # StudyDescription, InstitutionName
    client = web.client()
    for params in (
        [("includefield", "StudyDescription,00080080")],
        [("includefield", "00081030"), ("includefield", "InstitutionName")],
    ):
        reply = client.get("/dicom-web/studies", params=[("PatientID", VIETNAMESE_PATIENTS[0].patient_id), *params])
        (result,) = reply.json()
        assert value(result, "00081030") == "CT ngực bụng có cản quang"
        assert value(result, "00080080") == "Bệnh viện Đa khoa Tỉnh Quảng Nam"
        assert STUDY_REQUIRED <= set(result)
    # A series attribute at study level is not returned, and is no error.
    (result,) = search(web, "/studies", PatientID=VIETNAMESE_PATIENTS[0].patient_id, includefield="Modality")
    assert "00080060" not in result


def test_includefield_all(web: WebArchive, pop: Population) -> None:
    (result,) = search(web, "/studies", StudyInstanceUID=pop.sr_studies[0], includefield="all")
    for tag in ("00081030", "00080080", "00100021", "00101002", "00201200", "00080062"):
        assert tag in result, tag
    assert value(result, "00100021") == "FILMLESS-HIS"
    ids = {value(item, PATIENT_ID) for item in result["00101002"]["Value"]}
    assert VIETNAMESE_PATIENTS[0].other_ids[0][0] in ids
    (series,) = search(web, f"/studies/{pop.sr_studies[0]}/series", includefield="all")
    assert value(series, "00080070") == "filmless-synthetic"  # Manufacturer
    assert PATIENT_NAME not in series  # a study's series: no study attributes
    instances = search(web, f"/studies/{pop.ct_study}/series/{pop.ct_series}/instances", includefield="all")
    assert {value(i, "00280004") for i in instances} == {"MONOCHROME2"}


# --- paging --------------------------------------------------------------------------------
def test_limit_and_offset_page_through_a_stable_order(web: WebArchive, pop: Population) -> None:
    client = web.client()
    everything = [value(r, STUDY_UID) for r in client.get("/dicom-web/studies").json()]
    assert len(everything) == 6
    assert [value(r, STUDY_UID) for r in client.get("/dicom-web/studies").json()] == everything
    pages = []
    for offset in (0, 2, 4):
        reply = client.get("/dicom-web/studies", params={"limit": 2, "offset": offset})
        assert reply.status_code == 200
        pages.append([value(r, STUDY_UID) for r in reply.json()])
        if offset < 4:
            assert "additional results" in reply.headers["warning"]
            assert reply.headers["warning"].startswith("299 ")
        else:
            assert "warning" not in reply.headers
    assert [uid for page in pages for uid in page] == everything
    beyond = client.get("/dicom-web/studies", params={"offset": 6})
    assert beyond.status_code == 200 and beyond.json() == []
    last = client.get("/dicom-web/studies", params={"limit": 6})
    assert len(last.json()) == 6 and "warning" not in last.headers


def test_the_server_maximum_cuts_with_a_warning(make_web: Callable[..., WebArchive], tmp_path: Path) -> None:
    web = make_web(max_find_matches=4)
    pop = populate(web, tmp_path)
    reply = web.client().get("/dicom-web/studies")
    assert len(reply.json()) == 4
    assert "additional results" in reply.headers["warning"]
    rest = web.client().get("/dicom-web/studies", params={"offset": 4, "limit": 100})
    assert len(rest.json()) == 2 and "warning" not in rest.headers
    assert {value(r, STUDY_UID) for r in reply.json() + rest.json()} == pop.all_studies


# --- series and instances ------------------------------------------------------------------
def test_series_resources(web: WebArchive, pop: Population) -> None:
    series = search(web, f"/studies/{pop.ct_study}/series")
    assert {value(s, "00080060") for s in series} == {"CT", "SR"}
    for s in series:
        assert SERIES_REQUIRED <= set(s), SERIES_REQUIRED - set(s)
        assert PATIENT_NAME not in s
        assert value(s, RETRIEVE_URL) == (
            f"http://testserver/dicom-web/studies/{pop.ct_study}/series/{value(s, SERIES_UID)}"
        )
    ct = next(s for s in series if value(s, "00080060") == "CT")
    assert value(ct, "00201209") == 3 and value(ct, SERIES_UID) == pop.ct_series
    # All series: relational, any study key may be matched; study attributes are returned.
    all_ct = search(web, "/series", Modality="CT")
    assert {value(s, STUDY_UID) for s in all_ct} == {pop.ct_study, pop.pydicom_ct}
    assert all(STUDY_REQUIRED - {RETRIEVE_URL} <= set(s) for s in all_ct)
    mine = search(web, "/series", PatientName="Phạm*", Modality="SR")
    assert [value(s, STUDY_UID) for s in mine] == [pop.ct_study]
    assert name_of(mine[0]) == "Phạm^Thị Ánh Tuyết"


def test_instance_resources(web: WebArchive, pop: Population) -> None:
    in_series = search(web, f"/studies/{pop.ct_study}/series/{pop.ct_series}/instances")
    assert [value(i, SOP_UID) for i in in_series] == pop.ct_instances
    for i in in_series:
        assert INSTANCE_REQUIRED <= set(i), INSTANCE_REQUIRED - set(i)
        assert value(i, "00280010") == 32 and value(i, "00280100") == 16
        assert value(i, RETRIEVE_URL) == (
            f"http://testserver/dicom-web/studies/{pop.ct_study}/series/{pop.ct_series}/instances/{value(i, SOP_UID)}"
        )
        assert "00080060" not in i and PATIENT_NAME not in i
    in_study = search(web, f"/studies/{pop.ct_study}/instances")
    assert len(in_study) == 4 and all("00080060" in i for i in in_study)  # series attributes
    assert all(PATIENT_NAME not in i for i in in_study)
    by_number = search(web, f"/studies/{pop.ct_study}/instances", InstanceNumber="2", Modality="CT")
    assert [value(i, SOP_UID) for i in by_number] == [pop.ct_instances[1]]
    (one,) = search(web, "/instances", SOPInstanceUID=pop.ct_instances[2])
    assert name_of(one) == "Phạm^Thị Ánh Tuyết" and value(one, "00080060") == "CT"  # all levels
    assert search(web, "/instances", Rows="32", Modality="CT", PatientID=VIETNAMESE_PATIENTS[3].patient_id)
    assert search(web, f"/studies/{pop.sr_studies[0]}/series/{pop.ct_series}/instances") == []


# --- content negotiation -------------------------------------------------------------------
ACCEPTED = [
    ("application/dicom+json", "application/dicom+json"),
    ("*/*", "application/dicom+json"),
    ("application/json", "application/json"),
    ("application/json;q=0.5, application/dicom+json", "application/dicom+json"),
    ('multipart/related; type="application/dicom+xml", application/*;q=0.2', "application/dicom+json"),
]
NOT_ACCEPTED = ['multipart/related; type="application/dicom+xml"', "text/html", "application/json;q=0"]


def test_accept_must_allow_dicom_json(web: WebArchive, pop: Population) -> None:
    for accept, content_type in ACCEPTED:
        reply = web.client().get("/dicom-web/studies", headers={"Accept": accept}, params={"limit": 1})
        assert reply.status_code == 200, accept
        assert reply.headers["content-type"] == content_type, accept
        assert len(json.loads(reply.content)) == 1
    for accept in NOT_ACCEPTED:
        reply = web.client().get("/dicom-web/studies", headers={"Accept": accept})
        assert_problem(reply, 406, "application/dicom+json")


# --- bad parameters ------------------------------------------------------------------------
BAD_PARAMETERS = [
    ("NoSuchKeyword=1", "NoSuchKeyword"),
    ("StudyDate=20240101-20231231", "StudyDate"),
    ("StudyDate=2024", "StudyDate"),
    ("StudyDate=20240230", "StudyDate"),
    ("limit=abc", "limit"),
    ("limit=0", "limit"),
    ("limit=-1", "limit"),
    ("offset=x", "offset"),
    ("limit=1&limit=2", "limit"),
    ("fuzzymatching=maybe", "fuzzymatching"),
    ("includefield=NoSuchKeyword", "includefield"),
    ("includefield=PatientName,Bogus", "includefield"),
    ("StudyInstanceUID=1.2.abc", "StudyInstanceUID"),
    ("StudyInstanceUID=1.2.*", "StudyInstanceUID"),
    ("Modality=CT", "Modality"),
    ("SOPInstanceUID=1.2.3", "SOPInstanceUID"),
    ("0010EEEE=1", "0010EEEE"),
    ("0010001=1", "0010001"),
    ("PatientName.PatientID=1", "PatientName.PatientID"),
    ("NumberOfStudyRelatedInstances=many", "NumberOfStudyRelatedInstances"),
    ("OtherPatientIDsSequence=1", "OtherPatientIDsSequence"),
]


def test_bad_parameters_are_400_naming_the_parameter(web: WebArchive) -> None:
    for query, parameter in BAD_PARAMETERS:
        reply = web.client().get(f"/dicom-web/studies?{query}")
        body = assert_problem(reply, 400)
        assert body["parameter"] == parameter and body["detail"].startswith(parameter), (query, body)
    failures = [e for e in qido_events(web) if e.outcome == "failure"]
    assert len(failures) == len(BAD_PARAMETERS)


def test_bad_parameters_of_lower_levels_and_paths(web: WebArchive, pop: Population) -> None:
    client = web.client()
    assert_problem(client.get("/dicom-web/studies/not-a-uid/series"), 400, "StudyInstanceUID")
    assert_problem(client.get(f"/dicom-web/studies/{pop.ct_study}/series/x.y/instances"), 400, "SeriesInstanceUID")
    assert_problem(client.get("/dicom-web/series?Rows=abc"), 400, "Rows")
    assert_problem(client.get("/dicom-web/instances?Rows=512&Columns=wide"), 400, "Columns")
    assert_problem(client.get(f"/dicom-web/studies/{pop.ct_study}/series?StudyInstanceUID=1.2.3"), 400, "path")
    assert_problem(client.get("/dicom-web/series?SOPInstanceUID=1.2.3"), 400, "SOPInstanceUID")


def test_unsupported_matching_keys_are_ignored_with_a_warning(web: WebArchive, pop: Population) -> None:
    reply = web.client().get("/dicom-web/studies", params={"PatientAge": "045Y", "00091001": "x", "limit": 10})
    assert reply.status_code == 200 and len(reply.json()) == 6
    assert "PatientAge" in reply.headers["warning"] and "00091001" in reply.headers["warning"]


# --- who may search ------------------------------------------------------------------------
def test_unauthenticated_is_401(web: WebArchive) -> None:
    assert_problem(web.anonymous.get("/dicom-web/studies"), 401)


def test_integration_must_name_a_patient_or_study(web: WebArchive, pop: Population) -> None:
    client = web.client("integration")
    for query in ("", "?PatientName=Nguy*", "?PatientID=BN*", "?PatientID=", '?PatientID=""', "?StudyDate=20240301"):
        assert_problem(client.get(f"/dicom-web/studies{query}"), 403, "PatientID")
    assert_problem(client.get("/dicom-web/series?Modality=CT"), 403)
    assert_problem(client.get("/dicom-web/instances"), 403)
    patient = VIETNAMESE_PATIENTS[0]
    assert studies(web, role="integration", PatientID=patient.patient_id) == {pop.sr_studies[0]}
    assert search(web, "/studies", role="integration", AccessionNumber="A2403010000")
    assert len(search(web, f"/studies/{pop.ct_study}/series", role="integration")) == 2
    assert len(search(web, f"/studies/{pop.ct_study}/instances", role="integration")) == 4
    assert search(web, "/instances", role="integration", SOPInstanceUID=pop.ct_instances[0])
    denied = [e for e in qido_events(web) if e.outcome == "denied"]
    assert len(denied) == 8 and all(e.actor == "integration1" for e in denied)


def test_every_role_that_reads_may_search_everybody(web: WebArchive, pop: Population) -> None:
    for role in ("admin", "radiologist", "clinician", "technologist"):
        assert len(search(web, "/studies", role=role)) == 6


# --- audit ---------------------------------------------------------------------------------
def test_searches_are_audited(web: WebArchive, pop: Population) -> None:
    search(web, "/studies", PatientName="Nguyễn*", includefield="StudyDescription")
    search(web, f"/studies/{pop.ct_study}/series", role="radiologist")
    web.client().get("/dicom-web/studies?StudyDate=bad")
    events = qido_events(web)
    failure, one_study, by_name = events[:3]
    assert by_name.outcome == "success" and by_name.actor == "clinician1"
    detail = json.loads(by_name.detail)
    assert detail["level"] == "STUDY" and detail["matches"] == 1
    assert detail["query"] == {"PatientName": "Nguyễn*", "includefield": "StudyDescription"}
    assert by_name.study_instance_uid is None
    assert one_study.study_instance_uid == pop.ct_study and one_study.actor == "radiologist1"
    detail = json.loads(one_study.detail)
    assert detail["level"] == "SERIES" and detail["matches"] == 2 and len(detail["uids"]) == 2
    assert pop.ct_series in detail["uids"]
    assert failure.outcome == "failure" and "StudyDate" in json.loads(failure.detail)["reason"]


def test_a_single_study_by_uid_is_audited_with_its_uid(web: WebArchive, pop: Population) -> None:
    search(web, "/studies", StudyInstanceUID=pop.pydicom_mr)
    (event,) = qido_events(web)
    assert event.study_instance_uid == pop.pydicom_mr
    assert json.loads(event.detail)["uids"] == [pop.pydicom_mr]


ODD_QUERIES = [
    "PatientName=%00",
    "PatientName=" + "x" * 2000,
    "PatientName=%5C",
    "PatientName=a%5C%5Cb",
    "PatientName=%22%22",
    "PatientName=Nguy%E1%BB%85n%3DX",
    "StudyDate=-",
    "StudyDate=20240101-",
    "StudyTime=2500",
    "StudyTime=1000-0900",
    "includefield=",
    "includefield=,,",
    "limit=",
    "offset=",
    "AccessionNumber=*%5C*",
    "ModalitiesInStudy=%22%22",
    "ImagePositionPatient=1",
    "OtherPatientIDsSequence.IssuerOfPatientID=VN-CCCD",
    "OtherPatientIDsSequence.PatientName=x",
    "00100010=Nguy*&fuzzymatching=true&limit=1&offset=1",
    "NumberOfStudyRelatedInstances=1-2",
    "SpecificCharacterSet=ISO_IR%20100&PatientName=Nguy*",
    "Item=1",
    "QueryRetrieveLevel=PATIENT",
    "accept=application/json",
    "%FF=1",
]


def test_odd_queries_never_fail_the_server(web: WebArchive, pop: Population) -> None:
    client = web.client()
    for query in ODD_QUERIES:
        for path in ("/studies", "/series", "/instances", f"/studies/{pop.ct_study}/instances"):
            reply = client.get(f"/dicom-web{path}?{query}")
            assert reply.status_code in (200, 400), (path, query, reply.text)
            if reply.status_code == 400:
                assert reply.headers["content-type"].startswith("application/problem+json")
            else:
                assert isinstance(reply.json(), list)
