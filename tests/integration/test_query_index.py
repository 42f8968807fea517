"""storage.query against a real index, SQLite and PostgreSQL: the compiled SQL finds exactly
the entities ``Query.matches`` accepts, and responses carry what the index holds.

Two indexes: one filled through :class:`storage.index.Index` with seeded random values
chosen to be awkward (case and accent variants, LIKE/GLOB metacharacters, partial times,
empty values), queried with hypothesis-generated identifiers; and a real archive fed with
synthetic studies through :class:`storage.ingest.Ingest`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import random
import unicodedata
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import config, dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import BasicTextSRStorage, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from filmless.bootstrap import Archive
from storage.attributes import InstanceAttributes
from storage.index import Index, NewInstance, Source, StoredObject, create_index_engine
from storage.query import PATIENT_ROOT, STUDY_ROOT, InformationModel, MatchOptions, Query, QueryError, build_query
from storage.query.parse import normalise_person_name
from storage.query.response import record_from_row
from storage.query.sql import PK_LABEL
from storage.text import fold, nfc
from tests.fixtures import synthetic
from tests.postgres import BACKENDS, index_url_for
from tests.unit.support import small_ct, to_part10

PROPERTY = settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

NAMES = [p.name for p in synthetic.VIETNAMESE_PATIENTS] + [
    "NGUYỄN^VĂN ĐỨC",
    "nguyễn^văn đức",
    "Nguyen^Van Duc",
    unicodedata.normalize("NFD", "Nguyễn^Thị Lan"),
    "Weiß^Anna",
    "STRASSE^ẞ",
    "50%_off^[x]",
    "500^_off",
    "A*B?^C",
    "ǅemal^Ǆ",
    "Łukasz^Søren",
    "Yamada^Tarou=山田^太郎=やまだ^たろう",
    "O'Brien^Seán",
    "",
]
DESCRIPTIONS = ["CT ngực bụng có cản quang", "ct NGỰC", "MR sọ não", "Chụp X-quang", "100% test_[1]", "", None]
MODALITIES = ["CT", "MR", "US", "SR", "DX", "ct", None]
SOP_CLASSES = [CTImageStorage, MRImageStorage, BasicTextSRStorage]
ISSUERS = ["VN-CCCD", "VN-BHYT", "vn-cccd"]


def _date(rng: random.Random) -> str | None:
    choice = rng.random()
    if choice < 0.08:
        return None
    if choice < 0.12:
        return ""
    return f"{rng.randint(2023, 2025)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"


def _time(rng: random.Random) -> str | None:
    choice = rng.random()
    if choice < 0.08:
        return None
    hh, mm, ss = rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59)
    fraction = f"{rng.randint(0, 999999):06d}"
    return rng.choice([f"{hh:02d}", f"{hh:02d}{mm:02d}", f"{hh:02d}{mm:02d}{ss:02d}", f"{hh:02d}{mm:02d}{ss:02d}.{fraction}"])


def _person_name(rng: random.Random) -> str | None:
    name = rng.choice(NAMES + [None])
    return normalise_person_name(nfc(name)).strip() if name is not None else None


def _uid(*parts: object) -> str:
    return "1.2.826.0.1.3680043.10.1." + ".".join(str(p) for p in parts)


def _series(rng: random.Random, p: int, s: int, r: int) -> dict[str, Any]:
    return {
        "series_instance_uid": _uid(p, s, r),
        "modality": rng.choice(MODALITIES),
        "series_number": rng.choice([None, 1, 2, 3, 100]),
        "series_description": rng.choice(DESCRIPTIONS),
        "body_part_examined": rng.choice(["CHEST", "HEAD", None]),
        "series_date": _date(rng),
        "series_time": _time(rng),
        "protocol_name": None,
        "station_name": rng.choice(["CT01", "MR01", None]),
        "manufacturer": "filmless-synthetic",
        "manufacturer_model_name": "Phantom",
        "performing_physician_name": _person_name(rng),
        "laterality": None,
    }


def _attributes(
    rng: random.Random,
    key: tuple[int, int, int, int],
    patient_values: dict[str, Any],
    study_values: dict[str, Any],
    series_values: dict[str, Any],
) -> InstanceAttributes:
    instance_values = {
        "sop_instance_uid": _uid(*key),
        "sop_class_uid": rng.choice(SOP_CLASSES),
        "instance_number": rng.choice([None, 1, 2, 3, 10]),
        "content_date": _date(rng),
        "content_time": _time(rng),
        "acquisition_datetime": rng.choice([None, f"{_date(rng) or '2024'}{_time(rng) or ''}"]),
        "image_type": "ORIGINAL\\PRIMARY\\AXIAL",
        "rows": 32,
        "columns": 32,
        "bits_allocated": 16,
        "bits_stored": 12,
        "samples_per_pixel": 1,
        "photometric_interpretation": "MONOCHROME2",
        "number_of_frames": None,
        "specific_character_set": "ISO_IR 192",
    }
    return InstanceAttributes(patient_values, study_values, series_values, instance_values)


def _fill(index: Index, seed: int = 20240301) -> None:
    rng = random.Random(seed)
    with index.write() as conn:
        for p in range(40):
            name = _person_name(rng)
            other_ids = [
                {
                    "id": f"{rng.randint(0, 99999):05d}{rng.choice(['', '%', '_'])}",
                    "issuer": rng.choice(ISSUERS),
                    "type": rng.choice(["TEXT", None]),
                }
                for _ in range(rng.randint(0, 2))
            ]
            patient_id = f"BN{p:04d}{rng.choice(['', '%', '_x'])}"
            patient_values = {
                "patient_key": f"{patient_id}\\",
                "patient_id": patient_id,
                "issuer_of_patient_id": rng.choice(["FILMLESS-HIS", None]),
                "patient_name": name,
                "patient_name_folded": fold(name) if name is not None else None,
                "patient_birth_date": _date(rng),
                "patient_sex": rng.choice(["M", "F", "O", None]),
                "other_patient_ids": json.dumps(other_ids, ensure_ascii=False) if other_ids else None,
            }
            for s in range(rng.randint(1, 3)):
                referring = _person_name(rng)
                study_values = {
                    "study_instance_uid": _uid(p, s),
                    "study_date": _date(rng),
                    "study_time": _time(rng),
                    "accession_number": rng.choice([f"A{p}{s}", f"a{p}{s}%", None]),
                    "study_id": str(s),
                    "study_description": rng.choice(DESCRIPTIONS),
                    "referring_physician_name": referring,
                    "referring_physician_name_folded": fold(referring) if referring is not None else None,
                    "admission_id": None,
                    "institution_name": "Bệnh viện Đa khoa",
                    "specific_character_set": "ISO_IR 192",
                }
                for r in range(rng.randint(1, 2)):
                    # One value per series: the index derives ModalitiesInStudy from every
                    # instance's Modality but keeps the series' first one.
                    series_values = _series(rng, p, s, r)
                    for i in range(rng.randint(1, 2)):
                        attrs = _attributes(rng, (p, s, r, i), patient_values, study_values, series_values)
                        key = f"objects/{p}/{s}/{r}/{i}"
                        obj = StoredObject(key, hashlib.sha256(key.encode()).hexdigest(), 100, ExplicitVRLittleEndian)
                        index.insert_instance(conn, NewInstance(attrs, obj, obj, Source("TEST", "127.0.0.1"), False))


@pytest.fixture(scope="module", params=BACKENDS)
def index(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Index]:
    url = index_url_for(request.param, request, tmp_path_factory.mktemp("query"))
    built = Index(create_index_engine(url))
    built.create()
    _fill(built)
    yield built
    built.dispose()


_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"})


def _identifier(**keys: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        if keyword == "OtherPatientIDsSequence" and isinstance(value, dict):
            value = [_identifier(**value)]
        tag = Tag(keyword)
        vr = dictionary_VR(tag)
        if isinstance(value, str) and vr in _ASCII_VRS:
            # As read from the network: raw bytes, converted (and checked) by the query rules.
            raw = value.encode("ascii")
            ds[tag] = RawDataElement(tag, vr, len(raw), raw, 0, False, True)
        else:
            ds.add(DataElement(tag, vr, value, validation_mode=config.IGNORE))
    return ds


def _agree(index: Index, query: Query) -> set[int]:
    """Run the query's SQL and, over every entity of the level, ``Query.matches``; both must
    find the same entities. Returns them."""
    everything = dataclasses.replace(query, conditions=())
    with index.read() as conn:
        found = {row._mapping[PK_LABEL] for row in conn.execute(query.select())}
        expected = {
            row._mapping[PK_LABEL]
            for row in conn.execute(everything.select())
            if query.matches(record_from_row(query, row._mapping))
        }
    assert found == expected, (query.conditions, sorted(found ^ expected))
    return found


def _run(index: Index, model: InformationModel, options: MatchOptions, **keys: Any) -> set[int] | None:
    try:
        query = build_query(_identifier(**keys), model, options)
    except QueryError:
        return None  # hypothesis may write invalid values; refusing them is the point
    return _agree(index, query)


# --- strategies -----------------------------------------------------------------------------------
_TEXT = "aAnNgGuUyYễỄđĐêÊ^ %_[]*?.0123456789ẞß"


@st.composite
def text_queries(draw: st.DrawFn, pool: list[str]) -> str:
    base = draw(st.sampled_from([v for v in pool if v] or ["x"]))
    transform = draw(st.sampled_from(["same", "upper", "lower", "fold", "prefix", "suffix", "marks", "nfd", "random"]))
    if transform == "upper":
        return base.upper()
    if transform == "lower":
        return base.lower()
    if transform == "fold":
        return fold(base)
    if transform == "prefix":
        return base[: draw(st.integers(0, len(base)))] + "*"
    if transform == "suffix":
        return "*" + base[draw(st.integers(0, len(base))) :]
    if transform == "marks":
        chars = list(base)
        for position in draw(st.lists(st.integers(0, max(len(chars) - 1, 0)), max_size=3)):
            if chars:
                chars[position] = "?"
        return "".join(chars)
    if transform == "nfd":
        return unicodedata.normalize("NFD", base)
    if transform == "random":
        return draw(st.text(alphabet=st.sampled_from(_TEXT), min_size=1, max_size=8))
    return base


PN_OPTIONS = st.sampled_from(
    [
        MatchOptions(),
        MatchOptions(pn_accent_insensitive=False),
        MatchOptions(pn_accent_insensitive=False, pn_case_insensitive=False),
    ]
)


@st.composite
def date_queries(draw: st.DrawFn, vr: str = "DA") -> str:
    def one() -> str:
        if vr == "TM":
            return draw(st.sampled_from(["00", "08", "0830", "083000", "12", "1200", "120000.5", "1730", "2359"]))
        return f"{draw(st.integers(2023, 2025))}{draw(st.integers(1, 12)):02d}{draw(st.integers(1, 28)):02d}"

    form = draw(st.sampled_from(["single", "both", "from", "to", "empty"]))
    if form == "single":
        return one()
    if form == "from":
        return f"{one()}-"
    if form == "to":
        return f"-{one()}"
    if form == "empty":
        return '""'
    a, b = sorted([one(), one()])
    return f"{a}-{b}"


# --- agreement between SQL and matches ------------------------------------------------------------
@PROPERTY
@given(text_queries(NAMES), PN_OPTIONS)
def test_patient_names(index: Index, name: str, options: MatchOptions) -> None:
    _run(index, PATIENT_ROOT, options, QueryRetrieveLevel="PATIENT", PatientName=name)


@PROPERTY
@given(
    st.one_of(st.just(""), text_queries(NAMES)),
    st.one_of(st.just(""), date_queries("DA")),
    st.one_of(st.just(""), date_queries("TM")),
    st.one_of(st.just(""), text_queries([d for d in DESCRIPTIONS if d])),
    st.one_of(st.just(""), st.sampled_from(["CT", "MR\\US", "C?", "*T", "ct", '""', "SR\\DX\\CT"])),
    st.booleans(),
    st.booleans(),
    PN_OPTIONS,
)
def test_studies(
    index: Index,
    name: str,
    date: str,
    time: str,
    description: str,
    modalities: str,
    combined: bool,
    description_ci: bool,
    options: MatchOptions,
) -> None:
    options = dataclasses.replace(
        options,
        combined_datetime=combined,
        case_insensitive_keywords=frozenset({"StudyDescription"}) if description_ci else frozenset(),
    )
    _run(
        index, STUDY_ROOT, options, QueryRetrieveLevel="STUDY", PatientName=name, StudyDate=date, StudyTime=time,
        StudyDescription=description, ModalitiesInStudy=modalities, StudyInstanceUID="",
    )


@PROPERTY
@given(
    st.one_of(st.just(""), text_queries(NAMES)),
    st.one_of(st.just(""), st.sampled_from(["A1*", "a*%", "A1?", "*%", '""', "A10\\A11"])),
    st.one_of(st.just(""), st.sampled_from(list(map(str, SOP_CLASSES)) + [f"{CTImageStorage}\\{MRImageStorage}"])),
    st.one_of(st.none(), st.fixed_dictionaries({
        "PatientID": st.sampled_from(["", "0*", "*%", "*_", "1????"]),
        "IssuerOfPatientID": st.sampled_from(["", "VN-CCCD", "vn-*", "VN-*"]),
    })),
    PN_OPTIONS,
)
def test_study_keys_through_joins_and_sequences(
    index: Index, referring: str, accession: str, sop_classes: str, other_ids: dict[str, str] | None, options: MatchOptions
) -> None:
    keys: dict[str, Any] = {
        "QueryRetrieveLevel": "STUDY", "ReferringPhysicianName": referring, "AccessionNumber": accession,
        "SOPClassesInStudy": sop_classes,
    }
    if other_ids is not None:
        keys["OtherPatientIDsSequence"] = other_ids
    _run(index, STUDY_ROOT, options, **keys)


@PROPERTY
@given(
    st.one_of(st.just(""), st.sampled_from(["CT", "ct", "C*", "?R", "CT\\MR", '""'])),
    st.one_of(st.just(""), st.sampled_from(["1", "2\\3", "100", '""'])),
    st.one_of(st.just(""), date_queries("DA")),
    st.one_of(st.just(""), text_queries(NAMES)),
    st.booleans(),
)
def test_series(index: Index, modality: str, number: str, date: str, performing: str, combined: bool) -> None:
    options = MatchOptions(relational=True, combined_datetime=combined)
    _run(
        index, STUDY_ROOT, options, QueryRetrieveLevel="SERIES", Modality=modality, SeriesNumber=number,
        SeriesDate=date, SeriesTime="0800-1800" if combined and date else "", PerformingPhysicianName=performing,
        PatientName="nguyen*",
    )


@PROPERTY
@given(
    st.one_of(st.just(""), st.sampled_from(["1", "10", "2\\3", '""'])),
    st.one_of(st.just(""), date_queries("DA")),
    st.one_of(st.just(""), date_queries("TM")),
    st.one_of(st.just(""), st.sampled_from(["2024-", "-2024", "2024-2025", "20240101-20241231235959", "202401011030-"])),
    st.booleans(),
)
def test_images(index: Index, number: str, date: str, time: str, acquired: str, combined: bool) -> None:
    _run(
        index, STUDY_ROOT, MatchOptions(relational=True, combined_datetime=combined), QueryRetrieveLevel="IMAGE",
        InstanceNumber=number, ContentDate=date, ContentTime=time, AcquisitionDateTime=acquired,
    )


def test_uid_lists_and_hierarchical_queries(index: Index) -> None:
    uids = [_uid(0, 0), _uid(1, 0), "1.2.3.4"]
    found = _run(index, STUDY_ROOT, MatchOptions(), QueryRetrieveLevel="STUDY", StudyInstanceUID="\\".join(uids))
    assert found is not None and len(found) == 2
    series = _run(index, STUDY_ROOT, MatchOptions(), QueryRetrieveLevel="SERIES", StudyInstanceUID=_uid(0, 0))
    assert series
    query = build_query(_identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=_uid(0, 0), PatientID=""), STUDY_ROOT)
    with index.read() as conn:
        [row] = conn.execute(query.select()).all()
    patient_id = row._mapping["PatientID"]
    images = _run(
        index, PATIENT_ROOT, MatchOptions(), QueryRetrieveLevel="IMAGE", PatientID=patient_id,
        StudyInstanceUID=_uid(0, 0), SeriesInstanceUID=_uid(0, 0, 0),
    )
    assert images
    # The patient's unique key is matched literally, "%" and "_" included.
    assert _run(
        index, PATIENT_ROOT, MatchOptions(), QueryRetrieveLevel="IMAGE", PatientID=patient_id + "x",
        StudyInstanceUID=_uid(0, 0), SeriesInstanceUID=_uid(0, 0, 0),
    ) == set()


# --- fixed examples -----------------------------------------------------------------------------------
def _names(index: Index, name: str, options: MatchOptions = MatchOptions()) -> set[str]:
    query = build_query(_identifier(QueryRetrieveLevel="PATIENT", PatientName=name), PATIENT_ROOT, options)
    _agree(index, query)
    with index.read() as conn:
        return {row._mapping["PatientName"] for row in conn.execute(query.select())}


def test_accent_insensitive_person_names(index: Index) -> None:
    stored = _names(index, "*")
    vietnamese = {n for n in stored if n and fold(n).startswith("nguyen^van duc")}
    assert len(vietnamese) >= 2  # the same name stored with several spellings
    assert vietnamese <= _names(index, "nguyen*")
    assert vietnamese <= _names(index, "NGUYỄN^VĂN ĐỨC")
    assert vietnamese <= _names(index, "Nguyen^Van Duc")
    assert _names(index, "đặng*") == {n for n in stored if n and fold(n).startswith("dang")}


def test_person_names_without_folding(index: Index) -> None:
    options = MatchOptions(pn_accent_insensitive=False)
    found = _names(index, "nguyễn^văn*", options)
    assert found and all(fold(n).startswith("nguyen^van") and "Nguyen" not in n for n in found)
    exact = _names(index, "Nguyễn^Văn Đức", MatchOptions(pn_accent_insensitive=False, pn_case_insensitive=False))
    assert exact <= {"Nguyễn^Văn Đức"}


def test_sql_metacharacters_match_themselves(index: Index) -> None:
    stored = _names(index, "*")
    if "50%_off^[x]" in stored:
        assert _names(index, "50%_*") == {"50%_off^[x]"}
        assert _names(index, "50%_off^[x]") == {"50%_off^[x]"}
    if "500^_off" in stored:
        assert "500^_off" not in _names(index, "50%_*")


# --- a real archive fed by ingest ---------------------------------------------------------------------
SOURCE = Source(aet="CT01", host="10.0.0.5")


def _find(archive: Archive, model: InformationModel, options: MatchOptions = MatchOptions(), **keys: Any) -> list[Dataset]:
    query = build_query(_identifier(**keys), model, options)
    with archive.index.read() as conn:
        return [query.response(row._mapping) for row in conn.execute(query.select())]


def test_queries_over_ingested_studies(archive: Archive) -> None:
    first, second = synthetic.VIETNAMESE_PATIENTS[0], synthetic.VIETNAMESE_PATIENTS[4]
    ct = small_ct(2, size=32, seed=1, patient=first)
    report = synthetic.sr_document(seed=1, patient=first, study_uid=ct[0].StudyInstanceUID)
    other = small_ct(1, size=32, seed=2, patient=second)
    for ds in [*ct, report, *other]:
        archive.ingest.store_file(to_part10(ds), SOURCE)

    [study] = _find(
        archive, STUDY_ROOT, MatchOptions(retrieve_ae_title="FILMLESS"),
        QueryRetrieveLevel="STUDY", PatientName="nguyen*", StudyInstanceUID="", ModalitiesInStudy="",
        SOPClassesInStudy="", NumberOfStudyRelatedSeries=None, NumberOfStudyRelatedInstances=None,
        NumberOfPatientRelatedStudies=None, OtherPatientIDsSequence={"PatientID": "", "IssuerOfPatientID": ""},
        RetrieveAETitle="", StudyDescription="", PatientWeight="",
    )
    assert str(study.PatientName) == first.name
    assert study.StudyInstanceUID == ct[0].StudyInstanceUID
    assert list(study.ModalitiesInStudy) == ["CT", "SR"]
    assert sorted(study.SOPClassesInStudy) == sorted([BasicTextSRStorage, CTImageStorage])
    assert (study.NumberOfStudyRelatedSeries, study.NumberOfStudyRelatedInstances) == (2, 3)
    assert study.NumberOfPatientRelatedStudies == 1
    assert [(i.PatientID, i.IssuerOfPatientID, "TypeOfPatientID" in i) for i in study.OtherPatientIDsSequence] == [
        (value, issuer, False) for value, issuer in first.other_ids
    ]
    assert study.RetrieveAETitle == "FILMLESS" and study.StudyDescription == ct[0].StudyDescription
    assert study.SpecificCharacterSet == "ISO_IR 192"
    # The response encodes as UTF-8.
    buffer = io.BytesIO()
    study.save_as(buffer, implicit_vr=False, little_endian=True)
    assert first.name.encode("utf-8") in buffer.getvalue()
    assert str(dcmread(io.BytesIO(buffer.getvalue()), force=True).PatientName) == first.name

    # Accents typed or not, the same patient; the other patient by a citizen ID.
    for name in ["Nguyễn^Văn Đức", "NGUYEN^VAN DUC", "nguy?n^v?n*"]:
        assert [str(s.PatientName) for s in _find(archive, STUDY_ROOT, QueryRetrieveLevel="STUDY", PatientName=name)] == [first.name]
    cccd = second.other_ids[0][0]
    [found] = _find(
        archive, STUDY_ROOT, QueryRetrieveLevel="STUDY", PatientID="",
        OtherPatientIDsSequence={"PatientID": cccd, "IssuerOfPatientID": "VN-CCCD"},
    )
    assert found.PatientID == second.patient_id
    assert _find(archive, STUDY_ROOT, QueryRetrieveLevel="STUDY", OtherPatientIDsSequence={"PatientID": cccd, "IssuerOfPatientID": "VN-BHYT"}) == []

    patients = _find(
        archive, PATIENT_ROOT, QueryRetrieveLevel="PATIENT", PatientID="", PatientName="",
        NumberOfPatientRelatedStudies=None, NumberOfPatientRelatedSeries=None, NumberOfPatientRelatedInstances=None,
    )
    counts = {p.PatientID: (p.NumberOfPatientRelatedStudies, p.NumberOfPatientRelatedSeries, p.NumberOfPatientRelatedInstances) for p in patients}
    assert counts == {first.patient_id: (1, 2, 3), second.patient_id: (1, 1, 1)}

    series = _find(
        archive, STUDY_ROOT, QueryRetrieveLevel="SERIES", StudyInstanceUID=ct[0].StudyInstanceUID, Modality="",
        SeriesNumber=None, NumberOfSeriesRelatedInstances=None, SeriesDescription="",
    )
    assert sorted((s.Modality, s.SeriesNumber, s.NumberOfSeriesRelatedInstances) for s in series) == [("CT", 1, 2), ("SR", 99, 1)]
    assert all(s.StudyInstanceUID == ct[0].StudyInstanceUID and s.QueryRetrieveLevel == "SERIES" for s in series)

    images = _find(
        archive, PATIENT_ROOT, QueryRetrieveLevel="IMAGE", PatientID=first.patient_id,
        StudyInstanceUID=ct[0].StudyInstanceUID, SeriesInstanceUID=ct[0].SeriesInstanceUID,
        InstanceNumber=None, SOPClassUID="", Rows=None, AvailableTransferSyntaxUID="",
    )
    assert [(i.InstanceNumber, i.SOPClassUID, i.Rows) for i in images] == [(1, CTImageStorage, 32), (2, CTImageStorage, 32)]
    assert {i.SOPInstanceUID for i in images} == {ds.SOPInstanceUID for ds in ct}
    assert all(i.AvailableTransferSyntaxUID for i in images)

    # Hierarchical rules hold against the real archive too.
    assert _find(archive, STUDY_ROOT, QueryRetrieveLevel="STUDY", ModalitiesInStudy="SR")[0].StudyInstanceUID == ct[0].StudyInstanceUID
    assert _find(archive, STUDY_ROOT, QueryRetrieveLevel="STUDY", StudyDate=f"{ct[0].StudyDate}-", StudyTime="") != []
