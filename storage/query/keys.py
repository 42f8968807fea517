"""The query keys of each level and where the index keeps them (PS3.4 C.6.1.1 and C.6.2.1).

An :class:`InformationModel` lists its levels from the top; each :class:`LevelSpec` has its
unique key and its other keys. A :class:`KeySpec` says which index expression holds the key
(``column``), and for person names the accent-folded search key (``folded``). Keys the
standard defines but the index does not hold have no column: they are known (so the
hierarchy rules apply to them) but are neither matched nor returned (PS3.4 C.2.2.1.3).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VM, dictionary_VR, tag_for_keyword
from sqlalchemy import FromClause, and_, func, select
from sqlalchemy.sql.elements import ColumnElement

from storage.index.schema import instance, patient, series, study


class QueryLevel(enum.StrEnum):
    """Query/Retrieve Level (0008,0052) values (PS3.4 C.6.1.1 / C.6.2.1)."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


@dataclass(frozen=True, eq=False)
class ChildValues:
    """A multi-valued key whose values are rows of a child table (ModalitiesInStudy is the
    Modality of the study's series): matching one value is an EXISTS over ``from_``."""

    column: ColumnElement[Any]
    from_: FromClause
    link: ColumnElement[bool]


@dataclass(frozen=True)
class ItemKey:
    """A key inside a sequence item and its field in the index's JSON list."""

    keyword: str
    field: str

    @property
    def tag(self) -> int:
        return _tag(self.keyword)

    @property
    def vr(self) -> str:
        return str(dictionary_VR(self.tag))


@dataclass(frozen=True, eq=False)
class JsonItems:
    """A sequence the index keeps as a JSON list of objects (one per item)."""

    column: ColumnElement[Any]
    keys: tuple[ItemKey, ...]

    def item_key(self, keyword: str) -> ItemKey | None:
        return next((k for k in self.keys if k.keyword == keyword), None)


@dataclass(frozen=True, eq=False)
class KeySpec:
    """One key: its tag and VR (from the data dictionary) and the index expressions."""

    keyword: str
    column: ColumnElement[Any] | None = None
    folded: ColumnElement[Any] | None = None
    children: ChildValues | None = None
    items: JsonItems | None = None
    matchable: bool = True
    """False for keys that are returned but not matched (e.g. ImageType)."""
    tag: int = field(init=False)
    vr: str = field(init=False)
    multi_valued: bool = field(init=False)

    def __post_init__(self) -> None:
        tag = _tag(self.keyword)
        object.__setattr__(self, "tag", tag)
        object.__setattr__(self, "vr", str(dictionary_VR(tag)))
        object.__setattr__(self, "multi_valued", str(dictionary_VM(tag)) != "1")

    @property
    def can_match(self) -> bool:
        return self.matchable and (self.column is not None or self.items is not None)


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"unknown DICOM keyword {keyword!r}")
    return int(tag)


@dataclass(frozen=True, eq=False)
class LevelSpec:
    """One level of an information model: its unique key and all its keys (the unique key
    included)."""

    level: QueryLevel
    unique: KeySpec
    keys: tuple[KeySpec, ...]

    def key(self, tag: int) -> KeySpec | None:
        return next((k for k in self.keys if k.tag == tag), None)


@dataclass(frozen=True, eq=False)
class InformationModel:
    """A Query/Retrieve information model: its levels from the top (PS3.4 C.6)."""

    name: str
    find_sop_class_uid: str
    levels: tuple[LevelSpec, ...]

    def index_of(self, level: QueryLevel) -> int | None:
        return next((i for i, spec in enumerate(self.levels) if spec.level is level), None)

    def locate(self, tag: int) -> tuple[int, KeySpec] | None:
        """The level (index into ``levels``) a key belongs to, and its spec."""
        for i, spec in enumerate(self.levels):
            key = spec.key(tag)
            if key is not None:
                return i, key
        return None


# --- derived values (aliases keep these subqueries from correlating to the outer query) ---
_patient_study = study.alias("patient_study")
_study_series = series.alias("study_series")
_class_series = series.alias("class_series")
_class_instance = instance.alias("class_instance")

