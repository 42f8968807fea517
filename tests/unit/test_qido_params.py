"""QIDO-RS parameters into a query identifier (pure: no app, no database)."""

from __future__ import annotations

import json

import pytest
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset

from storage.query import STUDY_ROOT, QueryError, QueryLevel, TextRule, build_query
from storage.query.identifier import element_text
from viewer_api.dicomweb.qido import (
    ALL_INSTANCES,
    ALL_SERIES,
    ALL_STUDIES,
    SERIES_INSTANCES,
    STUDY_DEFAULTS,
    STUDY_SERIES,
    Attribute,
    ParameterError,
    Resource,
    ResultWriter,
    acceptable_type,
    parse_attribute,
    parse_bool,
    parse_search,
    parse_uint,
    result,
    retrieve_url,
)

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
SERIES_UID = "1.2.826.0.1.3680043.8.498.2"


def text(ds: Dataset, keyword: str) -> str:
    """A key's value as the engine reads it."""
    tag = int(tag_for_keyword(keyword) or 0)
    return element_text(ds, tag, str(dictionary_VR(tag)))


# --- attributes ----------------------------------------------------------------------------
def test_attributes_by_keyword_tag_or_sequence_path() -> None:
    assert parse_attribute("p", "PatientName") == Attribute(0x00100010, "PN")
    assert parse_attribute("p", "00100010") == Attribute(0x00100010, "PN")
    assert parse_attribute("p", "0020000d") == Attribute(0x0020000D, "UI")
    assert parse_attribute("p", "OtherPatientIDsSequence.PatientID") == Attribute(0x00101002, "SQ", 0x00100020, "LO")
    assert parse_attribute("p", "00101002.00100020") == Attribute(0x00101002, "SQ", 0x00100020, "LO")
    assert parse_attribute("p", "00091001") is None  # private: not supported, not an error
    assert parse_attribute("p", "Rows") == Attribute(0x00280010, "US")
    assert parse_attribute("p", "00280106") == Attribute(0x00280106, "US")  # "US or SS": the first


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("NoSuchKeyword", "neither a DICOM keyword"),
        ("patientname", "neither a DICOM keyword"),  # keywords are case-sensitive
        ("0010001", "neither"),
        ("0010EEEE", "not in the DICOM data dictionary"),
        ("PatientName.PatientID", "not a sequence"),
        ("A.B.C", "nested"),
        ("OtherPatientIDsSequence.ReferencedStudySequence", "nested"),
        ("OtherPatientIDsSequence.Bogus", "neither"),
    ],
)
def test_unknown_attributes_name_the_parameter(path: str, words: str) -> None:
    with pytest.raises(ParameterError) as raised:
        parse_attribute("param", path)
    assert raised.value.parameter == "param" and words in raised.value.reason


def test_numbers_and_booleans() -> None:
    assert parse_uint("limit", "25", minimum=1) == 25
    assert parse_uint("offset", "0") == 0
    for bad in ("", "-1", "1.5", "1e3", "abc", "99999999999999"):
        with pytest.raises(ParameterError):
            parse_uint("offset", bad)
    with pytest.raises(ParameterError, match="at least 1"):
        parse_uint("limit", "0", minimum=1)
    assert parse_bool("fuzzymatching", "TRUE") is True
    assert parse_bool("fuzzymatching", "false") is False
    with pytest.raises(ParameterError):
        parse_bool("fuzzymatching", "1")


# --- the identifier ------------------------------------------------------------------------
def test_matching_keys_and_default_return_keys_of_studies() -> None:
    search = parse_search(ALL_STUDIES, [("PatientName", "Nguyễn*"), ("00080020", "20240101-20241231")])
    ds = search.identifier
    assert ds.QueryRetrieveLevel == "STUDY" and ds.SpecificCharacterSet == "ISO_IR 192"
    assert text(ds, "PatientName") == "Nguyễn*"
    assert text(ds, "StudyDate") == "20240101-20241231"
    for keyword in STUDY_DEFAULTS:
        assert keyword in ds
    assert text(ds, "AccessionNumber") == ""
    assert search.parameter_of == {0x00100010: "PatientName", 0x00080020: "00080020"}
    assert not search.named and search.limit is None and search.offset == 0 and not search.fuzzy


