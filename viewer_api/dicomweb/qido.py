"""QIDO-RS (PS3.18 10.6, Search Transaction): studies, series and instances over DICOMweb.

A thin adapter over :mod:`storage.query`, the matching engine C-FIND uses too: the query
parameters become a query identifier (Study Root model, relational, as QIDO-RS behaves), the
engine compiles it to SQL, and each matching row becomes a DICOM JSON object (PS3.18 F.2).

* Matching keys by keyword or tag (``PatientName=...``, ``00100010=...``), one level deep in a
  sequence (``OtherPatientIDsSequence.PatientID=...``); the rules are PS3.4 C.2.2.2 (wild cards
  ``*`` and ``?``, ranges ``a-b``, UID lists separated by commas or backslashes; a repeated
  parameter is Multiple Value Matching).
* Person names: without ``fuzzymatching`` case-insensitive (PS3.4 C.2.2.2.1 allows it for PN),
  with ``fuzzymatching=true`` also accent-insensitive through the index's folded keys
  (``nguyen*`` finds ``Nguyễn^Văn Đức``).
* ``includefield`` (repeated or comma-separated; keywords, tags, ``all``), ``limit`` and
  ``offset`` (PS3.18 8.3.4.4); the default return attributes of PS3.18 Tables 10.6.3-3/-4/-5
  with Retrieve URL (0008,1190). Results come in a stable order (the index's row order), so
  paging with ``offset`` is consistent; more matches than returned adds ``Warning: 299``.
* A principal without ``search_all`` (the EMR's integration role) must name a patient, study,
  accession, series or instance: a search of everybody is refused (403).
"""

from __future__ import annotations

import json
import re
import time
from json.encoder import encode_basestring
from urllib.parse import urlsplit
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydicom import config
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag

from storage.errors import ArchiveError
from storage.query import STUDY_ROOT, MatchOptions, Query, QueryError, QueryLevel, build_query
from storage.query.keys import COMMON_KEYS, INSTANCE_AVAILABILITY, RETRIEVE_AE_TITLE
from storage.query.response import RESPONSE_CHARACTER_SET
from viewer_api.audit import client_host
from viewer_api.context import base_url, current_web, require
from viewer_api.dicomjson import DICOM_JSON, to_json
from viewer_api.errors import Problem
from viewer_api.security import Principal

router = APIRouter()

