"""dicom_node.status: the one table from domain errors to DIMSE statuses (PS3.4 B.2.3)."""

from __future__ import annotations

import pytest

from dicom_node.status import Status, error_comment, status_for
from storage.errors import (
    ArchiveError,
    CodecError,
    IndexUnavailable,
    InstanceAlreadyExists,
    MalformedDataset,
    MissingAttribute,
    NotDicom,
    ObjectNotFound,
    ObjectStoreError,
    ObjectTooLarge,
    RejectedInstance,
    SOPClassMismatch,
)


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (ObjectTooLarge("too big"), Status.OUT_OF_RESOURCES),
        (SOPClassMismatch("wrong class"), Status.DATASET_DOES_NOT_MATCH_SOP_CLASS),
        (NotDicom("garbage"), Status.CANNOT_UNDERSTAND),
        (MalformedDataset("cut short"), Status.CANNOT_UNDERSTAND),
        (MissingAttribute("no UID"), Status.CANNOT_UNDERSTAND),
        (ObjectStoreError("disk full"), Status.OUT_OF_RESOURCES),
        (ObjectNotFound("ab/cd/ef"), Status.OUT_OF_RESOURCES),
        (IndexUnavailable("locked"), Status.OUT_OF_RESOURCES),
        (RejectedInstance("other"), Status.PROCESSING_FAILURE),
        (InstanceAlreadyExists("race"), Status.PROCESSING_FAILURE),
        (CodecError("codec"), Status.PROCESSING_FAILURE),
        (ArchiveError("archive"), Status.PROCESSING_FAILURE),
        (RuntimeError("bug"), Status.PROCESSING_FAILURE),
        (KeyError("x"), Status.PROCESSING_FAILURE),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.name,
)
def test_status_for(exc: BaseException, status: Status) -> None:
    assert status_for(exc) is status


def test_statuses_are_the_standard_values() -> None:
    values = {status.name: int(status) for status in Status}
    assert values["SUCCESS"] == 0x0000
    assert values["OUT_OF_RESOURCES"] == 0xA700
    assert values["DATASET_DOES_NOT_MATCH_SOP_CLASS"] == 0xA900
    assert values["CANNOT_UNDERSTAND"] == 0xC000
    assert values["PROCESSING_FAILURE"] == 0x0110
    # C-STORE failures are in the failure ranges (PS3.4 B.2.3, PS3.7 C.4)
    for name, value in values.items():
        if name != "SUCCESS":
            assert value >> 12 in (0xA, 0xC, 0x0) and value != 0


@pytest.mark.parametrize(
    "exc",
    [
        MalformedDataset("element (7FE0,0010) is cut short: declared 524288 bytes, 1000 remain"),
        MissingAttribute("Bệnh nhân Nguyễn Văn Đức: Study Instance UID is missing or empty"),
        NotDicom("x" * 500),
        RejectedInstance(""),
        RuntimeError(),
        RuntimeError("ünïcödé " * 20),
        ObjectStoreError("line one\nline two"),
    ],
    ids=["long", "vietnamese", "very-long", "empty-reason", "no-message", "unicode", "newline"],
)
def test_error_comment_is_short_ascii(exc: BaseException) -> None:
    comment = error_comment(exc)
    assert 0 < len(comment) <= 64
    assert comment.isascii()


def test_error_comment_prefers_the_reason() -> None:
    assert error_comment(MissingAttribute("SOP Instance UID is missing or empty")) == (
        "SOP Instance UID is missing or empty"
    )
    assert error_comment(RuntimeError()) == "RuntimeError"
    assert error_comment(RejectedInstance("")) == "RejectedInstance"
    assert error_comment(NotDicom("x" * 100)) == "x" * 64


def test_error_comment_is_a_valid_lo_value() -> None:
    comment = error_comment(MalformedDataset("the dataset cannot be parsed: line one\nline two\\three"))
    assert "\\" not in comment
    assert all(ch >= " " for ch in comment)
