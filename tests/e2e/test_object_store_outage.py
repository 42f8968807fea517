"""The object store (a real MinIO process) dies in the middle of a send to `filmless serve
--storage s3://...`, and comes back later:

* with spooling (the default for s3://) every instance is acknowledged: those the bucket could
  not take wait durably on local disk (<data>/spool), queries find them at once, and they go up
  when MinIO is back -- also after a restart of filmless while MinIO is still down;
* without spooling the C-STOREs fail cleanly (a failure status, nothing stored) while MinIO is
  down, and the modality's retry stores them once it is back;
* either way, every acknowledged instance ends up in the bucket with the sha256 the index
  records, and `filmless verify` finds every object present and intact, and no orphan.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pydicom import dcmread

from tests.e2e.faults import (
    BackgroundStoreSCU,
    bucket_objects,
    c_find_instances,
    c_get_study,
    indexed_objects,
    pending_deletions,
    spooled_files,
    wait_until,
)
from tests.e2e.support import IndexView, StartFilmless, Synthetic, run_cli, sop_instance_uid, storescu_results
from tests.object_stores import MinioServer
from tests.peers import LOOPBACK, FilmlessServer, run_storescu

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BUCKET = "filmless-outage"


@pytest.fixture
def minio() -> Iterator[MinioServer]:
    """A MinIO of the test's own: the test kills and restarts it (same data, same port)."""
    with MinioServer() as server:
        server.create_bucket(BUCKET)
        yield server


