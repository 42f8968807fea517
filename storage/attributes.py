"""Reading the index attributes out of a received dataset.

Values are taken from the raw element bytes and decoded here, with the dataset's Specific
Character Set (PS3.3 C.12.1.1.2, PS3.5 6.1): a value that cannot be decoded does not lose the
image; it is indexed with U+FFFD replacements and the instance carries a warning. Text goes to
the index in Unicode NFC; person names also get an accent-folded search key.
"""

from __future__ import annotations

import json
import re
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any

from pydicom.charset import decode_bytes, python_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from storage.errors import MissingAttribute
from storage.part10 import Scanned, sequence_items
from storage.text import fold, nfc

_UID_RE = re.compile(r"^[0-9][0-9.]*$")
_PN_DELIMS = {0x5E, 0x3D}  # "^" and "=" reset the character set in ISO 2022 (PS3.5 6.1.2.5.3)
_TEXT_DELIMS = {0x5C}  # "\\" between values


@dataclass(frozen=True)
class InstanceAttributes:
    """What the index stores of one instance, per level, as column -> value."""

    patient: dict[str, Any]
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]
    warnings: tuple[str, ...] = field(default=())

    @property
    def sop_instance_uid(self) -> str:
        return str(self.instance["sop_instance_uid"])

    @property
    def sop_class_uid(self) -> str:
        return str(self.instance["sop_class_uid"])


# The binary integers the index reads are all US (PS3.6); their encoding by explicit VR.
_BINARY_FORMATS = {b"US": "H", b"SS": "h", b"UL": "I", b"SL": "i"}


class RawElements:
    """The top-level elements of a dataset read straight from its bytes, where
    :func:`storage.part10.scan` found them: no pydicom parse of the whole header."""

    def __init__(self, scanned: Scanned, elements: dict[int, tuple[bytes, int, int, int]] | None = None) -> None:
        self.scanned = scanned
        self.elements = scanned.elements if elements is None else elements
        self._fmt = "<" if scanned.little else ">"

    def raw(self, tag: int) -> bytes | None:
        found = self.elements.get(tag)
        return None if found is None else self.scanned.data[found[2] : found[3]]

    def items(self, tag: int) -> list[RawElements]:
        """The items of a top-level sequence, each read the same way."""
        return [RawElements(self.scanned, item) for item in sequence_items(self.scanned, tag)]

    def binary_integer(self, tag: int) -> int | None:
        found = self.elements.get(tag)
        if found is None:
            return None
        vr, _, start, end = found
        code = _BINARY_FORMATS.get(vr, "H")  # implicit VR (or UN): the dictionary's US
        size = struct.calcsize(code)
        if end - start < size:
            return None
        return int(struct.unpack_from(self._fmt + code, self.scanned.data, start)[0])