def test_the_engine_reads_the_identifier() -> None:
    search = parse_search(ALL_STUDIES, [("PatientName", "nguyễn*"), ("fuzzymatching", "true")])
    query = build_query(search.identifier, STUDY_ROOT, search.options())
    (condition,) = query.conditions
    assert condition.keys[0].keyword == "PatientName"
    assert condition.constraint.matches("nguyen^van duc")  # folded (accent-insensitive)
    plain = parse_search(ALL_STUDIES, [("PatientName", "nguyễn*")])
    (condition,) = build_query(plain.identifier, STUDY_ROOT, plain.options()).conditions
    assert getattr(condition.constraint, "rule", None) is TextRule.CASE_INSENSITIVE
    assert condition.constraint.matches("Nguyễn^Văn Đức")
    assert not condition.constraint.matches("Nguyen^Van Duc")


def test_uid_lists_comma_separated_or_repeated() -> None:
    search = parse_search(ALL_STUDIES, [("StudyInstanceUID", "1.2.3,1.2.4"), ("0020000D", "1.2.5")])
    assert text(search.identifier, "StudyInstanceUID") == "1.2.3\\1.2.4\\1.2.5"
    query = build_query(search.identifier, STUDY_ROOT, search.options())
    assert query.conditions[0].constraint.matches("1.2.5")
    assert search.named == {"StudyInstanceUID"}


def test_repeated_text_keys_are_multiple_values() -> None:
    search = parse_search(ALL_STUDIES, [("ModalitiesInStudy", "CT"), ("ModalitiesInStudy", "MR")])
    assert text(search.identifier, "ModalitiesInStudy") == "CT\\MR"
    with pytest.raises(ParameterError, match="more than once"):
        parse_search(ALL_STUDIES, [("limit", "1"), ("limit", "2")])


def test_naming_keys_need_an_exact_value() -> None:
    assert parse_search(ALL_STUDIES, [("PatientID", "BN00012345")]).named == {"PatientID"}
    assert parse_search(ALL_STUDIES, [("AccessionNumber", "A1")]).named == {"AccessionNumber"}
    for vague in ("BN*", "BN0001234?", "", '""', "  "):
        assert not parse_search(ALL_STUDIES, [("PatientID", vague)]).named, vague
    assert not parse_search(ALL_STUDIES, [("PatientName", "Nguyễn^Văn Đức")]).named
    assert parse_search(STUDY_SERIES, [], study=STUDY_UID).named == {"StudyInstanceUID"}


def test_path_uids_and_contradictions() -> None:
    search = parse_search(SERIES_INSTANCES, [("InstanceNumber", "3")], study=STUDY_UID, series=SERIES_UID)
    ds = search.identifier
    assert ds.QueryRetrieveLevel == "IMAGE"
    assert text(ds, "StudyInstanceUID") == STUDY_UID and text(ds, "SeriesInstanceUID") == SERIES_UID
    assert search.parameter_of[0x0020000D] == "StudyInstanceUID (path)"
    same = parse_search(STUDY_SERIES, [("StudyInstanceUID", STUDY_UID)], study=STUDY_UID)
    assert text(same.identifier, "StudyInstanceUID") == STUDY_UID
    with pytest.raises(ParameterError, match="contradicts"):
        parse_search(STUDY_SERIES, [("StudyInstanceUID", "1.2.3")], study=STUDY_UID)


def test_includefield_keywords_tags_commas_and_all() -> None:
    search = parse_search(ALL_STUDIES, [("includefield", "StudyDescription, 00080080"), ("includefield", "Modality")])
    ds = search.identifier
    assert "StudyDescription" in ds and "InstitutionName" in ds and "Modality" in ds
    query = build_query(ds, STUDY_ROOT, search.options())
    returned = {rk.keyword for rk in query.return_keys if rk.key is not None and rk.key.column is not None}
    assert {"StudyDescription", "InstitutionName"} <= returned and "Modality" not in returned
    every = parse_search(ALL_STUDIES, [("includefield", "all")]).identifier
    for keyword in ("IssuerOfPatientID", "OtherPatientIDsSequence", "SOPClassesInStudy", "NumberOfPatientRelatedStudies"):
        assert keyword in every, keyword
    assert "PatientAge" not in every  # not held by the index
    sequence = parse_search(ALL_STUDIES, [("includefield", "OtherPatientIDsSequence.PatientID")]).identifier
    assert [list(item.keys()) for item in sequence.OtherPatientIDsSequence] == [[0x00100020]]
    with pytest.raises(ParameterError) as raised:
        parse_search(ALL_STUDIES, [("includefield", "PatientName,Nope")])
    assert raised.value.parameter == "includefield"


