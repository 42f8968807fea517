"""The PostgreSQL index stops (fast shutdown) or crashes (SIGKILL) while ``filmless serve
--index postgresql://...`` receives a steady stream of C-STOREs:

* while it is down every C-STORE fails with a failure status (or the association is refused):
  no success for anything sent after it went away;
* when it is back, ingest recovers without restarting filmless, and the instances that failed
  are stored when sent again (as a modality retries);
* every instance ever acknowledged is indexed, background compression finishes and
  ``filmless verify`` finds every object present and intact, and no orphan.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from tests.e2e.support import StartFilmless, run_cli
from tests.fixtures import synthetic
from tests.peers import LOOPBACK, FilmlessServer
from tests.postgres import PostgresServer, postgres_bindir

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SUCCESS = 0x0000
BATCH = 10  # C-STOREs per association
MAX_INSTANCES = 1500  # the sender's bound, whatever happens
PACE = 0.005  # seconds between C-STOREs


@dataclass(frozen=True)
class Sent:
    uid: str
    started: float  # time.monotonic() when the C-STORE was sent
    status: int | None  # None: no answer (association refused, aborted or not established)


class Sender:
    """Sends new CT instances to filmless in associations of BATCH, until stopped."""

    def __init__(self, server: FilmlessServer) -> None:
        self.server = server
        (self.template,) = synthetic.ct_series(1, rows=32, cols=32, seed=4242)
        self.datasets: dict[str, Dataset] = {}
        self.results: list[Sent] = []
        self.stop = threading.Event()
        self.in_association = threading.Event()  # set while an association has more to send
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="c-store sender", daemon=True)

    def new_dataset(self) -> Dataset:
        ds = copy.deepcopy(self.template)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        self.datasets[ds.SOPInstanceUID] = ds
        return ds

    def send(self, datasets: list[Dataset]) -> list[Sent]:
        ae = AE(ae_title="OUTAGE")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        started = time.monotonic()
        assoc = ae.associate(LOOPBACK, self.server.dicom_port, ae_title=self.server.aet)
        if not assoc.is_established:
            return [Sent(ds.SOPInstanceUID, started, None) for ds in datasets]
        out: list[Sent] = []
        try:
            for n, ds in enumerate(datasets):
                started = time.monotonic()
                status = assoc.send_c_store(ds) if assoc.is_established else None
                code = int(status.Status) if status is not None and "Status" in status else None
                out.append(Sent(ds.SOPInstanceUID, started, code))
                if code == SUCCESS and n < len(datasets) // 2:
                    self.in_association.set()
                else:
                    self.in_association.clear()
                time.sleep(PACE)
        finally:
            self.in_association.clear()
            if assoc.is_established:
                assoc.release()
        return out

    def _run(self) -> None:
        while not self.stop.is_set() and len(self.datasets) + BATCH <= MAX_INSTANCES:
            results = self.send([self.new_dataset() for _ in range(BATCH)])
            with self.lock:
                self.results.extend(results)
            if any(r.status is None for r in results):
                time.sleep(0.5)  # refused: a modality waits a little before trying again

    def snapshot(self) -> list[Sent]:
        with self.lock:
            return list(self.results)

    def wait_for(self, successes: int, after: float = 0.0, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while sum(r.status == SUCCESS and r.started >= after for r in self.snapshot()) < successes:
            assert self.thread.is_alive(), "the sender stopped"
            assert time.monotonic() < deadline, f"fewer than {successes} C-STOREs succeeded in {timeout} s"
            time.sleep(0.05)


@pytest.fixture
def pg() -> Iterator[PostgresServer]:
    if postgres_bindir() is None:
        pytest.skip("no PostgreSQL server installed")
    with PostgresServer(durable=True) as server:
        yield server


def _indexed(pg: PostgresServer) -> set[str]:
    with psycopg.connect(pg.dsn("filmless")) as conn:
        return {row[0] for row in conn.execute("SELECT sop_instance_uid FROM instance")}


def _pending(url: str, data: str) -> int:
    result = run_cli("stats", "--index", url, "--data", data, "--json")
    assert result.returncode == 0, result.stderr
    return int(json.loads(result.stdout)["pending_compression"])


@pytest.mark.parametrize("how", ["stop", "crash"])
def test_cstore_while_the_postgresql_index_stops_and_returns(
    pg: PostgresServer, start_filmless: StartFilmless, how: str
) -> None:
    url = pg.create_database("filmless")
    with start_filmless("--index", url, "--compression-workers", "1") as server:
        sender = Sender(server)
        sender.thread.start()
        try:
            sender.wait_for(30)
            assert sender.in_association.wait(30)  # stop it under an open association
            stopping = time.monotonic()
            pg.stop() if how == "stop" else pg.crash()
            down = time.monotonic()
            time.sleep(3.0)  # C-STOREs keep coming while the index is away
            during = [r for r in sender.snapshot() if r.started >= down]
            answered = [r for r in sender.snapshot() if r.started >= stopping and r.status is not None]
            pg.start()
            up = time.monotonic()
            sender.wait_for(30, after=up, timeout=60)  # recovers, filmless not restarted
        finally:
            sender.stop.set()
            sender.thread.join(60)
        assert not sender.thread.is_alive()
        assert server.running, "filmless serve died with its index"
        results = sender.snapshot()

        # While the index was down: failures only, never a success. The association open at
        # the stop got failure statuses (Out of Resources); later ones were refused.
        assert during, "nothing was sent while the index was down"
        assert all(r.status != SUCCESS for r in during), [r for r in during if r.status == SUCCESS]
        failures = [r.status for r in answered if r.status != SUCCESS]
        assert failures and all(status is not None and status >= 0xA000 for status in failures), failures

        # Every acknowledged instance is indexed (what was committed before the stop too).
        acknowledged = {r.uid for r in results if r.status == SUCCESS}
        assert acknowledged <= _indexed(pg)

        # A modality sends again what failed: stored now (or found stored).
        failed = sorted({r.uid for r in results} - acknowledged)
        assert failed
        for start in range(0, len(failed), BATCH):
            batch = sender.send([sender.datasets[uid] for uid in failed[start : start + BATCH]])
            assert [r.status for r in batch] == [SUCCESS] * len(batch)
        assert _indexed(pg) == set(sender.datasets)

        deadline = time.monotonic() + 120
        while _pending(url, str(server.data_dir)):
            assert time.monotonic() < deadline, "background compression did not finish"
            time.sleep(0.5)
        check = run_cli("verify", "--index", url, "--data", str(server.data_dir))
        assert check.returncode == 0, check.stdout + check.stderr
        assert f"checked {len(sender.datasets)} objects" in check.stdout
        # Index failures were answered as such: no exception escaped as an unexpected one.
        assert "failed unexpectedly" not in server.log_text()