class _Reader:
    """Decodes raw values of one dataset, collecting warnings instead of raising."""

    def __init__(self, ds: Dataset | RawElements) -> None:
        self.ds = ds
        self.warnings: list[str] = []
        raw_charset = self._bytes(ds, 0x00080005)
        terms = [t.strip() for t in (raw_charset or b"").decode("ascii", "replace").split("\\")]
        self.charset = "\\".join(terms).strip("\\")
        self.encodings = self._python_encodings(terms)

    def _python_encodings(self, terms: list[str]) -> list[str]:
        encodings: list[str] = []
        for i, term in enumerate(terms):
            if not term:
                if i == 0:
                    encodings.append("iso8859")  # the default repertoire, read leniently
                continue
            enc = python_encoding.get(term) or python_encoding.get(term.replace("_", " ", 1))
            if enc is None:
                enc = python_encoding.get(term.replace("-", "_").replace("ISO_IR_", "ISO_IR "))
            if enc is None:
                self.warnings.append(f"unknown Specific Character Set term {term!r}; read as Latin-1")
                enc = "iso8859"
            encodings.append(enc)
        return encodings or ["iso8859"]

    @staticmethod
    def _bytes(ds: Dataset | RawElements, tag: int) -> bytes | None:
        if isinstance(ds, RawElements):
            return ds.raw(tag)
        elem = ds.get_item(Tag(tag))
        if elem is None:
            return None
        if isinstance(elem, RawDataElement):
            value = elem.value
            return bytes(value) if value is not None else None
        value = elem.value
        if value is None:
            return None
        if isinstance(value, bytes):
            return value
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            return "\\".join(str(v) for v in value).encode("utf-8")
        return str(value).encode("utf-8")

    def text(self, tag: int, *, ds: Dataset | RawElements | None = None, delims: set[int] | None = None) -> str | None:
        raw = self._bytes(self.ds if ds is None else ds, tag)
        if raw is None:
            return None
        raw = raw.rstrip(b"\x00 ")
        if not raw:
            return ""
        value = self._decode(raw, tag, delims or _TEXT_DELIMS)
        return nfc(value.strip())

    def person_name(self, tag: int, *, ds: Dataset | RawElements | None = None) -> str | None:
        """A PN value without the empty trailing components and groups PS3.5 6.2.1.1 allows."""
        value = self.text(tag, ds=ds, delims=_PN_DELIMS)
        if not value:
            return value
        groups = [g.rstrip("^ ") for g in value.split("=")]
        while len(groups) > 1 and not groups[-1]:
            groups.pop()
        return "=".join(groups)

    def _decode(self, raw: bytes, tag: int, delims: set[int]) -> str:
        if len(self.encodings) == 1 or b"\x1b" not in raw:
            try:
                return raw.decode(self.encodings[0])
            except (UnicodeDecodeError, LookupError):
                self._replaced(tag)
                return raw.decode(self.encodings[0], errors="replace")
        # ISO 2022 code extensions: pydicom switches character sets at each escape sequence.
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                value = decode_bytes(raw, self.encodings, delims)
        except (UnicodeError, UserWarning, LookupError, ValueError):
            self._replaced(tag)
            return raw.decode("latin-1").replace("\x1b", "\ufffd")
        if "\ufffd" in value:
            self._replaced(tag)
        return value

    def _replaced(self, tag: int) -> None:
        self.warnings.append(
            f"value of ({tag >> 16:04X},{tag & 0xFFFF:04X}) is not valid in character set "
            f"{self.charset or 'default'}; indexed with replacement characters"
        )

    def ascii(self, tag: int, *, ds: Dataset | RawElements | None = None) -> str | None:
        raw = self._bytes(self.ds if ds is None else ds, tag)
        if raw is None:
            return None
        return raw.decode("ascii", "replace").strip("\x00 ")

    def integer(self, tag: int) -> int | None:
        """An IS value (decimal text); invalid text is a warning, not an error."""
        text = self.ascii(tag)
        if not text:
            return None
        first = text.split("\\")[0].strip()
        try:
            return int(float(first))
        except ValueError:
            self.warnings.append(f"invalid integer {first!r} in ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            return None

    def binary_integer(self, tag: int) -> int | None:
        if isinstance(self.ds, RawElements):
            return self.ds.binary_integer(tag)
        try:
            elem = self.ds.get(Tag(tag))
        except Exception:  # noqa: BLE001
            return None
        if elem is None or elem.value is None or elem.value == b"":
            return None
        value = elem.value
        if isinstance(value, int):
            return value
        if isinstance(value, (list, tuple)) and value:
            return int(value[0])
        return None


def _uid(reader: _Reader, tag: int, name: str, *, required: bool = True) -> str | None:
    value = reader.ascii(tag)
    if not value:
        if required:
            raise MissingAttribute(f"{name} is missing or empty")
        return None
    if len(value) > 64 or not _UID_RE.match(value):
        raise MissingAttribute(f"{name} {value[:80]!r} is not a valid UID")
    return value


def _folded(value: str | None) -> str | None:
    return fold(value) if value is not None else None


def _other_patient_ids(reader: _Reader) -> str | None:
    ids: list[dict[str, str | None]] = []
    items: list[Any] = []
    try:
        ds = reader.ds
        if isinstance(ds, RawElements):
            items = ds.items(0x00101002)
        else:
            seq = ds.get((0x0010, 0x1002))
            items = list(seq.value) if seq is not None and seq.value else []
    except Exception:  # noqa: BLE001 - a malformed sequence is not worth losing the image over
        reader.warnings.append("Other Patient IDs Sequence is unreadable")
    if items:
        for item in items:
            ids.append(
                {
                    "id": reader.text(0x00100020, ds=item),
                    "issuer": reader.text(0x00100021, ds=item),
                    "type": reader.ascii(0x00100022, ds=item),
                }
            )
    legacy = reader.text(0x00101000)
    if legacy:
        for value in legacy.split("\\"):
            if value and all(value != entry["id"] for entry in ids):
                ids.append({"id": value, "issuer": None, "type": None})
    return json.dumps(ids, ensure_ascii=False) if ids else None


def extract(ds: Dataset | RawElements) -> InstanceAttributes:
    """The index attributes of ``ds`` (PS3.4 C.6.1.1 / C.6.2.1 keys and common optional ones),
    a pydicom dataset of raw elements or the :class:`RawElements` of a scanned one.

    Raises :class:`MissingAttribute` when a required identifier is absent or not a UID.
    """
    r = _Reader(ds)
    sop_class_uid = _uid(r, 0x00080016, "SOP Class UID")
    sop_instance_uid = _uid(r, 0x00080018, "SOP Instance UID")
    study_uid = _uid(r, 0x0020000D, "Study Instance UID")
    series_uid = _uid(r, 0x0020000E, "Series Instance UID")

    patient_id = r.text(0x00100020) or ""
    issuer = r.text(0x00100021) or None
    patient_name = r.person_name(0x00100010)
    referring = r.person_name(0x00080090)
    patient = {
        "patient_key": f"{patient_id}\\{issuer or ''}",
        "patient_id": patient_id,
        "issuer_of_patient_id": issuer,
        "patient_name": patient_name,
        "patient_name_folded": _folded(patient_name),
        "patient_birth_date": r.ascii(0x00100030),
        "patient_sex": r.ascii(0x00100040),
        "other_patient_ids": _other_patient_ids(r),
    }
    study = {
        "study_instance_uid": study_uid,
        "study_date": r.ascii(0x00080020),
        "study_time": r.ascii(0x00080030),
        "accession_number": r.text(0x00080050),
        "study_id": r.text(0x00200010),
        "study_description": r.text(0x00081030),
        "referring_physician_name": referring,
        "referring_physician_name_folded": _folded(referring),
        "admission_id": r.text(0x00380010),
        "institution_name": r.text(0x00080080),
        "specific_character_set": r.charset or None,
    }
    series = {
        "series_instance_uid": series_uid,
        "modality": r.ascii(0x00080060),
        "series_number": r.integer(0x00200011),
        "series_description": r.text(0x0008103E),
        "body_part_examined": r.ascii(0x00180015),
        "series_date": r.ascii(0x00080021),
        "series_time": r.ascii(0x00080031),
        "protocol_name": r.text(0x00181030),
        "station_name": r.text(0x00081010),
        "manufacturer": r.text(0x00080070),
        "manufacturer_model_name": r.text(0x00081090),
        "performing_physician_name": r.person_name(0x00081050),
        "laterality": r.ascii(0x00200060),
    }
    instance = {
        "sop_instance_uid": sop_instance_uid,
        "sop_class_uid": sop_class_uid,
        "instance_number": r.integer(0x00200013),
        "content_date": r.ascii(0x00080023),
        "content_time": r.ascii(0x00080033),
        "acquisition_datetime": r.ascii(0x0008002A),
        "image_type": r.ascii(0x00080008),
        "rows": r.binary_integer(0x00280010),
        "columns": r.binary_integer(0x00280011),
        "bits_allocated": r.binary_integer(0x00280100),
        "bits_stored": r.binary_integer(0x00280101),
        "samples_per_pixel": r.binary_integer(0x00280002),
        "photometric_interpretation": r.ascii(0x00280004),
        "number_of_frames": r.integer(0x00280008),
        "specific_character_set": r.charset or None,
    }
    return InstanceAttributes(
        patient=patient,
        study=study,
        series=series,
        instance=instance,
        warnings=tuple(r.warnings),
    )
