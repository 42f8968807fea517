"""storage.attributes.extract: index attributes from the raw element bytes, decoded with the
dataset's Specific Character Set, normalised to NFC, person names folded."""

from __future__ import annotations

import io
import json
import unicodedata
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from storage import part10
from storage.attributes import InstanceAttributes, RawElements, extract
from storage.errors import MissingAttribute
from storage.text import fold
from tests.fixtures import synthetic
from tests.unit.support import CHARSET_FILES, sample, small_ct, to_part10

CHARSET_SAMPLES = sorted(CHARSET_FILES.glob("*.dcm"))


def _as_received(data: bytes) -> Dataset:
    """The dataset as ingest parses it: raw elements, stopping before Pixel Data."""
    split = part10.split(data)
    implicit, little = part10.encoding_of(split.transfer_syntax_uid)
    dataset = part10.inflate(split.dataset) if split.transfer_syntax_uid == "1.2.840.10008.1.2.1.99" else split.dataset
    return read_dataset(
        io.BytesIO(dataset), implicit, little, stop_when=lambda tag, vr, length: tag == 0x7FE00010
    )


def _with_raw(ds: Dataset, tag: int, vr: str, value: bytes) -> Dataset:
    """Put raw value bytes into ``ds`` as if they had been received."""
    ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
    return ds


# --- pydicom's character set samples ------------------------------------------------------------
@pytest.mark.parametrize("path", CHARSET_SAMPLES, ids=lambda p: p.name)
def test_charset_samples(path: Path) -> None:
    ds = _as_received(path.read_bytes())
    reference = pydicom.dcmread(path)  # pydicom decodes the same bytes independently
    for keyword, uid in (
        ("SOPClassUID", "1.2.840.10008.5.1.4.1.1.7"),
        ("SOPInstanceUID", "1.2.3.4"),
        ("StudyInstanceUID", "1.2.3"),
        ("SeriesInstanceUID", "1.2.3.5"),
    ):
        if keyword not in ds:  # chrSQEncoding*.dcm are bare fragments
            setattr(ds, keyword, uid)
    attrs = extract(ds)
    assert attrs.warnings == ()
    charset = reference.get("SpecificCharacterSet")
    if charset is not None:
        expected_charset = "\\".join(charset) if isinstance(charset, pydicom.multival.MultiValue) else charset
        assert attrs.study["specific_character_set"] == expected_charset.strip("\\")
    name = attrs.patient["patient_name"]
    if "PatientName" not in reference:
        assert name is None
        return
    # The index keeps trailing empty component groups ("...=") that pydicom drops.
    expected = unicodedata.normalize("NFC", str(reference.PatientName))
    assert name.rstrip("=") == expected
    assert unicodedata.is_normalized("NFC", name)
    assert "\ufffd" not in name and "\x1b" not in name
    assert attrs.patient["patient_name_folded"] == fold(name)
    assert attrs.patient["patient_id"] == (reference.get("PatientID") or "")


@pytest.mark.parametrize(
    ("name", "expected", "folded"),
    [
        ("chrFren.dcm", "Buc^Jérôme", "buc^jerome"),
        ("chrGerm.dcm", "Äneas^Rüdiger", "aneas^rudiger"),
        ("chrGreek.dcm", "Διονυσιος", "διονυσιοσ"),
        ("chrRuss.dcm", "Люкceмбypг", "люкceмбypг"),
        ("chrH31.dcm", "Yamada^Tarou=山田^太郎=やまだ^たろう", None),
        ("chrI2.dcm", "Hong^Gildong=洪^吉洞=홍^길동", "hong^gildong=洪^吉洞=홍^길동"),
        ("chrX2.dcm", "Wang^XiaoDong=王^小东", "wang^xiaodong=王^小东"),
    ],
)
def test_charset_sample_values(name: str, expected: str, folded: str | None) -> None:
    attrs = extract(_as_received(sample(name).read_bytes()))
    assert attrs.patient["patient_name"] == expected
    if folded is not None:
        assert attrs.patient["patient_name_folded"] == folded


def test_multi_valued_text() -> None:
    attrs = extract(_as_received(sample("chrFrenMulti.dcm").read_bytes()))
    assert attrs.patient["patient_name"].startswith("Buc^Jérôme")
    assert attrs.warnings == ()


