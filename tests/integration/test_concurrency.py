"""Many associations at once: threads sharing one Ingest over one SQLite index."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from pydicom.uid import JPEGLSLossless

from filmless.bootstrap import Archive
from storage.index import Source, schema
from storage.ingest import Outcome
from storage.verify import verify
from tests.fixtures import synthetic
from tests.integration.conftest import object_keys, rows
from tests.unit.support import to_part10

THREADS = 8


def _files(n: int, seed: int) -> list[bytes]:
    """``n`` slices of one series: one generated slice whose SOP Instance UID (in the meta and
    the dataset) is rewritten in place, keeping its length (generating 400 is slow)."""
    (template,) = synthetic.ct_series(1, rows=16, cols=16, seed=seed)
    uid = str(template.SOPInstanceUID)
    data = to_part10(template)
    assert data.count(uid.encode()) == 2
    return [data.replace(uid.encode(), f"{uid[:-5]}{i + 10000:05d}".encode()) for i in range(n)]


def _run(threads: int, work: Callable[[int], list[Outcome]]) -> Counter[Outcome]:
    barrier = threading.Barrier(threads)

    def start(i: int) -> list[Outcome]:
        barrier.wait()  # all threads start together
        return work(i)

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(start, range(threads)))
    return Counter(outcome for outcomes in results for outcome in outcomes)


def test_eight_threads_of_fifty_instances(archive: Archive) -> None:
    files = _files(THREADS * 50, seed=11)

    def send(i: int) -> list[Outcome]:
        source = Source(aet=f"MOD{i}", host=f"10.0.0.{i}")
        return [archive.ingest.store_file(f, source).outcome for f in files[i::THREADS]]

    assert _run(THREADS, send) == Counter({Outcome.STORED: 400})
    stats = archive.index.stats()
    assert (stats["patients"], stats["studies"], stats["series"], stats["instances"]) == (1, 1, 1, 400)
    instances = rows(archive, schema.instance)
    assert len({r.sop_instance_uid for r in instances}) == 400
    assert {r.object_key for r in instances} == object_keys(archive)
    (series,) = rows(archive, schema.series)
    (study,) = rows(archive, schema.study)
    assert series.number_of_instances == study.number_of_instances == 400
    assert study.received_bytes == sum(r.received_size for r in instances)
    assert archive.index.pending_jobs() == 400
    assert verify(archive.index, archive.store).ok


def test_the_same_instances_sent_by_every_thread_are_stored_once(archive: Archive) -> None:
    files = _files(50, seed=12)

    def send_all(i: int) -> list[Outcome]:
        order = files[i % 2 :: 2] + files[1 - i % 2 :: 2]  # two interleaved orders
        return [archive.ingest.store_file(f, Source(aet=f"MOD{i}", host=None)).outcome for f in order]

    outcomes = _run(THREADS, send_all)
    assert outcomes == Counter({Outcome.STORED: 50, Outcome.DUPLICATE: 50 * (THREADS - 1)})
    assert archive.index.stats()["instances"] == 50
    assert len(object_keys(archive)) == 50  # the losers' objects were removed
    assert archive.index.pending_jobs() == 50
    assert verify(archive.index, archive.store).ok


def test_ingest_while_the_worker_compresses(archive: Archive) -> None:
    files = _files(THREADS * 12, seed=13)
    stop = threading.Event()
    worker = threading.Thread(target=archive.compressor("bg").run_forever, args=(stop, 0.01))
    worker.start()
    try:

        def send(i: int) -> list[Outcome]:
            return [archive.ingest.store_file(f, Source(aet="CT", host=None)).outcome for f in files[i::THREADS]]

        assert _run(THREADS, send) == Counter({Outcome.STORED: THREADS * 12})
    finally:
        stop.set()
        worker.join(timeout=60)
    archive.compressor().drain()
    stats = archive.index.stats()
    assert stats["instances"] == THREADS * 12 and stats["pending_compression"] == 0
    assert {r.stored_transfer_syntax for r in rows(archive, schema.instance)} == {JPEGLSLossless}
    assert object_keys(archive) == {r.object_key for r in rows(archive, schema.instance)}
    (study,) = rows(archive, schema.study)
    assert study.stored_bytes == sum(r.stored_size for r in rows(archive, schema.instance))
    report = verify(archive.index, archive.store)
    assert report.ok, report


def test_two_archives_on_one_index_store_a_new_study_once(make_archive: Callable[..., Archive]) -> None:
    """Two archives with engines, pools and write locks of their own (as two processes have)
    over one index and one object store: threads of both store the same new patient, study and
    series at once. SQLite queues them on its file lock; PostgreSQL on its unique keys and row
    locks. Each entity exists once, with counts over every instance."""
    first = make_archive()
    second = make_archive(index=first.settings.index_url, storage=first.settings.storage_url)
    files = _files(40, seed=13)

    def send_all(i: int) -> list[Outcome]:
        archive = (first, second)[i % 2]
        order = files[i % 4 :] + files[: i % 4]  # every thread starts somewhere else
        return [archive.ingest.store_file(f, Source(aet=f"MOD{i}", host=None)).outcome for f in order]

    outcomes = _run(THREADS, send_all)
    assert outcomes == Counter({Outcome.STORED: 40, Outcome.DUPLICATE: 40 * (THREADS - 1)})
    stats = first.index.stats()
    assert (stats["patients"], stats["studies"], stats["series"], stats["instances"]) == (1, 1, 1, 40)
    (series,) = rows(first, schema.series)
    (study,) = rows(first, schema.study)
    assert series.number_of_instances == study.number_of_instances == 40
    assert study.number_of_series == 1
    assert {r.object_key for r in rows(first, schema.instance)} == object_keys(first)
    assert verify(first.index, first.store).ok