# --- what each resource returns by default (PS3.18 10.6.3.3) -------------------------------
# Timezone Offset From UTC is not known to the index and Specific Character Set is always
# returned (ISO_IR 192); Retrieve URL is added here, not by the engine.
STUDY_DEFAULTS: tuple[str, ...] = (
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "InstanceAvailability",
    "ModalitiesInStudy",
    "ReferringPhysicianName",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
"""PS3.18 Table 10.6.3-3."""
SERIES_DEFAULTS: tuple[str, ...] = (
    "Modality",
    "SeriesDescription",
    "SeriesInstanceUID",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "RequestAttributesSequence",
)
"""PS3.18 Table 10.6.3-4 (the index holds neither the performed procedure step start nor the
request attributes: they are not returned, PS3.4 C.2.2.1.3)."""
INSTANCE_DEFAULTS: tuple[str, ...] = (
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceAvailability",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
)
"""PS3.18 Table 10.6.3-5."""


@dataclass(frozen=True)
class Resource:
    """A search target (PS3.18 10.6.1.1): its level and the attributes it returns by default
    (the levels above are included when the target is not below one named study or series)."""

    name: str
    level: QueryLevel
    defaults: tuple[str, ...]


ALL_STUDIES = Resource("studies", QueryLevel.STUDY, STUDY_DEFAULTS)
ALL_SERIES = Resource("series", QueryLevel.SERIES, SERIES_DEFAULTS + STUDY_DEFAULTS)
STUDY_SERIES = Resource("study's series", QueryLevel.SERIES, SERIES_DEFAULTS)
ALL_INSTANCES = Resource("instances", QueryLevel.IMAGE, INSTANCE_DEFAULTS + SERIES_DEFAULTS + STUDY_DEFAULTS)
STUDY_INSTANCES = Resource("study's instances", QueryLevel.IMAGE, INSTANCE_DEFAULTS + SERIES_DEFAULTS)
SERIES_INSTANCES = Resource("series' instances", QueryLevel.IMAGE, INSTANCE_DEFAULTS)

NAMING_KEYS = frozenset({"PatientID", "StudyInstanceUID", "AccessionNumber", "SeriesInstanceUID", "SOPInstanceUID"})
"""Keys that name a patient or a study (or something in one): what a principal without
``search_all`` must give, each with an exact value."""
CONTROL_PARAMETERS = frozenset({"limit", "offset", "fuzzymatching", "includefield", "accept", "charset"})
ACCEPTABLE = (DICOM_JSON, "application/json")
MAX_NUMBER = 10**12
MAX_AUDITED_UIDS = 100
QUERY_RETRIEVE_LEVEL = 0x00080052
RETRIEVE_URL = 0x00081190
SPECIFIC_CHARACTER_SET = 0x00080005
MORE_RESULTS = "There are additional results that can be requested"

_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_UINT = re.compile(r"[0-9]{1,13}")
_BINARY_NUMBER_VRS = frozenset({"US", "UL", "SS", "SL", "SV", "UV", "FL", "FD"})
_SINGLE_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})
_RAW_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"})
"""VRs the engine reads from the raw bytes (storage.query.identifier.element_text): their
values go in raw, so that a malformed date or UID is reported by the matching rules."""
_LEVEL_INDEX = {QueryLevel.STUDY: 0, QueryLevel.SERIES: 1, QueryLevel.IMAGE: 2}


class ParameterError(ValueError):
    """A query parameter the archive cannot read (answered 400, naming ``parameter``)."""

    def __init__(self, parameter: str, reason: str) -> None:
        super().__init__(f"{parameter}: {reason}")
        self.parameter = parameter
        self.reason = reason


@dataclass(frozen=True)
class Attribute:
    """A parameter's attribute: a top-level tag, or a sequence and one of its item's tags."""

    tag: int
    vr: str
    item_tag: int | None = None
    item_vr: str | None = None


