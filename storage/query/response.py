"""Rows of a query back into response identifiers (pydicom Datasets).

A response holds the requested return keys, the unique keys of the query level and above,
Query/Retrieve Level, and Specific Character Set ``ISO_IR 192``: the index holds Unicode,
so every response is UTF-8, whatever the character set of the request or of the stored
objects (PS3.4 C.4.1.1.3.2 lets the response use a character set of its own).

Keys the index does not hold are left out: PS3.4 C.2.2.1.3 (Optional Keys) says an optional
key whose existence the SCP does not support shall not be returned. Returning it zero length
would tell the SCU that the value is unknown, when the archive simply does not keep it. Keys
the index holds are always returned, zero length when the entity has no value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from storage.query.keys import INSTANCE_AVAILABILITY, RETRIEVE_AE_TITLE, JsonItems

if TYPE_CHECKING:
    from storage.query.build import Query, ReturnKey

RESPONSE_CHARACTER_SET = "ISO_IR 192"
_INTEGER_VRS = frozenset({"IS", "US", "UL", "SS", "SL", "SV", "UV"})


def _element(tag: int, vr: str, value: Any) -> DataElement:
    # Stored values are echoed as they are (legacy objects may hold values a strict
    # validator would refuse); the response must not fail on them.
    return DataElement(tag, vr, value, validation_mode=config.IGNORE)


def _value(value: Any, vr: str, multi_valued: bool) -> Any:
    if value is None:
        return [] if vr == "SQ" else None
    if vr in _INTEGER_VRS:
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    if multi_valued and "\\" in text:
        return text.split("\\")
    return text


def json_items(items: JsonItems, value: Any) -> list[dict[str, Any]]:
    """The items of a JSON-kept sequence, keyed by item keyword (as ``matches`` expects)."""
    if not value:
        return []
    try:
        decoded = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return []
    if not isinstance(decoded, list):
        return []
    return [
        {key.keyword: entry.get(key.field) for key in items.keys}
        for entry in decoded
        if isinstance(entry, dict)
    ]


def _sequence(rk: ReturnKey, value: Any) -> list[Dataset]:
    if rk.key is None or rk.key.items is None:
        return []
    wanted = set(rk.item_keywords)
    out: list[Dataset] = []
    for entry in json_items(rk.key.items, value):
        item = Dataset()
        for key in rk.key.items.keys:
            if wanted and key.keyword not in wanted:
                continue
            item.add(_element(key.tag, key.vr, _value(entry.get(key.keyword), key.vr, False)))
        out.append(item)
    return out


def record_from_row(query: Query, row: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword -> value as :meth:`Constraint.matches` takes them, from a row of
    :meth:`Query.select` (JSON-kept sequences become lists of item mappings)."""
    record: dict[str, Any] = {}
    for rk in query.return_keys:
        if rk.keyword not in row:
            continue
        value = row[rk.keyword]
        if rk.key is not None and rk.key.items is not None:
            value = json_items(rk.key.items, value)
        record[rk.keyword] = value
    return record


def response_identifier(query: Query, row: Mapping[str, Any]) -> Dataset:
    """The C-FIND / QIDO-RS response identifier of one matching entity.

    ``row`` maps return-key keywords to index values (a ``Row._mapping`` of
    :meth:`Query.select`); derived keys (NumberOfStudyRelatedSeries, ModalitiesInStudy, ...)
    come from the study and series columns the index keeps up to date."""
    ds = Dataset()
    ds.add(_element(0x00080005, "CS", RESPONSE_CHARACTER_SET))
    ds.add(_element(0x00080052, "CS", str(query.level)))
    for rk in query.return_keys:
        if rk.tag == RETRIEVE_AE_TITLE:
            ds.add(_element(rk.tag, rk.vr, query.options.retrieve_ae_title))
        elif rk.tag == INSTANCE_AVAILABILITY:
            ds.add(_element(rk.tag, rk.vr, "ONLINE"))
        elif rk.key is None or rk.key.column is None:
            continue  # the index does not hold it: not returned (PS3.4 C.2.2.1.3)
        elif rk.vr == "SQ":
            ds.add(_element(rk.tag, "SQ", _sequence(rk, row.get(rk.keyword))))
        else:
            ds.add(_element(rk.tag, rk.vr, _value(row.get(rk.keyword), rk.vr, rk.key.multi_valued)))
    return ds
