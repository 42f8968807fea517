"""DICOM JSON (PS3.18 F.2, ``application/dicom+json``) of datasets and query responses."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from fastapi.responses import Response
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

DICOM_JSON = "application/dicom+json"

BulkDataURI = Callable[[DataElement], str]


def to_json(dataset: Dataset, bulk_data_uri: BulkDataURI | None = None, *, threshold: int = 1024) -> dict[str, Any]:
    """``dataset`` as a DICOM JSON object. With ``bulk_data_uri``, values longer than
    ``threshold`` bytes of the bulk VRs (OB, OD, OF, OL, OV, OW, UN) become BulkDataURIs;
    without it they are inline (InlineBinary)."""
    if bulk_data_uri is None:
        return dataset.to_json_dict(bulk_data_threshold=2**62)
    return dataset.to_json_dict(bulk_data_threshold=threshold, bulk_data_element_handler=bulk_data_uri)


class DicomJSONResponse(Response):
    """A JSON array of DICOM JSON objects, UTF-8."""

    media_type = DICOM_JSON

    def __init__(self, items: Iterable[dict[str, Any]], status_code: int = 200, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(list(items), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        super().__init__(body, status_code=status_code, headers=headers, media_type=DICOM_JSON)