@dataclass
class Search:
    """A QIDO-RS request read from its path and query parameters (pure)."""

    resource: Resource
    identifier: Dataset
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0
    named: set[str] = field(default_factory=set)
    """The :data:`NAMING_KEYS` given with an exact value (or in the path)."""
    parameter_of: dict[int, str] = field(default_factory=dict)
    """Tag -> the query parameter that set it (to name it in errors)."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """Parameters that were not used for matching, and why (for the Warning header)."""

    def options(self) -> MatchOptions:
        """Relational (PS3.18 lets any Study or Patient key be matched when searching series
        or instances); person names accent-insensitive only with ``fuzzymatching=true``."""
        return MatchOptions(
            relational=True,
            pn_case_insensitive=True,
            pn_accent_insensitive=self.fuzzy,
        )


# --- reading parameters (pure) -------------------------------------------------------------
def _dictionary_vr(tag: int) -> str | None:
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return None
    return vr.split(" or ")[0]


def attribute_tag(text: str) -> int | None:
    """A keyword or an 8-digit hexadecimal tag as a tag (None when it is neither)."""
    if _TAG.fullmatch(text):
        return int(text, 16)
    tag = tag_for_keyword(text)
    return int(tag) if tag is not None else None


def parse_attribute(parameter: str, path: str) -> Attribute | None:
    """The attribute a parameter names (``PatientName``, ``00100010``,
    ``OtherPatientIDsSequence.PatientID``); None for a private attribute (not supported)."""
    parts = path.split(".")
    if len(parts) > 2:
        raise ParameterError(parameter, "attributes nested more than one sequence deep are not supported")
    tags: list[int] = []
    for part in parts:
        tag = attribute_tag(part.strip())
        if tag is None:
            raise ParameterError(parameter, f"{part!r} is neither a DICOM keyword nor a tag (8 hexadecimal digits)")
        tags.append(tag)
    if any(Tag(t).is_private for t in tags):
        return None
    vrs: list[str] = []
    for tag in tags:
        vr = _dictionary_vr(tag)
        if vr is None:
            raise ParameterError(parameter, f"({tag >> 16:04X},{tag & 0xFFFF:04X}) is not in the DICOM data dictionary")
        vrs.append(vr)
    for tag, vr in zip(tags, vrs, strict=True):
        if vr == "NONE" or tag >> 16 in (0x0000, 0x0002, 0xFFFE):
            raise ParameterError(parameter, f"({tag >> 16:04X},{tag & 0xFFFF:04X}) is not an attribute a search can use")
    if len(tags) == 1:
        return Attribute(tags[0], vrs[0])
    if vrs[0] != "SQ":
        raise ParameterError(parameter, f"{parts[0]} is not a sequence")
    if vrs[1] == "SQ":
        raise ParameterError(parameter, "attributes nested more than one sequence deep are not supported")
    return Attribute(tags[0], "SQ", tags[1], vrs[1])


def parse_uint(parameter: str, value: str, *, minimum: int = 0) -> int:
    if not _UINT.fullmatch(value.strip()):
        raise ParameterError(parameter, f"{value[:40]!r} is not an unsigned integer")
    number = int(value)
    if number < minimum:
        raise ParameterError(parameter, f"must be at least {minimum}")
    if number > MAX_NUMBER:
        raise ParameterError(parameter, f"must be at most {MAX_NUMBER}")
    return number


def parse_bool(parameter: str, value: str) -> bool:
    text = value.strip().lower()
    if text not in ("true", "false"):
        raise ParameterError(parameter, f"{value[:40]!r} is neither true nor false")
    return text == "true"


def _element(tag: int, vr: str, value: str, parameter: str) -> DataElement | RawDataElement:
    """One key of the identifier. Text goes in as raw UTF-8 bytes (the identifier's character
    set is ISO_IR 192), so the engine reads and checks it as it reads a C-FIND identifier;
    numbers of binary VRs are parsed here."""
    if vr == "SQ":
        return DataElement(tag, "SQ", [])
    if vr in _BINARY_NUMBER_VRS:
        parts = [p.strip() for p in value.split("\\") if p.strip() and p.strip() != "*"]
        numbers: list[int | float] = []
        for part in parts:
            try:
                numbers.append(float(part) if vr in ("FL", "FD") else int(part))
            except ValueError:
                raise ParameterError(parameter, f"{part[:40]!r} is not a valid {vr} value") from None
        stored: Any = None if not numbers else numbers[0] if len(numbers) == 1 else numbers
        return DataElement(tag, vr, stored, validation_mode=config.IGNORE)
    if vr in _RAW_VRS:
        raw = value.encode("utf-8")
        return RawDataElement(BaseTag(tag), vr, len(raw), raw, 0, False, True, True, False)
    # Text (PN, LO, SH, ...): decoded already; not validated (a query value may be longer
    # than a stored one, and holds wild cards).
    return DataElement(tag, vr, value or None, validation_mode=config.IGNORE)


def _joined(parameter: str, vr: str, values: Sequence[str]) -> str:
    """Several values of one key as one DICOM value: a UID list may also be comma-separated
    (PS3.18 8.3.4.1); a repeated parameter is Multiple Value Matching (backslashes)."""
    if vr == "UI":
        return "\\".join(part for value in values for part in value.replace(",", "\\").split("\\"))
    if len(values) > 1 and vr in _SINGLE_TEXT_VRS:
        raise ParameterError(parameter, "given more than once, but a value of this attribute cannot hold several")
    return "\\".join(values)


def _is_exact(value: str) -> bool:
    text = value.strip()
    return bool(text) and text != '""' and "*" not in text and "?" not in text


def parse_search(
    resource: Resource,
    items: Sequence[tuple[str, str]],
    *,
    study: str | None = None,
    series: str | None = None,
) -> Search:
    """Read a search's query parameters (``items``: name/value pairs as they came, already
    percent-decoded) and path UIDs into a :class:`Search`. Raises :class:`ParameterError`."""
    identifier = Dataset()
    identifier.SpecificCharacterSet = "ISO_IR 192"
    identifier.QueryRetrieveLevel = str(resource.level)
    search = Search(resource, identifier)
    includes: list[tuple[str, str]] = []
    keys: dict[Attribute, tuple[str, list[str]]] = {}
    seen: set[str] = set()
    for name, value in items:
        if name in CONTROL_PARAMETERS:
            if name in ("limit", "offset", "fuzzymatching") and name in seen:
                raise ParameterError(name, "given more than once")
            seen.add(name)
            if name == "limit":
                search.limit = parse_uint(name, value, minimum=1)
            elif name == "offset":
                search.offset = parse_uint(name, value)
            elif name == "fuzzymatching":
                search.fuzzy = parse_bool(name, value)
            elif name == "includefield":
                includes.extend((name, part.strip()) for part in value.split(",") if part.strip())
            continue  # accept and charset: read by the route
        attribute = parse_attribute(name, name)
        if attribute is None:
            search.skipped.append((name, "private attributes are not matched"))
            continue
        entry = keys.setdefault(attribute, (name, []))
        entry[1].append(value)

    def put(tag: int, vr: str, value: str, parameter: str) -> None:
        identifier[tag] = _element(tag, vr, value, parameter)
        search.parameter_of.setdefault(tag, parameter)

    for uid, keyword in ((study, "StudyInstanceUID"), (series, "SeriesInstanceUID")):
        if uid is None:
            continue
        tag = attribute_tag(keyword)
        assert tag is not None
        given = keys.pop(Attribute(tag, "UI"), None)
        if given is not None and _joined(keyword, "UI", given[1]).strip("\\ ") != uid:
            raise ParameterError(given[0], f"contradicts the {keyword} of the path")
        put(tag, "UI", uid, f"{keyword} (path)")
        search.named.add(keyword)

    level_index = _LEVEL_INDEX[resource.level]
    for attribute, (name, values) in keys.items():
        value = _joined(name, attribute.item_vr or attribute.vr, values)
        reason = _unmatched(attribute, name, value, level_index)
        if reason is not None:
            if value.strip():
                search.skipped.append((name, reason))
            elif attribute.tag in COMMON_KEYS and attribute.item_tag is None:
                put(attribute.tag, attribute.vr, "", name)  # returned, e.g. InstanceAvailability
            continue
        if attribute.item_tag is None:
            if attribute.vr == "SQ":
                if value.strip():
                    raise ParameterError(name, "a sequence is matched through its item's attributes (Sequence.Keyword=value)")
                continue
            put(attribute.tag, attribute.vr, value, name)
            keyword = keyword_for_tag(attribute.tag)
            if keyword in NAMING_KEYS and _is_exact(value):
                search.named.add(keyword)
        else:
            item = _item(identifier, attribute.tag)
            assert attribute.item_vr is not None
            item[attribute.item_tag] = _element(attribute.item_tag, attribute.item_vr, value, name)
            search.parameter_of.setdefault(attribute.tag, name)

    for parameter, text in includes:
        _include(search, parameter, text)
    for keyword in resource.defaults:
        tag = attribute_tag(keyword)
        assert tag is not None
        if tag not in identifier:
            identifier[tag] = _element(tag, cast(str, _dictionary_vr(tag)), "", keyword)
    return search


def _unmatched(attribute: Attribute, name: str, value: str, level_index: int) -> str | None:
    """Why a matching key is not given to the engine (None: it is). Checked here rather than
    left to the engine, which would have pydicom convert (and warn about) values of keys it
    does not match. A key of a level below the search's is an error (PS3.18 10.6.1.2)."""
    if attribute.tag == QUERY_RETRIEVE_LEVEL:
        raise ParameterError(name, "the level of a search is that of its resource (/studies, /series, /instances)")
    if attribute.tag == SPECIFIC_CHARACTER_SET:
        return "QIDO-RS parameters are UTF-8; ignored"
    if attribute.tag in COMMON_KEYS:
        return "answered by the archive, not matched"
    located = STUDY_ROOT.locate(attribute.tag)
    if located is None:
        return f"not an attribute of the {STUDY_ROOT.name} information model; ignored"
    index, key = located
    if index > level_index and value.strip():
        level, searched = STUDY_ROOT.levels[index].level, STUDY_ROOT.levels[level_index].level
        raise ParameterError(name, f"{key.keyword} is a {level} attribute, below the {searched} level of this search")
    if attribute.item_tag is not None:
        items = key.items
        item_keyword = keyword_for_tag(attribute.item_tag)
        if items is None or items.item_key(item_keyword) is None:
            return f"{item_keyword} is not matched inside {key.keyword}"
    return None