_PATIENT_STUDIES = (
    select(func.count())
    .select_from(_patient_study)
    .where(_patient_study.c.patient_pk == patient.c.pk)
    .scalar_subquery()
)
_PATIENT_SERIES = (
    select(func.coalesce(func.sum(_patient_study.c.number_of_series), 0))
    .where(_patient_study.c.patient_pk == patient.c.pk)
    .scalar_subquery()
)
_PATIENT_INSTANCES = (
    select(func.coalesce(func.sum(_patient_study.c.number_of_instances), 0))
    .where(_patient_study.c.patient_pk == patient.c.pk)
    .scalar_subquery()
)
_MODALITIES = ChildValues(
    column=_study_series.c.modality,
    from_=_study_series,
    link=and_(_study_series.c.study_pk == study.c.pk, _study_series.c.number_of_instances > 0),
)
_SOP_CLASSES = ChildValues(
    column=_class_instance.c.sop_class_uid,
    from_=_class_instance.join(_class_series, _class_instance.c.series_pk == _class_series.c.pk),
    link=_class_series.c.study_pk == study.c.pk,
)
OTHER_PATIENT_IDS = JsonItems(
    column=patient.c.other_patient_ids,
    keys=(ItemKey("PatientID", "id"), ItemKey("IssuerOfPatientID", "issuer"), ItemKey("TypeOfPatientID", "type")),
)

# --- the keys of each level (PS3.4 C.6.1.1 patient root, C.6.2.1 study root) -----------------
PATIENT_KEYS: tuple[KeySpec, ...] = (
    KeySpec("PatientID", patient.c.patient_id),
    KeySpec("PatientName", patient.c.patient_name, folded=patient.c.patient_name_folded),
    KeySpec("IssuerOfPatientID", patient.c.issuer_of_patient_id),
    KeySpec("OtherPatientIDsSequence", patient.c.other_patient_ids, items=OTHER_PATIENT_IDS),
    KeySpec("PatientBirthDate", patient.c.patient_birth_date),
    KeySpec("PatientSex", patient.c.patient_sex),
    KeySpec("NumberOfPatientRelatedStudies", _PATIENT_STUDIES),
    KeySpec("NumberOfPatientRelatedSeries", _PATIENT_SERIES),
    KeySpec("NumberOfPatientRelatedInstances", _PATIENT_INSTANCES),
    # Standard keys the index does not hold.
    KeySpec("PatientBirthTime"),
    KeySpec("OtherPatientNames"),
    KeySpec("EthnicGroup"),
    KeySpec("PatientComments"),
    KeySpec("IssuerOfPatientIDQualifiersSequence"),
)
STUDY_KEYS: tuple[KeySpec, ...] = (
    KeySpec("StudyInstanceUID", study.c.study_instance_uid),
    KeySpec("StudyDate", study.c.study_date),
    KeySpec("StudyTime", study.c.study_time),
    KeySpec("AccessionNumber", study.c.accession_number),
    KeySpec("StudyID", study.c.study_id),
    KeySpec("StudyDescription", study.c.study_description),
    KeySpec(
        "ReferringPhysicianName",
        study.c.referring_physician_name,
        folded=study.c.referring_physician_name_folded,
    ),
    KeySpec("AdmissionID", study.c.admission_id),
    KeySpec("InstitutionName", study.c.institution_name),
    KeySpec("NumberOfStudyRelatedSeries", study.c.number_of_series),
    KeySpec("NumberOfStudyRelatedInstances", study.c.number_of_instances),
    KeySpec("ModalitiesInStudy", study.c.modalities_in_study, children=_MODALITIES),
    KeySpec("SOPClassesInStudy", study.c.sop_classes_in_study, children=_SOP_CLASSES),
    # Standard keys the index does not hold.
    KeySpec("IssuerOfAccessionNumberSequence"),
    KeySpec("NameOfPhysiciansReadingStudy"),
    KeySpec("ProcedureCodeSequence"),
    KeySpec("AdmittingDiagnosesDescription"),
    KeySpec("PatientAge"),
    KeySpec("PatientSize"),
    KeySpec("PatientWeight"),
    KeySpec("Occupation"),
    KeySpec("AdditionalPatientHistory"),
    KeySpec("OtherStudyNumbers"),
    KeySpec("ReferencedStudySequence"),
    KeySpec("ReferencedPatientSequence"),
    KeySpec("AnatomicRegionsInStudyCodeSequence"),
)
SERIES_KEYS: tuple[KeySpec, ...] = (
    KeySpec("SeriesInstanceUID", series.c.series_instance_uid),
    KeySpec("Modality", series.c.modality),
    KeySpec("SeriesNumber", series.c.series_number),
    KeySpec("SeriesDescription", series.c.series_description),
    KeySpec("BodyPartExamined", series.c.body_part_examined),
    KeySpec("SeriesDate", series.c.series_date),
    KeySpec("SeriesTime", series.c.series_time),
    KeySpec("ProtocolName", series.c.protocol_name),
    KeySpec("StationName", series.c.station_name),
    KeySpec("Manufacturer", series.c.manufacturer),
    KeySpec("ManufacturerModelName", series.c.manufacturer_model_name),
    KeySpec("PerformingPhysicianName", series.c.performing_physician_name),
    KeySpec("Laterality", series.c.laterality),
    KeySpec("NumberOfSeriesRelatedInstances", series.c.number_of_instances),
    # Standard keys the index does not hold.
    KeySpec("PerformedProcedureStepStartDate"),
    KeySpec("PerformedProcedureStepStartTime"),
    KeySpec("RequestAttributesSequence"),
)
IMAGE_KEYS: tuple[KeySpec, ...] = (
    KeySpec("SOPInstanceUID", instance.c.sop_instance_uid),
    KeySpec("SOPClassUID", instance.c.sop_class_uid),
    KeySpec("InstanceNumber", instance.c.instance_number),
    KeySpec("ContentDate", instance.c.content_date),
    KeySpec("ContentTime", instance.c.content_time),
    KeySpec("AcquisitionDateTime", instance.c.acquisition_datetime),
    # The index keeps ImageType as one backslash-joined string: returned, not matched.
    KeySpec("ImageType", instance.c.image_type, matchable=False),
    KeySpec("Rows", instance.c.rows),
    KeySpec("Columns", instance.c.columns),
    KeySpec("BitsAllocated", instance.c.bits_allocated),
    KeySpec("BitsStored", instance.c.bits_stored),
    KeySpec("SamplesPerPixel", instance.c.samples_per_pixel),
    KeySpec("PhotometricInterpretation", instance.c.photometric_interpretation),
    KeySpec("NumberOfFrames", instance.c.number_of_frames),
    KeySpec("AvailableTransferSyntaxUID", instance.c.stored_transfer_syntax),
)