def test_defaults_of_each_resource() -> None:
    series = parse_search(ALL_SERIES, []).identifier
    assert "Modality" in series and "PatientName" in series
    study_series = parse_search(STUDY_SERIES, [], study=STUDY_UID).identifier
    assert "Modality" in study_series and "PatientName" not in study_series
    instances = parse_search(ALL_INSTANCES, []).identifier
    assert {"SOPClassUID", "Rows", "Modality", "PatientID"} <= set(instances.dir())


def test_binary_numbers_are_checked_here() -> None:
    search = parse_search(ALL_INSTANCES, [("Rows", "512"), ("BitsAllocated", "*")])
    assert search.identifier.Rows == 512 and search.identifier["BitsAllocated"].value is None
    with pytest.raises(ParameterError) as raised:
        parse_search(ALL_INSTANCES, [("Columns", "wide")])
    assert raised.value.parameter == "Columns"


def test_keys_that_are_not_matched_are_skipped_with_a_reason() -> None:
    search = parse_search(
        ALL_STUDIES,
        [
            ("00091001", "x"),  # private
            ("includefield", "00091002"),
            ("ImagePositionPatient", "1\\2\\3"),  # not a key of the model
            ("SpecificCharacterSet", "ISO_IR 100"),
            ("InstanceAvailability", "OFFLINE"),  # answered by the archive
            ("OtherPatientIDsSequence.PatientName", "x"),  # not an item key the index keeps
        ],
    )
    assert [name for name, _ in search.skipped] == [
        "00091001",
        "ImagePositionPatient",
        "SpecificCharacterSet",
        "InstanceAvailability",
        "OtherPatientIDsSequence.PatientName",
    ]
    ds = search.identifier
    for tag in (0x00091001, 0x00091002, 0x00200032):
        assert tag not in ds
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert text(ds, "InstanceAvailability") == ""  # still returned (a default of studies)


@pytest.mark.parametrize(
    ("items", "parameter", "words"),
    [
        ([("QueryRetrieveLevel", "PATIENT")], "QueryRetrieveLevel", "resource"),
        ([("Modality", "CT")], "Modality", "below the STUDY level"),
        ([("SOPInstanceUID", "1.2.3")], "SOPInstanceUID", "IMAGE attribute"),
        ([("Item", "1")], "Item", "not an attribute a search can use"),
        ([("includefield", "FFFEE0DD")], "includefield", "not an attribute a search can use"),
        ([("00020010", "1.2")], "00020010", "not an attribute a search can use"),
    ],
)
def test_refused_keys(items: list[tuple[str, str]], parameter: str, words: str) -> None:
    with pytest.raises(ParameterError) as raised:
        parse_search(ALL_STUDIES, items)
    assert raised.value.parameter == parameter and words in raised.value.reason


def test_values_pydicom_would_warn_about_reach_the_rules_without_warnings() -> None:
    # pytest runs with warnings as errors: no pydicom validation warning may escape
    for items in (
        [("PatientName", "x" * 300)],
        [("PatientID", "é" * 100)],
        [("StudyInstanceUID", "abc")],
        [("StudyDescription", "*" + "ngực" * 40)],
        [("ReferringPhysicianName", "a=b=c=d")],
        [("FrameOfReferenceUID", "not a uid")],
    ):
        search = parse_search(ALL_INSTANCES, items)
        try:
            build_query(search.identifier, STUDY_ROOT, search.options())
        except QueryError:
            pass