def _item(identifier: Dataset, tag: int) -> Dataset:
    if tag not in identifier or not identifier[tag].value:
        identifier[tag] = DataElement(tag, "SQ", [Dataset()])
    item: Dataset = identifier[tag].value[0]
    return item


def _include(search: Search, parameter: str, text: str) -> None:
    """One ``includefield`` value: ``all`` (every key of the query level the index holds), or
    an attribute to return (PS3.18 8.3.4.3); attributes of lower levels are not returned."""
    identifier = search.identifier
    if text.lower() == "all":
        level = STUDY_ROOT.levels[_LEVEL_INDEX[search.resource.level]]
        for key in level.keys:
            if key.column is not None and key.tag not in identifier:
                identifier[key.tag] = _element(key.tag, key.vr, "", parameter)
        return
    attribute = parse_attribute(parameter, text)
    if attribute is None:
        return  # private attributes are not returned
    if attribute.tag in (SPECIFIC_CHARACTER_SET, QUERY_RETRIEVE_LEVEL):
        return  # always returned / never returned
    if attribute.tag not in COMMON_KEYS and STUDY_ROOT.locate(attribute.tag) is None:
        return  # not held by the index: not returned (PS3.4 C.2.2.1.3)
    if attribute.item_tag is None:
        if attribute.tag not in identifier:
            identifier[attribute.tag] = _element(attribute.tag, attribute.vr, "", parameter)
        return
    item = _item(identifier, attribute.tag)
    if attribute.item_tag not in item:
        assert attribute.item_vr is not None
        item[attribute.item_tag] = _element(attribute.item_tag, attribute.item_vr, "", parameter)