def _level(level: QueryLevel, unique: str, keys: tuple[KeySpec, ...]) -> LevelSpec:
    return LevelSpec(level, next(k for k in keys if k.keyword == unique), keys)


PATIENT_ROOT = InformationModel(
    "Patient Root",
    "1.2.840.10008.5.1.4.1.2.1.1",
    (
        _level(QueryLevel.PATIENT, "PatientID", PATIENT_KEYS),
        _level(QueryLevel.STUDY, "StudyInstanceUID", STUDY_KEYS),
        _level(QueryLevel.SERIES, "SeriesInstanceUID", SERIES_KEYS),
        _level(QueryLevel.IMAGE, "SOPInstanceUID", IMAGE_KEYS),
    ),
)
"""Patient Root Query/Retrieve Information Model - FIND (PS3.4 C.6.1)."""

STUDY_ROOT = InformationModel(
    "Study Root",
    "1.2.840.10008.5.1.4.1.2.2.1",
    (
        # The patient's attributes are keys of the Study level here (PS3.4 C.6.2.1).
        _level(QueryLevel.STUDY, "StudyInstanceUID", PATIENT_KEYS + STUDY_KEYS),
        _level(QueryLevel.SERIES, "SeriesInstanceUID", SERIES_KEYS),
        _level(QueryLevel.IMAGE, "SOPInstanceUID", IMAGE_KEYS),
    ),
)
"""Study Root Query/Retrieve Information Model - FIND (PS3.4 C.6.2)."""

SPECIFIC_CHARACTER_SET = 0x00080005
QUERY_RETRIEVE_LEVEL = 0x00080052
RETRIEVE_AE_TITLE = 0x00080054
INSTANCE_AVAILABILITY = 0x00080056
COMMON_KEYS = frozenset({RETRIEVE_AE_TITLE, INSTANCE_AVAILABILITY, 0x00080201, 0x00080053, 0x00081190})
"""Keys of every level that are answered from configuration, not matched: Retrieve AE Title,
Instance Availability (always ONLINE), and the unsupported Timezone Offset From UTC, Query/
Retrieve View and Retrieve URL (not returned)."""

DATE_TIME_PAIRS: tuple[tuple[str, str], ...] = (
    ("StudyDate", "StudyTime"),
    ("SeriesDate", "SeriesTime"),
    ("ContentDate", "ContentTime"),
    ("PatientBirthDate", "PatientBirthTime"),
    ("PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime"),
)
"""DA/TM pairs matched as one range with combined datetime matching (PS3.4 C.2.2.2.5.4)."""