def _study_and_series(files: list[Path]) -> tuple[str, str]:
    ds = dcmread(files[0], stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def _wait_settled(server: FilmlessServer, timeout: float = 240.0) -> None:
    """Until the spool is empty, compression is done and no deletion is pending."""
    index = IndexView(server.data_dir)
    last: dict[str, object] = {}

    def settled() -> bool:
        stats = dict(server.stats())
        last.update(stats)
        spooled = stats["spooled"]
        assert isinstance(spooled, dict)
        return spooled["objects"] == 0 and stats["pending_compression"] == 0 and pending_deletions(index) == 0

    try:
        wait_until(settled, timeout, "the spool to drain and compression to finish", interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last stats {last}\n{server.log_text()[-4000:]}") from None


def _assert_bucket_holds_the_archive(minio: MinioServer, server: FilmlessServer, prefix: str, storage: str, env: dict[str, str]) -> None:
    """The bucket holds exactly the objects the index references, each with its sha256;
    `filmless verify` agrees (nothing missing, corrupt or orphaned)."""
    indexed = indexed_objects(IndexView(server.data_dir))
    assert bucket_objects(minio, BUCKET, prefix) == indexed
    verified = run_cli("verify", "--data", str(server.data_dir), "--storage", storage, env=env)
    assert verified.returncode == 0, f"filmless verify failed:\n{verified.stdout}\n{verified.stderr}"


def test_minio_dies_and_comes_back_during_a_300_instance_send(
    minio: MinioServer, start_filmless: StartFilmless, synthetic_data: Synthetic
) -> None:
    files = synthetic_data.ct(990, slices=300, size=64)
    by_path = {str(p): p for p in files}
    prefix = "spooled"
    storage = f"s3://{BUCKET}/{prefix}"
    env = minio.filmless_env()
    with start_filmless("--storage", storage, env=env) as server:
        index = IndexView(server.data_dir)
        sender = BackgroundStoreSCU(files, server, "OUTAGE")
        wait_until(lambda: index.count() >= 50 or not sender.running, 120, "50 instances")
        assert sender.running, "storescu finished before MinIO was stopped"
        minio.kill()  # SIGKILL: no goodbye to open connections
        stopped_at = index.count()
        wait_until(lambda: index.count() >= stopped_at + 100 or not sender.running, 300, "100 more instances")
        assert sender.running, "storescu finished while MinIO was down"
        restart = threading.Thread(target=minio.start, name="minio restart")
        restart.start()  # MinIO comes back while storescu keeps sending
        output = sender.wait(300)
        restart.join(120)
        assert minio.running

        acknowledged, failed = storescu_results(output)
        assert failed == [], output[-3000:]
        assert sorted(acknowledged) == sorted(by_path)  # every C-STORE succeeded
        uids = {sop_instance_uid(p) for p in files}
        assert set(index.instances()) == uids
        log = server.log_text()
        assert "spooling new objects on local disk" in log, log[-3000:]

        _wait_settled(server)
        assert "objects uploaded to" in server.log_text()
        assert spooled_files(server.data_dir) == []
        _assert_bucket_holds_the_archive(minio, server, prefix, storage, env)
        print("\n".join(line for line in server.log_text().splitlines() if "spool" in line or "object store" in line))
        print(f"\nMinIO killed after {stopped_at} instances, back after {stopped_at + 100}; all 300 acknowledged and uploaded")


def test_without_spooling_c_stores_fail_cleanly_and_the_retry_stores_them(
    minio: MinioServer, start_filmless: StartFilmless, synthetic_data: Synthetic
) -> None:
    files = synthetic_data.ct(991, slices=100, size=64)
    by_path = {str(p): p for p in files}
    prefix = "direct"
    storage = f"s3://{BUCKET}/{prefix}"
    env = minio.filmless_env()
    with start_filmless("--storage", storage, "--spool", "off", env=env) as server:
        index = IndexView(server.data_dir)
        sender = BackgroundStoreSCU(files, server, "NOSPOOL")
        wait_until(lambda: index.count() >= 30 or not sender.running, 120, "30 instances")
        assert sender.running, "storescu finished before MinIO was stopped"
        minio.kill()
        # storescu stops at the first unsuccessful store (its default, as many modalities do).
        output = sender.wait(300)
        acknowledged, failed = storescu_results(output)
        assert len(failed) == 1 and "Received Store Response (Refused: OutOfResources)" in output, output[-3000:]
        unsent = [p for p in files if str(p) not in acknowledged]
        # Whatever is sent while MinIO is down fails the same way (after the S3 client's own
        # retries, a few seconds each).
        again = run_storescu(unsent[:2], LOOPBACK, server.dicom_port, server.aet, "NOSPOOL", extra_args=["-v", "-nh"])
        assert storescu_results(again.stdout + again.stderr) == ([], [str(p) for p in unsent[:2]]), again.stdout[-3000:]

        rows = index.instances()
        assert all(sop_instance_uid(by_path[p]) in rows for p in acknowledged), "an acknowledged instance is lost"
        assert not any(sop_instance_uid(p) in rows for p in unsent), "a failed C-STORE left an index row"
        assert spooled_files(server.data_dir) == [], "spooling is off, yet something was spooled"

        # MinIO is back; the modality sends what was not acknowledged again: all stored now.
        minio.start()
        retry = run_storescu(unsent, LOOPBACK, server.dicom_port, server.aet, "NOSPOOL")
        assert retry.returncode == 0 and "Refused" not in retry.stdout + retry.stderr, retry.stdout + retry.stderr
        assert set(index.instances()) == {sop_instance_uid(p) for p in files}
        _wait_settled(server)
        # A PUT that reached MinIO just before it died, whose answer never came back, leaves an
        # object no index row references (its C-STORE failed): verify names it, --repair removes it.
        report = run_cli("verify", "--data", str(server.data_dir), "--storage", storage, env=env)
        orphans = [line for line in report.stdout.splitlines() if line.startswith("orphan")]
        assert len(orphans) <= 1, report.stdout
        if orphans:
            repaired = run_cli("verify", "--repair", "--min-age", "0", "--data", str(server.data_dir), "--storage", storage, env=env)
            assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        _assert_bucket_holds_the_archive(minio, server, prefix, storage, env)
        print(f"\nspooling off: {len(acknowledged)} acknowledged, then C-STOREs failed until MinIO was back; {len(orphans)} orphans")


def test_filmless_restarts_with_a_full_spool_while_minio_is_down(
    minio: MinioServer, start_filmless: StartFilmless, synthetic_data: Synthetic
) -> None:
    files = synthetic_data.ct(992, slices=40, size=64)
    study, series = _study_and_series(files)
    uids = {sop_instance_uid(p) for p in files}
    prefix = "restarted"
    storage = f"s3://{BUCKET}/{prefix}"
    env = minio.filmless_env()
    with start_filmless("--storage", storage, "--compression-workers", "0", env=env) as server:
        minio.kill()
        sent = run_storescu(files, LOOPBACK, server.dicom_port, server.aet, "SPOOLER", extra_args=["-v"])
        acknowledged, failed = storescu_results(sent.stdout + sent.stderr)
        assert len(acknowledged) == len(files) and failed == [], sent.stdout[-3000:] + sent.stderr[-3000:]
        stats = dict(server.stats())
        assert stats["spooled"] == {"objects": len(files), "bytes": stats["spooled"]["bytes"]}
        assert stats["spooled"]["bytes"] > 40 * 64 * 64 * 2
        assert c_find_instances(server, study, series) == uids  # queries see spooled instances at once

        server.kill()  # kill -9 with a full spool (and MinIO still down)
        assert len(spooled_files(server.data_dir)) == len(files)
        server.extra_args = [a for a in server.extra_args if a not in ("--compression-workers", "0")]
        server.start()  # starts although the object store does not answer
        log = server.log_text()
        assert "spooled under" in log and "from an earlier run" in log, log[-3000:]
        # Retrievable from the spool while MinIO is still down.
        retrieved = c_get_study(server, study)
        assert set(retrieved) == uids

        minio.start()
        _wait_settled(server)
        _assert_bucket_holds_the_archive(minio, server, prefix, storage, env)
        assert set(c_get_study(server, study)) == uids
