"""Reading key values out of a query identifier (a pydicom Dataset)."""

from __future__ import annotations

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from storage.query.errors import tag_text

_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"})


def element_text(ds: Dataset, tag: int, vr: str) -> str:
    """A key's value as text (values joined by backslashes; "" when absent or empty).

    Strings of ASCII VRs are read from the raw bytes, so that a malformed number or date is
    reported by the query rules rather than by pydicom's value conversion; text VRs are
    decoded by pydicom with the identifier's Specific Character Set (PS3.4 C.2.2.2: it says
    how the key values are encoded and is never matched itself)."""
    elem = ds.get_item(Tag(tag))
    if elem is None:
        return ""
    if vr in _ASCII_VRS and isinstance(elem, RawDataElement):
        raw = elem.value
        return bytes(raw).decode("ascii", "replace") if raw else ""
    return as_text(ds[tag].value)


def as_text(value: object) -> str:
    """A pydicom value as DICOM text (multiple values joined by backslashes)."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(as_text(v) for v in value)  # type: ignore[attr-defined]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    original = getattr(value, "original_string", None)  # IS/DS keep what was written
    return original if isinstance(original, str) else str(value)


def has_value(ds: Dataset, tag: int) -> bool:
    """Whether the element holds a value (a sequence: whether any item key does)."""
    elem = ds[tag]
    if elem.VR == "SQ":
        return any(has_value(item, int(t)) for item in elem.value or [] for t in item.keys())
    return not elem.is_empty


def keyword_of(tag: int) -> str:
    return keyword_for_tag(tag) or tag_text(tag)


def vr_of(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"
