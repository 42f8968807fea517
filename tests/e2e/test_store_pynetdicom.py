"""pynetdicom as the sender: good objects sent byte for byte, and bad ones refused with the
right DIMSE status, an Error Comment, a log line, and nothing stored."""

from __future__ import annotations

import contextlib
import random
from io import BytesIO
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF

from tests.e2e.faults import wait_until
from tests.e2e.support import (
    IndexView,
    StartFilmless,
    Synthetic,
    assert_verify_ok,
    check_stored_instance,
    object_files,
    sop_instance_uid,
)
from tests.peers import LOOPBACK, FilmlessServer, echo

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("raw_c_store")]

MAX_OBJECT_SIZE = 1_000_000  # a 512x512 CT slice (~0.5 MB) fits, the 3000x2500 DX (~15 MB) does not
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900


@pytest.fixture(scope="module")
def server(start_filmless: StartFilmless) -> Iterator[FilmlessServer]:
    with start_filmless("--max-object-size", str(MAX_OBJECT_SIZE)) as srv:
        yield srv


@contextlib.contextmanager
def association(server: FilmlessServer, calling: str = "PYSCU") -> Iterator[Association]:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    # One context per transfer syntax, so each file travels in its own.
    for sop_class in (CTImageStorage, DigitalXRayImageStorageForPresentation, MRImageStorage):
        for ts in (ExplicitVRLittleEndian, JPEGLSLossless, JPEG2000Lossless):
            ae.add_requested_context(sop_class, ts)
    assoc = ae.associate(LOOPBACK, server.dicom_port, ae_title=server.aet)
    assert assoc.is_established, "association with filmless failed"
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def _dataset_offset(path: Path) -> int:
    from pynetdicom.dsutils import split_dataset

    return split_dataset(path)[1]


# ------------------------------------------------------------------------ good objects


@pytest.mark.parametrize("syntax", ["explicit", "jpegls", "j2k"])
def test_raw_send_is_stored_byte_for_byte(server: FilmlessServer, synthetic_data: Synthetic, syntax: str) -> None:
    files = synthetic_data.ct(200 + len(syntax), syntax, slices=4)
    with association(server) as assoc:
        for path in files:
            status = assoc.send_c_store(path)
            assert status.Status == SUCCESS, status
    server.wait_compressed(timeout=120)
    index = IndexView(server.data_dir)
    for path in files:
        check_stored_instance(index, path, file_bytes_sent=True)


# ------------------------------------------------------------------------- bad objects


def _write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path)  # the file meta as set, not derived from the dataset
    return path


def _mismatched_sop_class(src: Path, out: Path) -> Path:
    ds = dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = MRImageStorage  # the file meta (and so the request and context) says CT
    return _write(ds, out)


def _mismatched_sop_instance(src: Path, out: Path) -> Path:
    ds = dcmread(src)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # the request names another instance
    return _write(ds, out)


def _garbage(src: Path, out: Path) -> Path:
    data = src.read_bytes()
    noise = random.Random(7).randbytes(20_000)
    out.write_bytes(data[: _dataset_offset(src)] + noise)
    return out


def _truncated_in_pixel_data(src: Path, out: Path) -> Path:
    data = src.read_bytes()
    out.write_bytes(data[: len(data) - 100_001])
    return out


def _truncated_in_header(src: Path, out: Path) -> Path:
    data = src.read_bytes()
    out.write_bytes(data[: _dataset_offset(src) + 301])
    return out


def _missing_sop_instance_uid(src: Path, out: Path) -> Path:
    ds = dcmread(src)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    del ds.SOPInstanceUID
    return _write(ds, out)


BAD = {
    # name: (maker, expected status or status family (high nibble), log status name)
    "sop-class-mismatch": (_mismatched_sop_class, DATASET_DOES_NOT_MATCH_SOP_CLASS, "DATASET_DOES_NOT_MATCH_SOP_CLASS"),
    "sop-instance-mismatch": (_mismatched_sop_instance, DATASET_DOES_NOT_MATCH_SOP_CLASS, "DATASET_DOES_NOT_MATCH_SOP_CLASS"),
    "garbage-dataset": (_garbage, 0xC, "CANNOT_UNDERSTAND"),
    "truncated-pixel-data": (_truncated_in_pixel_data, 0xC, "CANNOT_UNDERSTAND"),
    "truncated-header": (_truncated_in_header, 0xC, "CANNOT_UNDERSTAND"),
    "missing-sop-instance-uid": (_missing_sop_instance_uid, 0xC, "CANNOT_UNDERSTAND"),
}


def _status_matches(status: int, expected: int) -> bool:
    return status == expected if expected > 0xF else status >> 12 == expected