def acceptable_type(accept: str | None) -> str | None:
    """The media type to answer with for an Accept header (PS3.18 8.7.4): DICOM JSON for
    ``application/dicom+json``, ``application/*``, ``*/*`` or no header; JSON when only
    ``application/json`` is asked for; None when neither is acceptable (406)."""
    if accept is None or not accept.strip():
        return DICOM_JSON
    choices: list[tuple[float, bool, str]] = []
    for entry in accept.split(","):
        media, *params = (p.strip() for p in entry.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        media = media.lower()
        if quality <= 0:
            continue
        if media in ("*/*", "application/*", DICOM_JSON):
            choices.append((quality, True, DICOM_JSON))
        elif media == "application/json":
            choices.append((quality, False, "application/json"))
    return max(choices)[2] if choices else None


# --- answering -----------------------------------------------------------------------------
def retrieve_url(service: str, level: QueryLevel, row: Mapping[str, Any]) -> str:
    """The WADO-RS address of a result (PS3.18 10.4.1)."""
    url = f"{service}/studies/{row['StudyInstanceUID']}"
    if level is not QueryLevel.STUDY:
        url += f"/series/{row['SeriesInstanceUID']}"
    if level is QueryLevel.IMAGE:
        url += f"/instances/{row['SOPInstanceUID']}"
    return url


def result(query: Query, row: Mapping[str, Any], service: str) -> dict[str, Any]:
    """One match as a DICOM JSON object, through pydicom: the engine's response identifier
    without the C-FIND-only Query/Retrieve Level, with Retrieve URL. The reference that
    :class:`ResultWriter` must equal."""
    ds = query.response(row)
    del ds[QUERY_RETRIEVE_LEVEL]
    ds.add(DataElement(RETRIEVE_URL, "UR", retrieve_url(service, query.level, row), validation_mode=config.IGNORE))
    return dict(sorted(to_json(ds).items()))  # PS3.18 F.2: attributes in tag order


_INTEGER_VRS = frozenset({"IS", "US", "UL", "SS", "SL", "SV", "UV"})
_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})


