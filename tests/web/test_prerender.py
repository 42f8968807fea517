"""New images are pre-rendered in the background: the first look at a new study reads no
object (the default view and the thumbnail come from the cache)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from storage.metadata import MetadataWarmer
from storage.retrieve import Retriever
from tests.fixtures.synthetic import ct_series, write_datasets
from tests.web.conftest import WebArchive
from viewer_api.dicomweb.rendered import prerender


def test_the_warmer_prerenders_the_first_view_and_the_thumbnail(web: WebArchive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = write_datasets(ct_series(2, rows=64, cols=64, seed=9), tmp_path / "ct")
    for path in paths:
        web.ingest_file(path)
    web.archive.compressor(worker_id="test").drain()
    data_dir = Path(web.archive.settings.data)
    warmer = MetadataWarmer(
        web.archive.index,
        Retriever(web.archive.index, web.archive.store).read,
        also=lambda item, data: prerender(data_dir, item, data),
    )
    assert warmer.run_once() == 2
    ds = dcmread(paths[0])
    url = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"

    def no_reads(*_args: Any) -> bytes:
        raise AssertionError("the object was read: the picture was not in the cache")

    monkeypatch.setattr(web.app.state.web.retriever, "read", no_reads)
    rendered = web.client().get(f"{url}/frames/1/rendered", headers={"Accept": "image/jpeg"})
    assert rendered.status_code == 200 and rendered.content[:2] == b"\xff\xd8"
    thumbnail = web.client().get(f"{url}/thumbnail")
    assert thumbnail.status_code == 200 and thumbnail.content[:2] == b"\xff\xd8"