def _assert_refused(
    server: FilmlessServer, path: Path, expected: int, status_name: str, *, log_before: int
) -> str:
    index = IndexView(server.data_dir)
    count, objects = index.count(), object_files(server.data_dir)
    with association(server) as assoc:
        rsp = assoc.send_c_store(path)
        assert rsp is not None and "Status" in rsp, f"no C-STORE response: {rsp}"
        assert _status_matches(int(rsp.Status), expected), f"status 0x{int(rsp.Status):04X}, expected 0x{expected:X}"
        comment = str(rsp.get("ErrorComment", ""))
        assert comment, "a failure status without an Error Comment"
        # The association is still usable after a refusal.
        status = assoc.send_c_store(path)
        assert int(status.Status) == int(rsp.Status)
    # Nothing stored: no row, no object.
    assert index.count() == count
    assert object_files(server.data_dir) == objects
    # The log names the refusal and its reason (the comment is the reason cut to 64 chars).
    new_log = server.log_text()[log_before:]
    lines = [line for line in new_log.splitlines() if "rejected" in line and status_name in line]
    assert lines, f"no log line for the refusal:\n{new_log[-3000:]}"
    assert any(comment[:40] in line for line in lines), f"comment {comment!r} not in {lines}"
    return comment


@pytest.mark.parametrize("case", list(BAD))
def test_bad_object_is_refused(server: FilmlessServer, synthetic_data: Synthetic, tmp_path: Path, case: str) -> None:
    maker, expected, status_name = BAD[case]
    src = synthetic_data.ct(300, "explicit", slices=3)[0]
    path = maker(src, tmp_path / f"{case}.dcm")
    log_before = len(server.log_text())
    comment = _assert_refused(server, path, expected, status_name, log_before=log_before)
    if case == "sop-class-mismatch":
        assert "SOP Class" in comment
    if case == "missing-sop-instance-uid":
        assert "SOP Instance UID" in comment
    if case.startswith("truncated") or case == "garbage-dataset":
        assert "cut short" in comment or "parse" in comment
    # The refused instance is indexed under neither UID it names (request and dataset).
    indexed = IndexView(server.data_dir).instances()
    assert str(read_file_meta_info(path).MediaStorageSOPInstanceUID) not in indexed
    if case in ("sop-class-mismatch", "sop-instance-mismatch"):
        assert sop_instance_uid(path) not in indexed


def test_object_over_max_object_size_is_refused(server: FilmlessServer, synthetic_data: Synthetic) -> None:
    dx = synthetic_data.dx(301)[0]
    assert dx.stat().st_size > MAX_OBJECT_SIZE
    log_before = len(server.log_text())
    comment = _assert_refused(server, dx, OUT_OF_RESOURCES, "OUT_OF_RESOURCES", log_before=log_before)
    assert "exceeds" in comment
    assert sop_instance_uid(dx) not in IndexView(server.data_dir).instances()


def test_an_association_aborted_mid_data_set_leaves_no_file(server: FilmlessServer, synthetic_data: Synthetic) -> None:
    """The fast path writes a C-STORE's object as its PDUs arrive: an association aborted
    halfway through the data set leaves neither an object nor a temporary file."""
    path = synthetic_data.ct(302, "explicit", slices=1)[0]
    indexed_before = IndexView(server.data_dir).count()
    with association(server) as assoc:
        context = next(
            cx
            for cx in assoc.accepted_contexts
            if cx.abstract_syntax == CTImageStorage and cx.transfer_syntax[0] == ExplicitVRLittleEndian
        )
        request = C_STORE()
        request.MessageID = 1
        request.AffectedSOPClassUID = CTImageStorage
        request.AffectedSOPInstanceUID = sop_instance_uid(path)
        request.Priority = 0
        request.DataSet = BytesIO(path.read_bytes()[_dataset_offset(path) :])
        message = C_STORE_RQ()
        message.primitive_to_message(request)
        pdus = []
        for p_data in message.encode_msg(context.context_id, 16384):
            pdu = P_DATA_TF()
            pdu.from_primitive(p_data)
            pdus.append(pdu.encode())
        for pdu in pdus[: len(pdus) // 2]:  # the command and half the data set
            assoc.dul.socket.send(pdu)
        wait_until(lambda: any(p.name.endswith(".tmp") for p in object_files(server.data_dir)), 10, "the write")
        assoc.abort()
    wait_until(lambda: not any(p.name.endswith(".tmp") for p in object_files(server.data_dir)), 10, "the file dropped")
    assert IndexView(server.data_dir).count() == indexed_before
    assert sop_instance_uid(path) not in IndexView(server.data_dir).instances()


def test_server_stays_up_and_stores_after_refusals(server: FilmlessServer, synthetic_data: Synthetic) -> None:
    """Runs after the refusals above: a good instance is stored, the archive verifies."""
    assert server.running
    assert echo(LOOPBACK, server.dicom_port, server.aet)
    good = synthetic_data.ct(300, "explicit", slices=3)
    with association(server) as assoc:
        for path in good:
            assert assoc.send_c_store(path).Status == SUCCESS
    server.wait_compressed(timeout=120)
    index = IndexView(server.data_dir)
    for path in good:
        check_stored_instance(index, path, file_bytes_sent=True)
    assert_verify_ok(server.data_dir)
    assert "Traceback" not in server.log_text()
