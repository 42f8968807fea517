"""Helpers of the fault tests (a store or filmless itself dying in the middle of a send):
DCMTK storescu running in the background with its responses followed live, C-FIND and C-GET
with pynetdicom, and the archive read around filmless (the SQLite index read-only, the bucket
with the test's own S3 client)."""

from __future__ import annotations

import hashlib
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from tests.e2e.support import IndexView, storescu_results
from tests.object_stores import MinioServer
from tests.peers import LOOPBACK, FilmlessServer, peer_env, storescu_command


class BackgroundStoreSCU:
    """``storescu -v`` sending files over one association, its output read as it comes."""

    def __init__(
        self, files: Sequence[Path], server: FilmlessServer, calling_aet: str, extra_args: Sequence[str] = ()
    ) -> None:
        self.files = list(files)
        self.lines: list[str] = []
        self._lock = threading.Lock()
        command = storescu_command(
            self.files, LOOPBACK, server.dicom_port, server.aet, calling_aet, extra_args=["-v", *extra_args]
        )
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=peer_env(),
        )
        self._reader = threading.Thread(target=self._read, name=f"storescu {calling_aet}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def results(self) -> tuple[list[str], list[str]]:
        """(files acknowledged with Success, files that failed) so far."""
        return storescu_results(self.output())

    def wait(self, timeout: float = 300.0) -> str:
        try:
            self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        self._reader.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.output()


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def _ae(aet: str) -> AE:
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    return ae


def c_find_instances(server: FilmlessServer, study_uid: str, series_uid: str) -> set[str]:
    """SOP Instance UIDs of the series, by an IMAGE-level C-FIND."""
    ae = _ae("FAULTFIND")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(LOOPBACK, server.dicom_port, ae_title=server.aet)
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = study_uid
    identifier.SeriesInstanceUID = series_uid
    identifier.SOPInstanceUID = ""
    found: set[str] = set()
    try:
        for status, ds in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
            assert status is not None and "Status" in status, "no C-FIND response"
            if status.Status in (0xFF00, 0xFF01):
                assert ds is not None
                found.add(str(ds.SOPInstanceUID))
            else:
                assert status.Status == 0x0000, f"C-FIND ended with 0x{int(status.Status):04X}"
    finally:
        assoc.release()
    return found


def c_get_study(server: FilmlessServer, study_uid: str) -> dict[str, Dataset]:
    """Every instance of the study, by C-GET (CT images in JPEG-LS or uncompressed)."""
    received: dict[str, Dataset] = {}

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received[str(ds.SOPInstanceUID)] = ds
        return 0x0000

    ae = _ae("FAULTGET")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    # One context per form: as stored when compressed, uncompressed when not (yet).
    ae.add_requested_context(CTImageStorage, [str(JPEGLSLossless)])
    ae.add_requested_context(CTImageStorage, [str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)])
    assoc = ae.associate(
        LOOPBACK,
        server.dicom_port,
        ae_title=server.aet,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_uid
    try:
        statuses = list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
    finally:
        assoc.release()
    final = statuses[-1][0]
    assert final is not None and final.Status == 0x0000, f"C-GET ended with {final}"
    return received


def indexed_objects(index: IndexView) -> dict[str, str]:
    """object key -> sha256 of every object the index references (current and prior versions)."""
    rows = index.query(
        "SELECT object_key, object_sha256 FROM instance UNION ALL SELECT object_key, object_sha256 FROM instance_version"
    )
    return {str(key): str(sha) for key, sha in rows}


def pending_deletions(index: IndexView) -> int:
    return int(index.query("SELECT count(*) FROM object_gc")[0][0])


def bucket_objects(minio: MinioServer, bucket: str, prefix: str) -> dict[str, str]:
    """object key (without the prefix) -> sha256 of every object in the bucket under ``prefix/``."""
    client = minio.client()
    found: dict[str, str] = {}
    for obj in client.list_objects(bucket, prefix=f"{prefix}/", recursive=True):
        name = obj.object_name
        assert name is not None
        response = client.get_object(bucket, name)
        try:
            found[name[len(prefix) + 1 :]] = hashlib.sha256(response.read()).hexdigest()
        finally:
            response.close()
            response.release_conn()
    return found


def spooled_files(data_dir: Path) -> list[Path]:
    """The objects waiting in ``<data>/spool`` (temporary files of writes in progress excluded)."""
    root = Path(data_dir) / "spool" / "objects"
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".tmp")) if root.exists() else []
