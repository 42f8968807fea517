"""The DICOMweb metadata cache: made ahead by the warmer, again when the content changes."""

from __future__ import annotations

import json
from pathlib import Path

from pydicom import dcmread

from filmless.bootstrap import Archive
from storage.index import Source
from storage.index.metadata import metadata_of, wado_instances
from storage.metadata import MetadataCache, MetadataSource, MetadataWarmer, with_instance_url
from storage.retrieve import Retriever
from tests.fixtures.synthetic import ct_series, write_datasets


def _ingest(archive: Archive, tmp_path: Path, n: int = 3) -> list[Path]:
    paths = write_datasets(ct_series(n, rows=32, cols=32, seed=3), tmp_path / "ct")
    for path in paths:
        archive.ingest.store_file(path.read_bytes(), Source(aet="T", host="h"))
    return paths


def test_the_warmer_makes_what_is_missing_once(archive: Archive, tmp_path: Path) -> None:
    paths = _ingest(archive, tmp_path)
    warmer = MetadataWarmer(archive.index, Retriever(archive.index, archive.store).read, batch=2)
    assert warmer.run_once() == 2
    assert warmer.run_once() == 1
    assert warmer.run_once() == 0
    uids = [str(dcmread(p).SOPInstanceUID) for p in paths]
    cached = metadata_of(archive.index, uids)
    assert set(cached) == set(uids)
    # A fresh warmer (a restarted worker) finds nothing to do.
    assert MetadataWarmer(archive.index, Retriever(archive.index, archive.store).read).run_once() == 0


def test_a_new_version_is_made_again_and_the_syntax_is_filled_in_per_response(archive: Archive, tmp_path: Path) -> None:
    paths = _ingest(archive, tmp_path, 1)
    retriever = Retriever(archive.index, archive.store)
    ds = dcmread(paths[0])
    (w,) = wado_instances(archive.index, str(ds.StudyInstanceUID))
    cache = MetadataCache(archive.index)
    (body,) = cache.bodies([MetadataSource(w.sop_instance_uid, w.received_sha256, lambda: retriever.read(w.item))])
    text = with_instance_url(body, "http://x/i", w.item.stored_transfer_syntax)
    assert json.loads(text)["00083002"]["Value"] == [w.item.stored_transfer_syntax]
    # The modality sends a corrected version: the cached body no longer matches.
    ds.StudyDescription = "corrected"
    changed = tmp_path / "changed.dcm"
    ds.save_as(changed, enforce_file_format=True)
    archive.ingest.store_file(changed.read_bytes(), Source(aet="T", host="h"))
    (w2,) = wado_instances(archive.index, str(ds.StudyInstanceUID))
    assert w2.received_sha256 != w.received_sha256
    (body2,) = cache.bodies([MetadataSource(w2.sop_instance_uid, w2.received_sha256, lambda: retriever.read(w2.item))])
    assert json.loads(with_instance_url(body2, "http://x/i", "1.2.840.10008.1.2.1"))["00081030"]["Value"] == ["corrected"]