# --- Vietnamese, UTF-8 --------------------------------------------------------------------------
@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_vietnamese_synthetic_dataset(ts: str) -> None:
    patient = synthetic.VIETNAMESE_PATIENTS[0]
    ct = small_ct(1, size=16, patient=patient)[0]
    attrs = extract(_as_received(to_part10(ct, ts)))
    assert attrs.warnings == ()
    assert attrs.patient["patient_name"] == "Nguyễn^Văn Đức"
    assert attrs.patient["patient_name_folded"] == "nguyen^van duc"
    assert attrs.patient["patient_id"] == patient.patient_id
    assert attrs.patient["issuer_of_patient_id"] == "FILMLESS-HIS"
    assert attrs.patient["patient_key"] == f"{patient.patient_id}\\FILMLESS-HIS"
    assert attrs.patient["patient_birth_date"] == patient.birth_date
    assert attrs.patient["patient_sex"] == "M"
    other = json.loads(attrs.patient["other_patient_ids"])
    assert {(o["id"], o["issuer"]) for o in other} == set(patient.other_ids)
    assert attrs.study["institution_name"] == "Bệnh viện Đa khoa Tỉnh Quảng Nam"
    assert attrs.study["referring_physician_name"] == "Võ^Minh Tâm^^BS."
    assert attrs.study["referring_physician_name_folded"] == "vo^minh tam^^bs."
    assert attrs.study["study_description"] == "CT ngực bụng có cản quang"
    assert attrs.study["specific_character_set"] == "ISO_IR 192"
    assert attrs.study["study_instance_uid"] == ct.StudyInstanceUID
    assert attrs.series["series_instance_uid"] == ct.SeriesInstanceUID
    assert attrs.series["modality"] == "CT"
    assert attrs.series["series_number"] == 1
    assert attrs.series["series_description"] == "Ngực bụng 1.25mm"
    assert attrs.instance["sop_instance_uid"] == ct.SOPInstanceUID == attrs.sop_instance_uid
    assert attrs.instance["sop_class_uid"] == ct.SOPClassUID == attrs.sop_class_uid
    assert attrs.instance["instance_number"] == 1
    assert (attrs.instance["rows"], attrs.instance["columns"]) == (16, 16)
    assert (attrs.instance["bits_allocated"], attrs.instance["bits_stored"]) == (16, 12)
    assert attrs.instance["photometric_interpretation"] == "MONOCHROME2"
    assert attrs.instance["image_type"] == "ORIGINAL\\PRIMARY\\AXIAL"


def test_decomposed_name_is_indexed_nfc() -> None:
    ct = small_ct(1, size=16)[0]
    decomposed = unicodedata.normalize("NFD", "Nguyễn^Văn Đức")
    ds = _with_raw(_as_received(to_part10(ct)), 0x00100010, "PN", decomposed.encode("utf-8"))
    attrs = extract(ds)
    assert attrs.patient["patient_name"] == "Nguyễn^Văn Đức"
    assert unicodedata.is_normalized("NFC", attrs.patient["patient_name"])
    assert attrs.patient["patient_name_folded"] == "nguyen^van duc"


# --- values that do not decode ------------------------------------------------------------------
def test_bytes_invalid_in_the_declared_charset_are_replaced_with_a_warning() -> None:
    ds = _as_received(to_part10(small_ct(1, size=16)[0]))  # ISO_IR 192
    _with_raw(ds, 0x00100010, "PN", b"Nguy\xe1\xbb\x85n^V\xff\xfen ")  # not UTF-8
    attrs = extract(ds)
    name = attrs.patient["patient_name"]
    assert name.startswith("Nguyễn^V") and "\ufffd" in name
    assert attrs.patient["patient_name_folded"] == fold(name)
    assert any("(0010,0010)" in w and "replacement" in w for w in attrs.warnings)


def test_invalid_iso2022_value_is_replaced_with_a_warning() -> None:
    ds = _as_received(sample("chrH31.dcm").read_bytes())
    _with_raw(ds, 0x00100010, "PN", b"Yamada^\x1b$B\xff\xfe\x1b(B ")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # extract itself must not warn
        attrs = extract(ds)
    assert "\ufffd" in attrs.patient["patient_name"]
    assert any("replacement" in w for w in attrs.warnings)


def test_unknown_character_set_is_read_as_latin1_with_a_warning() -> None:
    ds = _as_received(to_part10(small_ct(1, size=16)[0]))
    _with_raw(ds, 0x00080005, "CS", b"ISO_IR 999")
    _with_raw(ds, 0x00100010, "PN", b"M\xfcller^Hans")
    attrs = extract(ds)
    assert attrs.patient["patient_name"] == "Müller^Hans"
    assert any("ISO_IR 999" in w for w in attrs.warnings)


def test_no_character_set_is_the_default_repertoire() -> None:
    ds = _as_received(to_part10(small_ct(1, size=16)[0]))
    del ds[0x00080005]
    _with_raw(ds, 0x00100010, "PN", b"Doe^John")
    attrs = extract(ds)
    assert attrs.patient["patient_name"] == "Doe^John"
    assert attrs.study["specific_character_set"] is None
    assert attrs.warnings == ()


def test_invalid_integer_is_a_warning() -> None:
    ds = _as_received(to_part10(small_ct(1, size=16)[0]))
    _with_raw(ds, 0x00200013, "IS", b"abc ")
    attrs = extract(ds)
    assert attrs.instance["instance_number"] is None
    assert any("invalid integer" in w for w in attrs.warnings)


