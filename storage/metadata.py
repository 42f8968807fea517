"""DICOMweb metadata of stored instances (PS3.18 10.4.1.2: DICOM JSON without bulk data),
made once per instance version and kept in the index (``instance_metadata``).

A body is the instance's DICOM JSON object, UTF-8, zlib-compressed. Bulk data (Pixel Data and
other binary values over 1 KiB) is replaced by a BulkDataURI relative to the instance's WADO-RS
URL, written with :data:`INSTANCE_URL` in front; :func:`with_instance_url` puts the real URL in
when a response is assembled, so a series' metadata is a few byte replacements, not a JSON walk.

The stored transfer syntax is given as Available Transfer Syntax UID (0008,3002): a viewer
asking for frames with ``transfer-syntax=*`` gets that syntax. It too is a placeholder
(:data:`STORED_SYNTAX`), since background compression changes it after the body is made.

Bodies are made when first asked for, and ahead of time by :class:`MetadataWarmer`, which the
compression workers run when they have nothing else to do.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pydicom.dataelem import DataElement
from pydicom.filereader import dcmread

from storage.errors import ArchiveError
from storage.index import Index
from storage.index import RetrievableInstance
from storage.index.metadata import CachedMetadata, instances_without_metadata, metadata_of, save_metadata

log = logging.getLogger("filmless.metadata")

INSTANCE_URL = "@@FILMLESS-INSTANCE-URL@@"
"""Placeholder for ``{base}/dicom-web/studies/{study}/series/{series}/instances/{instance}``."""
STORED_SYNTAX = "@@FILMLESS-STORED-SYNTAX@@"
"""Placeholder for the instance's stored transfer syntax UID."""
BULK_THRESHOLD = 1024
_AVAILABLE_TRANSFER_SYNTAX = "00083002"
_SPECIFIC_CHARACTER_SET = "00080005"


class MetadataError(ArchiveError):
    """The object cannot be read into metadata (not DICOM any more, or unreadable)."""


def _tag_path(elem: DataElement, parents: Sequence[int]) -> str:
    return "/".join(f"{t:08X}" for t in (*parents, elem.tag))


