"""Two `filmless serve` processes on one PostgreSQL index and one MinIO bucket, fed the same
study by two senders at the same moment: nothing is lost and nothing is duplicated (the
production-storage issue's "two processes" fault). Both run their compression workers on the
shared job queue; afterwards the bucket holds exactly the objects the index references."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from tests.e2e.support import StartFilmless, Synthetic, run_cli
from tests.object_stores import MinioServer
from tests.peers import LOOPBACK, run_storescu
from tests.postgres import PostgresServer, postgres_bindir

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BUCKET = "filmless-two"


@pytest.fixture(scope="module")
def shared_storage() -> Iterator[tuple[PostgresServer, MinioServer]]:
    if postgres_bindir() is None:
        pytest.skip("PostgreSQL server binaries are not installed")
    with PostgresServer(durable=True) as pg, MinioServer() as minio:
        minio.create_bucket(BUCKET)
        yield pg, minio


def test_same_study_from_two_senders_into_two_processes(
    shared_storage: tuple[PostgresServer, MinioServer], start_filmless: StartFilmless, synthetic_data: Synthetic
) -> None:
    pg, minio = shared_storage
    env = {"FILMLESS_INDEX": pg.create_database(), "FILMLESS_STORAGE": f"s3://{BUCKET}/two", **minio.filmless_env()}
    files = synthetic_data.ct(777, slices=40, size=64)
    uids = {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files}

    with start_filmless(env=env) as first, start_filmless(env=env) as second:
        results: dict[str, Any] = {}

        def send(name: str, server: Any, order: list[Path]) -> None:
            results[name] = run_storescu(order, LOOPBACK, server.dicom_port, server.aet)

        senders = [
            threading.Thread(target=send, args=("a", first, files)),
            # the second sender goes through the study backwards, so the two meet in the middle
            threading.Thread(target=send, args=("b", second, list(reversed(files)))),
        ]
        for t in senders:
            t.start()
        for t in senders:
            t.join(timeout=300)
        for name, result in results.items():
            assert result.returncode == 0, f"sender {name}: {result.stdout[-2000:]}{result.stderr[-2000:]}"

        stats = first.wait_compressed(timeout=300)
        assert (stats["patients"], stats["studies"], stats["series"], stats["instances"]) == (1, 1, 1, len(uids))
        assert second.stats()["instances"] == len(uids)  # the same index, seen from the other process

        rows = pg.execute("SELECT sop_instance_uid, object_key FROM instance", database=env["FILMLESS_INDEX"].rsplit("/", 1)[1])
        assert sorted(r[0] for r in rows) == sorted(uids)  # each instance once
        keys = {f"two/{r[1]}" for r in rows}
        in_bucket = {o.object_name for o in minio.client().list_objects(BUCKET, prefix="two/", recursive=True)}
        assert keys <= in_bucket
    # verify through the CLI with the same settings: every object present, no orphans
    result = run_cli("verify", "--data", str(first.data_dir), env=env)
    assert result.returncode == 0, result.stdout + result.stderr