# --- required identifiers ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("tag", "name"),
    [
        (0x00080016, "SOP Class UID"),
        (0x00080018, "SOP Instance UID"),
        (0x0020000D, "Study Instance UID"),
        (0x0020000E, "Series Instance UID"),
    ],
)
@pytest.mark.parametrize("how", ["absent", "empty", "spaces"])
def test_missing_identifiers(tag: int, name: str, how: str) -> None:
    ds = _as_received(to_part10(small_ct(1, size=16)[0]))
    if how == "absent":
        del ds[tag]
    else:
        _with_raw(ds, tag, "UI", b"" if how == "empty" else b"\x00\x00")
    with pytest.raises(MissingAttribute, match=name):
        extract(ds)


@pytest.mark.parametrize(
    "value",
    [b"abc", b"1.2.3.x", b"-1.2", b"1.2.3 4", b"1." + b"2" * 80, "1.2.ê".encode()],
    ids=["letters", "trailing-letter", "sign", "space", "too-long", "non-ascii"],
)
def test_invalid_uid_text(value: bytes) -> None:
    ds = _as_received(to_part10(small_ct(1, size=16)[0]))
    _with_raw(ds, 0x00080018, "UI", value)
    with pytest.raises(MissingAttribute, match="not a valid UID"):
        extract(ds)


def test_uid_padding_is_ignored() -> None:
    ds = _as_received(to_part10(small_ct(1, size=16)[0]))
    _with_raw(ds, 0x00080018, "UI", b"1.2.3.4\x00")
    assert extract(ds).sop_instance_uid == "1.2.3.4"


# --- other levels -------------------------------------------------------------------------------
def test_sr_document_without_pixels() -> None:
    attrs = extract(_as_received(to_part10(synthetic.sr_document())))
    assert attrs.series["modality"] == "SR"
    assert attrs.instance["rows"] is None and attrs.instance["bits_allocated"] is None
    assert attrs.warnings == ()


def test_multiframe_us() -> None:
    us = synthetic.us_multiframe(3, rows=16, cols=24)
    attrs = extract(_as_received(to_part10(us)))
    assert attrs.instance["number_of_frames"] == 3
    assert attrs.instance["samples_per_pixel"] == 3
    assert attrs.instance["photometric_interpretation"] == "RGB"
    assert attrs.series["modality"] == "US"


def test_legacy_other_patient_ids_are_merged() -> None:
    ds = _as_received(to_part10(small_ct(1, size=16)[0]))
    _with_raw(ds, 0x00101000, "LO", b"OLD-1\\001058012345")
    ids = json.loads(extract(ds).patient["other_patient_ids"])
    values = [entry["id"] for entry in ids]
    assert "OLD-1" in values
    assert values.count("001058012345") == 1  # already in the sequence


# --- the ingest path: raw elements located by part10.scan -------------------------------------
def _extract_both(data: bytes) -> tuple[object, object]:
    """extract over pydicom's raw dataset and over part10.scan's element table: each is the
    InstanceAttributes or the exception it raised."""
    split = part10.split(data)
    results: list[object] = []
    for how in ("pydicom", "scan"):
        try:
            if how == "pydicom":
                results.append(extract(_as_received(data)))
            else:
                results.append(extract(RawElements(part10.scan(split.dataset, split.transfer_syntax_uid))))
        except MissingAttribute as exc:
            results.append((type(exc), exc.reason))
    return results[0], results[1]


def _parseable(paths: list[Path]) -> list[Path]:
    from tests.unit.test_part10 import NOT_PARSEABLE

    return [p for p in paths if p.name not in NOT_PARSEABLE]


@pytest.mark.parametrize("path", _parseable(CHARSET_SAMPLES), ids=lambda p: p.name)
def test_raw_elements_read_what_pydicom_reads_charset_samples(path: Path) -> None:
    by_pydicom, by_scan = _extract_both(path.read_bytes())
    assert by_scan == by_pydicom


def test_raw_elements_read_what_pydicom_reads_every_sample() -> None:
    from tests.unit.test_part10 import SAMPLES

    compared = 0
    for path in _parseable(SAMPLES):
        data = path.read_bytes()
        try:
            by_pydicom, by_scan = _extract_both(data)
        except Exception:  # noqa: BLE001 - samples ingest rejects as malformed are not compared
            continue
        assert by_scan == by_pydicom, path.name
        compared += 1
    assert compared > 50


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"])
def test_raw_elements_in_every_encoding(ts: str) -> None:
    ds = small_ct(1, size=16)[0]
    ds.OtherPatientIDsSequence = [Dataset()]
    ds.OtherPatientIDsSequence[0].PatientID = "OLD-7"
    by_pydicom, by_scan = _extract_both(to_part10(ds, ts))
    assert by_scan == by_pydicom
    assert isinstance(by_scan, InstanceAttributes)
    assert (by_scan.instance["rows"], by_scan.instance["bits_allocated"]) == (16, 16)
    assert json.loads(by_scan.patient["other_patient_ids"])[0]["id"] == "OLD-7"