@dataclass(frozen=True)
class _Field:
    key: str  # the DICOM JSON name: 8 hexadecimal digits
    vr: str
    keyword: str
    kind: str  # "int", "str", "pn", "online", "ae", "charset", "url" or "other" (pydicom)
    multi: bool = False

    @property
    def head(self) -> str:
        return f'"{self.key}":{{"vr":"{self.vr}"'


class ResultWriter:
    """DICOM JSON text straight from index rows: a study list of hundreds of matches is mostly
    this work, and building a pydicom Dataset per match and converting it (what :func:`result`
    does) costs ~50 times more. Values the simple rules below do not cover (sequences, person
    names with ideographic or phonetic groups, empty values inside a list, other VRs) are
    taken from :func:`result`, so the output is the same; tests compare the two."""

    def __init__(self, query: Query, service: str) -> None:
        self.query = query
        self.service = service
        fields: list[tuple[int, _Field]] = [
            (SPECIFIC_CHARACTER_SET, _Field(f"{SPECIFIC_CHARACTER_SET:08X}", "CS", "", "charset")),
            (RETRIEVE_URL, _Field(f"{RETRIEVE_URL:08X}", "UR", "", "url")),
        ]
        for rk in query.return_keys:
            if rk.tag in (SPECIFIC_CHARACTER_SET, RETRIEVE_URL, QUERY_RETRIEVE_LEVEL):
                continue
            if rk.tag == INSTANCE_AVAILABILITY:
                kind = "online"
            elif rk.tag == RETRIEVE_AE_TITLE:
                kind = "ae"
            elif rk.key is None or rk.key.column is None:
                continue  # not held by the index: not returned (PS3.4 C.2.2.1.3)
            elif rk.vr in _INTEGER_VRS:
                kind = "int"
            elif rk.vr == "PN":
                kind = "pn"
            elif rk.vr in _STRING_VRS:
                kind = "str"
            else:
                kind = "other"
            multi = rk.key is not None and rk.key.multi_valued
            fields.append((rk.tag, _Field(f"{rk.tag:08X}", rk.vr, rk.keyword, kind, multi)))
        fields.sort(key=lambda pair: pair[0])
        self.fields = [(f, f.head) for _, f in fields]

    def text(self, row: Mapping[str, Any]) -> str:
        """One match as a DICOM JSON object (text)."""
        parts: list[str] = []
        reference: dict[str, Any] | None = None
        for f, head in self.fields:
            fragment = self._fragment(f, head, row)
            if fragment is None:
                if reference is None:
                    reference = result(self.query, row, self.service)
                entry = reference.get(f.key)
                if entry is None:
                    continue
                fragment = f'"{f.key}":' + json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
            parts.append(fragment)
        return "{" + ",".join(parts) + "}"

    def body(self, rows: Sequence[Mapping[str, Any]]) -> bytes:
        """The response body: a JSON array of the matches, UTF-8."""
        return ("[" + ",".join(self.text(row) for row in rows) + "]").encode("utf-8")

    def _fragment(self, f: _Field, head: str, row: Mapping[str, Any]) -> str | None:
        kind = f.kind
        if kind == "charset":
            return f'{head},"Value":["{RESPONSE_CHARACTER_SET}"]}}'
        if kind == "url":
            return f'{head},"Value":[{_string(retrieve_url(self.service, self.query.level, row))}]}}'
        if kind == "online":
            return f'{head},"Value":["ONLINE"]}}'
        value = self.query.options.retrieve_ae_title if kind == "ae" else row.get(f.keyword)
        if value is None or value == "":
            return head + "}" if kind != "other" else None
        if kind == "int":
            try:
                return f'{head},"Value":[{int(value)}]}}'
            except (TypeError, ValueError):
                return head + "}"
        if kind not in ("str", "pn", "ae"):
            return None
        text = value if isinstance(value, str) else str(value)
        values = text.split("\\") if f.multi and "\\" in text else [text]
        if "" in values:
            return None
        if kind == "pn":
            if "=" in text:
                return None
            return head + ',"Value":[' + ",".join('{"Alphabetic":' + _string(v) + "}" for v in values) + "]}"
        return head + ',"Value":[' + ",".join(_string(v) for v in values) + "]}"