def metadata_body(data: bytes) -> bytes:
    """The compressed metadata body of a stored object's bytes."""
    try:
        ds = dcmread(BytesIO(data), force=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on bad input
        raise MetadataError(f"cannot read the object: {exc}") from exc
    ds.file_meta = None  # type: ignore[assignment]

    def bulk(elem: DataElement) -> str:
        # pydicom gives no parent path; only top-level bulk data gets a retrievable path, which
        # is all viewers ask for (Pixel Data, overlays, waveforms, encapsulated documents).
        return f"{INSTANCE_URL}/bulkdata/{_tag_path(elem, ())}"

    try:
        obj = ds.to_json_dict(bulk_data_threshold=BULK_THRESHOLD, bulk_data_element_handler=bulk)
    except Exception as exc:  # noqa: BLE001
        raise MetadataError(f"cannot convert the object to DICOM JSON: {exc}") from exc
    if "7FE00010" in obj and "BulkDataURI" not in obj["7FE00010"]:
        # Small pixel data is still bulk data for a viewer: always a URI.
        obj["7FE00010"] = {"vr": obj["7FE00010"].get("vr", "OW"), "BulkDataURI": f"{INSTANCE_URL}/bulkdata/7FE00010"}
    obj[_AVAILABLE_TRANSFER_SYNTAX] = {"vr": "UI", "Value": [STORED_SYNTAX]}
    # The JSON is Unicode whatever the object's character set (PS3.18 F.2.2).
    obj.pop(_SPECIFIC_CHARACTER_SET, None)
    obj[_SPECIFIC_CHARACTER_SET] = {"vr": "CS", "Value": ["ISO_IR 192"]}
    text = json.dumps(dict(sorted(obj.items())), ensure_ascii=False, separators=(",", ":"))
    return zlib.compress(text.encode("utf-8"), 6)


def with_instance_url(body: bytes, instance_url: str, stored_transfer_syntax: str) -> bytes:
    """The JSON of a metadata body with its BulkDataURIs made absolute and its stored
    transfer syntax filled in."""
    return (
        zlib.decompress(body)
        .replace(INSTANCE_URL.encode(), instance_url.encode())
        .replace(STORED_SYNTAX.encode(), stored_transfer_syntax.encode())
    )


@dataclass(frozen=True)
class MetadataSource:
    """What making an instance's metadata needs: where its object is and which content it is."""

    sop_instance_uid: str
    received_sha256: str
    read: Callable[[], bytes]


class MetadataCache:
    """Metadata bodies of instances: from the index when current, else made from the objects
    (in parallel) and saved for next time."""

    def __init__(self, index: Index, *, threads: int = 4) -> None:
        self.index = index
        self.threads = threads

    def bodies(self, sources: Sequence[MetadataSource]) -> list[bytes]:
        """The bodies of ``sources``, in their order."""
        cached = metadata_of(self.index, [s.sop_instance_uid for s in sources])
        out: dict[str, bytes] = {}
        missing: list[MetadataSource] = []
        for source in sources:
            hit = cached.get(source.sop_instance_uid)
            if hit is not None and hit.received_sha256 == source.received_sha256:
                out[source.sop_instance_uid] = hit.body
            else:
                missing.append(source)
        if missing:
            made = self._make(missing)
            out.update({uid: m.body for uid, m in made.items()})
            save_metadata(self.index, list(made.values()))
        return [out[s.sop_instance_uid] for s in sources]

    def _make(self, sources: Iterable[MetadataSource]) -> dict[str, CachedMetadata]:
        def one(source: MetadataSource) -> CachedMetadata:
            body = metadata_body(source.read())
            return CachedMetadata(source.sop_instance_uid, source.received_sha256, body)

        sources = list(sources)
        if len(sources) == 1:
            made = [one(sources[0])]
        else:
            with ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="metadata") as pool:
                made = list(pool.map(one, sources))
        return {m.sop_instance_uid: m for m in made}


class MetadataWarmer:
    """Makes the metadata bodies of instances that have none yet, a batch at a time, in the
    order they arrived (new versions of an instance are made again when first asked for)."""

    def __init__(
        self,
        index: Index,
        read: Callable[[RetrievableInstance], bytes],
        *,
        batch: int = 50,
        also: Callable[[RetrievableInstance, bytes], object] | None = None,
    ) -> None:
        self.index = index
        self.read = read
        self.batch = batch
        self.also = also  # more to make from each new object while it is read (pre-rendering)
        self.after_pk = 0

    def run_once(self) -> int:
        """Make one batch; return how many instances it looked at (0: nothing left)."""
        found = instances_without_metadata(self.index, self.after_pk, self.batch)
        if not found:
            return 0
        made: list[CachedMetadata] = []
        for pk, w in found:
            self.after_pk = pk
            try:
                data = self.read(w.item)
                made.append(CachedMetadata(w.sop_instance_uid, w.received_sha256, metadata_body(data)))
            except ArchiveError as exc:
                log.warning("metadata of %s not made: %s", w.sop_instance_uid, exc)
                continue
            if self.also is not None:
                try:
                    self.also(w.item, data)
                except Exception as exc:  # noqa: BLE001 - a cache filler must not stop the warmer
                    log.debug("pre-rendering %s failed: %s", w.sop_instance_uid, exc)
        save_metadata(self.index, made)
        return len(found)


def json_array(parts: Iterable[bytes]) -> bytes:
    """Metadata objects (JSON bytes) as one JSON array."""
    return b"[" + b",".join(parts) + b"]"


__all__ = [
    "INSTANCE_URL",
    "MetadataCache",
    "MetadataError",
    "MetadataSource",
    "MetadataWarmer",
    "json_array",
    "metadata_body",
    "with_instance_url",
]