# --- content negotiation and addresses -----------------------------------------------------
@pytest.mark.parametrize(
    ("accept", "answer"),
    [
        (None, "application/dicom+json"),
        ("", "application/dicom+json"),
        ("*/*", "application/dicom+json"),
        ("application/*", "application/dicom+json"),
        ("Application/DICOM+JSON", "application/dicom+json"),
        ("application/json", "application/json"),
        ("application/json, application/dicom+json", "application/dicom+json"),
        ("application/dicom+json;q=0.4, application/json", "application/json"),
        ('multipart/related; type="application/dicom+xml", */*;q=0.1', "application/dicom+json"),
        ("text/html", None),
        ('multipart/related; type="application/dicom+xml"', None),
        ("application/dicom+json;q=0", None),
        ("application/json;q=bad", None),
    ],
)
def test_acceptable_type(accept: str | None, answer: str | None) -> None:
    assert acceptable_type(accept) == answer


def test_retrieve_urls() -> None:
    row = {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3", "SOPInstanceUID": "1.2.3.4"}
    base = "https://pacs.example/dicom-web"
    assert retrieve_url(base, QueryLevel.STUDY, row) == f"{base}/studies/1.2"
    assert retrieve_url(base, QueryLevel.SERIES, row) == f"{base}/studies/1.2/series/1.2.3"
    assert retrieve_url(base, QueryLevel.IMAGE, row) == f"{base}/studies/1.2/series/1.2.3/instances/1.2.3.4"


# --- the DICOM JSON writer -----------------------------------------------------------------
WRITER_ROWS: list[dict[str, object]] = [
    # nothing known but the UIDs: every attribute the index holds, zero length
    {"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4", "SOPInstanceUID": "1.2.3.4.5"},
    {
        "StudyInstanceUID": "1.2.3",
        "SeriesInstanceUID": "1.2.3.4",
        "SOPInstanceUID": "1.2.3.4.5",
        "PatientName": "Nguyễn^Văn Đức",
        "PatientID": "BN00012345",
        "PatientBirthDate": "19580412",
        "StudyDate": "20240301",
        "StudyTime": "070000.123",
        "ModalitiesInStudy": "CT\\SR",
        "SOPClassesInStudy": "1.2.840.10008.5.1.4.1.1.2",
        "NumberOfStudyRelatedInstances": 301,
        "NumberOfStudyRelatedSeries": "2",
        "ReferringPhysicianName": "Võ^Minh Tâm^^BS.",
        "PerformingPhysicianName": "A^B\\C^D",
        "InstanceNumber": "7",
        "Rows": 512,
        "Columns": 512,
        "NumberOfFrames": None,
        "ImageType": "ORIGINAL\\PRIMARY\\AXIAL",
        "OtherPatientIDsSequence": '[{"id": "001058012345", "issuer": "VN-CCCD", "type": "TEXT"}]',
        "AvailableTransferSyntaxUID": "1.2.840.10008.1.2.4.80",
        "AcquisitionDateTime": "20240301070000",
        "Modality": "CT",
        "SeriesNumber": 3,
    },
    {
        # the cases the writer leaves to pydicom, and values a strict writer would refuse
        "StudyInstanceUID": "1.2.3",
        "SeriesInstanceUID": "1.2.3.4",
        "SOPInstanceUID": "1.2.3.4.5",
        "PatientName": "Yamada^Tarou=山田^太郎=やまだ^たろう",
        "ModalitiesInStudy": "CT\\\\MR",
        "NumberOfStudyRelatedInstances": "many",
        "InstanceNumber": "",
        "PatientSex": "",
        "OtherPatientIDsSequence": None,
        "StudyDescription": "  spaces kept  ",
    },
]


@pytest.mark.parametrize("resource", [ALL_STUDIES, ALL_SERIES, ALL_INSTANCES])
@pytest.mark.parametrize("row", WRITER_ROWS)
def test_the_fast_writer_equals_the_pydicom_reference(resource: Resource, row: dict[str, object]) -> None:
    for includes in ([], [("includefield", "all")]):
        search = parse_search(resource, includes)
        query = build_query(search.identifier, STUDY_ROOT, search.options())
        full = {"level_pk": 1, **row}
        service = "http://pacs.example/dicom-web"
        text = ResultWriter(query, service).text(full)
        fast = json.loads(text)
        assert fast == result(query, full, service)
        assert list(fast) == sorted(fast)
        assert json.loads(ResultWriter(query, service).body([full, full])) == [fast, fast]