def _string(text: str) -> str:
    """A JSON string (what json.dumps(..., ensure_ascii=False) writes: UTF-8 kept)."""
    return str(encode_basestring(text))


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', "'") + '"'


def _warnings(search: Search, query: Query, more: bool, service: str) -> list[str]:
    texts: list[str] = []
    if more:
        texts.append(MORE_RESULTS)
    for name, reason in search.skipped:
        texts.append(f"{name} was not used for matching: {reason}")
    for ignored in query.ignored:
        if "lower level" in ignored.reason:
            continue  # an includefield of a lower level: not returned, nothing to warn about
        name = search.parameter_of.get(ignored.tag) or keyword_for_tag(ignored.tag) or f"{ignored.tag:08X}"
        texts.append(f"{name} was not used for matching: {ignored.reason}")
    agent = urlsplit(service).netloc or "filmless"  # RFC 7234 5.5: warn-agent is host[:port]
    return [f"299 {agent} {_quoted(text)}" for text in texts]


def _audit_query(items: Sequence[tuple[str, str]]) -> dict[str, Any]:
    query: dict[str, Any] = {}
    for name, value in items:
        value = value[:200]
        if name in query:
            previous = query[name]
            query[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            query[name] = value
    return query


def search_resource(
    request: Request,
    principal: Principal,
    resource: Resource,
    *,
    study: str | None = None,
    series: str | None = None,
) -> Response:
    """Answer one QIDO-RS request (every route comes here)."""
    web = current_web(request)
    started = time.perf_counter()
    items = request.query_params.multi_items()
    detail: dict[str, Any] = {"level": str(resource.level), "resource": resource.name, "query": _audit_query(items)}

    def audit(outcome: str, **more: Any) -> None:
        web.audit.record(
            "dicomweb.qido",
            outcome,
            principal=principal,
            host=client_host(request),
            study=detail.get("study"),
            series=series,
            detail={**detail, **more, "ms": round((time.perf_counter() - started) * 1000, 1)},
        )

    if study is not None:
        detail["study"] = study
    accept = request.query_params.get("accept") or request.headers.get("accept")
    media_type = acceptable_type(accept)
    if media_type is None:
        audit("failure", reason="not acceptable")
        raise Problem(
            406,
            "Not acceptable",
            f"QIDO-RS answers {DICOM_JSON} (or application/json); the request accepts only {accept[:200]!r}"
            if accept
            else f"QIDO-RS answers {DICOM_JSON}",
        )
    try:
        search = parse_search(resource, items, study=study, series=series)
    except ParameterError as exc:
        audit("failure", reason=str(exc))
        raise Problem(400, "Invalid query parameter", str(exc), parameter=exc.parameter) from None
    if study is None:
        single = request.query_params.getlist("StudyInstanceUID") or request.query_params.getlist("0020000D")
        if len(single) == 1 and "," not in single[0] and "\\" not in single[0] and _is_exact(single[0]):
            detail["study"] = single[0].strip()
    if not principal.may("search_all") and not search.named:
        audit("denied", reason="search of everybody without search_all")
        raise Problem(
            403,
            "Forbidden",
            f"the role {principal.role} searches only what it names: give PatientID, StudyInstanceUID, "
            "AccessionNumber, SeriesInstanceUID or SOPInstanceUID (an exact value)",
        )
    try:
        query = build_query(search.identifier, STUDY_ROOT, search.options())
    except QueryError as exc:
        name = search.parameter_of.get(exc.tag) if exc.tag is not None else None
        name = name or (keyword_for_tag(exc.tag) if exc.tag is not None else None) or "query"
        audit("failure", reason=f"{name}: {exc.reason}")
        raise Problem(400, "Invalid query parameter", f"{name}: {exc.reason}", parameter=name) from None

    maximum = web.settings.max_find_matches or None
    limit = search.limit if maximum is None else min(search.limit or maximum, maximum)
    try:
        with web.archive.index.read() as conn:
            statement = query.select(limit=limit + 1 if limit is not None else None, offset=search.offset or None)
            rows = conn.execute(statement).fetchall()
    except ArchiveError as exc:
        audit("failure", reason=str(exc))
        raise
    more = limit is not None and len(rows) > limit
    if more:
        rows = rows[:limit]
    service = base_url(request) + "/dicom-web"
    columns = list(rows[0]._fields) if rows else []
    matches = [dict(zip(columns, row, strict=True)) for row in rows]
    body = ResultWriter(query, service).body(matches)
    warnings = _warnings(search, query, more, service)
    outcome: dict[str, Any] = {"matches": len(matches)}
    if more:
        outcome["more"] = True
    if detail.get("study") is not None:
        # One study searched: which of its entities were shown.
        outcome["uids"] = [_uid_of(query.level, match) for match in matches[:MAX_AUDITED_UIDS]]
    audit("success", **outcome)
    headers = {"Warning": ", ".join(warnings)} if warnings else None
    return Response(body, media_type=media_type, headers=headers)


def _uid_of(level: QueryLevel, row: Mapping[str, Any]) -> str:
    keyword = {QueryLevel.STUDY: "StudyInstanceUID", QueryLevel.SERIES: "SeriesInstanceUID"}.get(level, "SOPInstanceUID")
    return str(row[keyword])


# --- routes (PS3.18 10.6.1.1, Table 10.6.1-1) ----------------------------------------------
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {DICOM_JSON: {}}, "description": "The matches (an empty array when none)"},
    400: {"description": "A query parameter the archive cannot read (problem+json names it)"},
    403: {"description": "The role may not search, or must name a patient or study"},
    406: {"description": "The request does not accept DICOM JSON"},
}


