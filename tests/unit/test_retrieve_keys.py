"""Pure parts of the retrieve and access services: reading a retrieve identifier's unique
keys, the presentation contexts proposed to a move destination, the contexts kept for a peer,
and ASCII transliteration."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless, RLELossless

from dicom_node.access import Peer, _keep_permitted_contexts
from dicom_node.retrieve import RetrieveKeys, RetrieveRefused, _contexts_for, retrieve_keys
from dicom_node.status import QRStatus
from dicom_node.server import shared_contexts
from storage.index import RetrievableInstance
from storage.text import transliterate


def _ds(**keys: object) -> Dataset:
    ds = Dataset()
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


@pytest.mark.parametrize(
    ("identifier", "root", "expected"),
    [
        (_ds(QueryRetrieveLevel="STUDY", StudyInstanceUID="1.2.3"), "STUDY", RetrieveKeys("STUDY", study_uids=("1.2.3",))),
        (
            _ds(QueryRetrieveLevel="STUDY", StudyInstanceUID=["1.2.3", "1.2.4"]),
            "STUDY",
            RetrieveKeys("STUDY", study_uids=("1.2.3", "1.2.4")),
        ),
        (
            _ds(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2", SeriesInstanceUID="1.2.5"),
            "STUDY",
            RetrieveKeys("SERIES", study_uids=("1.2",), series_uids=("1.2.5",)),
        ),
        (
            _ds(QueryRetrieveLevel="IMAGE", StudyInstanceUID="1", SeriesInstanceUID="2", SOPInstanceUID=["3", "4"]),
            "STUDY",
            RetrieveKeys("IMAGE", study_uids=("1",), series_uids=("2",), sop_instance_uids=("3", "4")),
        ),
        (_ds(QueryRetrieveLevel="PATIENT", PatientID="BN1"), "PATIENT", RetrieveKeys("PATIENT", patient_id="BN1")),
        (
            _ds(QueryRetrieveLevel="STUDY", PatientID="BN1", StudyInstanceUID="1.2"),
            "PATIENT",
            RetrieveKeys("STUDY", patient_id="BN1", study_uids=("1.2",)),
        ),
        (_ds(QueryRetrieveLevel="STUDY ", StudyInstanceUID="1.2"), "STUDY", RetrieveKeys("STUDY", study_uids=("1.2",))),
    ],
)
def test_retrieve_keys(identifier: Dataset, root: str, expected: RetrieveKeys) -> None:
    assert retrieve_keys(identifier, root) == expected


@pytest.mark.parametrize(
    ("identifier", "root", "tag"),
    [
        (_ds(StudyInstanceUID="1.2"), "STUDY", 0x00080052),
        (_ds(QueryRetrieveLevel="PATIENT", PatientID="X"), "STUDY", 0x00080052),
        (_ds(QueryRetrieveLevel="FRAME", StudyInstanceUID="1"), "STUDY", 0x00080052),
        (_ds(QueryRetrieveLevel="STUDY"), "STUDY", 0x0020000D),
        (_ds(QueryRetrieveLevel="STUDY", StudyInstanceUID=""), "STUDY", 0x0020000D),
        (_ds(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2"), "STUDY", 0x0020000E),
        (_ds(QueryRetrieveLevel="PATIENT", PatientID="BN*"), "PATIENT", 0x00100020),
        (_ds(QueryRetrieveLevel="IMAGE", StudyInstanceUID="1", SeriesInstanceUID="2"), "STUDY", 0x00080018),
    ],
)
def test_retrieve_keys_refused(identifier: Dataset, root: str, tag: int) -> None:
    with pytest.raises(RetrieveRefused) as info:
        retrieve_keys(identifier, root)
    assert info.value.status is QRStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    assert info.value.tag == tag


def _item(sop_class: str, ts: str) -> RetrievableInstance:
    return RetrievableInstance("1", "2", "3", sop_class, "k", "h", ts, 1)


def test_move_contexts_native_first_then_each_stored_syntax() -> None:
    contexts = _contexts_for(
        [_item(CTImageStorage, JPEGLSLossless), _item(CTImageStorage, RLELossless), _item(CTImageStorage, ExplicitVRLittleEndian)]
    )
    described = [(str(cx.abstract_syntax), [str(t) for t in cx.transfer_syntax]) for cx in contexts]
    assert described == [
        (CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
        (CTImageStorage, [JPEGLSLossless]),
        (CTImageStorage, [RLELossless]),
    ]


def test_move_contexts_capped_at_128() -> None:
    items = [_item(f"1.2.840.10008.5.1.4.1.1.{n}", JPEGLSLossless) for n in range(100)]
    contexts = _contexts_for(items)
    assert len(contexts) == 128
    # every SOP class still has its native context
    assert {str(cx.abstract_syntax) for cx in contexts} == {i.sop_class_uid for i in items}


def test_contexts_of_services_the_peer_may_not_use_are_dropped() -> None:
    contexts = shared_contexts(
        [
            ("1.2.840.10008.1.1", [ExplicitVRLittleEndian]),
            (CTImageStorage, [ExplicitVRLittleEndian]),
            ("1.2.840.10008.5.1.4.1.2.2.1", [ExplicitVRLittleEndian]),
            ("1.2.840.10008.5.1.4.1.2.2.2", [ExplicitVRLittleEndian]),
            ("1.2.840.10008.5.1.4.1.2.2.3", [ExplicitVRLittleEndian]),
        ]
    )
    assoc = SimpleNamespace(acceptor=SimpleNamespace(_contexts=contexts))
    _keep_permitted_contexts(assoc, Peer("CT1", "h", None, frozenset({"store", "find"})))  # type: ignore[arg-type]
    kept = [str(cx.abstract_syntax) for cx in assoc.acceptor._contexts]
    # Storage stays (C-GET receivers propose it); verification, move and get go.
    assert kept == [CTImageStorage, "1.2.840.10008.5.1.4.1.2.2.1"]


@pytest.mark.parametrize(
    ("text", "ascii"),
    [
        ("Nguyễn^Văn Đức", "Nguyen^Van Duc"),
        ("Bệnh viện Đa khoa Tỉnh Quảng Nam", "Benh vien Da khoa Tinh Quang Nam"),
        ("Trần^Thị Hương", "Tran^Thi Huong"),
        ("Müller^Jürgen", "Muller^Jurgen"),
        ("Ωmega", "?mega"),
        ("PLAIN", "PLAIN"),
    ],
)
def test_transliterate(text: str, ascii: str) -> None:
    assert transliterate(text) == ascii