@router.get("/studies", summary="Search for studies (QIDO-RS)", responses=_RESPONSES)
def search_studies(request: Request, principal: Principal = Depends(require("read"))) -> Response:
    return search_resource(request, principal, ALL_STUDIES)


@router.get("/series", summary="Search for series (QIDO-RS)", responses=_RESPONSES)
def search_series(request: Request, principal: Principal = Depends(require("read"))) -> Response:
    return search_resource(request, principal, ALL_SERIES)


@router.get("/instances", summary="Search for instances (QIDO-RS)", responses=_RESPONSES)
def search_instances(request: Request, principal: Principal = Depends(require("read"))) -> Response:
    return search_resource(request, principal, ALL_INSTANCES)


@router.get("/studies/{study}/series", summary="Search for a study's series (QIDO-RS)", responses=_RESPONSES)
def search_study_series(study: str, request: Request, principal: Principal = Depends(require("read"))) -> Response:
    return search_resource(request, principal, STUDY_SERIES, study=study)


@router.get("/studies/{study}/instances", summary="Search for a study's instances (QIDO-RS)", responses=_RESPONSES)
def search_study_instances(study: str, request: Request, principal: Principal = Depends(require("read"))) -> Response:
    return search_resource(request, principal, STUDY_INSTANCES, study=study)


@router.get(
    "/studies/{study}/series/{series}/instances",
    summary="Search for a series' instances (QIDO-RS)",
    responses=_RESPONSES,
)
def search_series_instances(
    study: str, series: str, request: Request, principal: Principal = Depends(require("read"))
) -> Response:
    return search_resource(request, principal, SERIES_INSTANCES, study=study, series=series)
