"""storage.part10: splitting files, building file meta, and recognising cut-off datasets."""

from __future__ import annotations

import io
import warnings
import zlib
from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
)

from storage import part10
from storage.errors import MalformedDataset, NotDicom, RejectedInstance
from tests.fixtures import synthetic
from tests.unit.support import (
    CHARSET_FILES,
    DICOMDIR_TESTS,
    TEST_FILES,
    sample_bytes,
    small_ct,
    to_part10,
    top_level_elements,
)

# pydicom samples that are not complete, well-formed datasets on purpose, and what we say.
NOT_PARSEABLE = {
    "MR_truncated.dcm": MalformedDataset,  # Pixel Data cut short
    "rtplan_truncated.dcm": MalformedDataset,
    "meta_missing_tsyntax.dcm": MalformedDataset,  # file meta without (0002,0010)
    "no_meta.dcm": NotDicom,  # a stray byte before the first tag: only force=True reads it
    "ExplVR_BigEndNoMeta.dcm": NotDicom,  # bare big endian dataset: not accepted (documented)
    "DICOMDIR-nooffset": MalformedDataset,  # an item's length was not updated when edited
    "emri_small_jpeg_2k_lossless_too_short.dcm": MalformedDataset,  # pydicom-data
}
_SKIP_SUFFIXES = {".txt", ".json", ".dump", ".icc", ".gz"}


def _sample_files() -> list[Path]:
    files = [p for p in sorted(TEST_FILES.rglob("*")) if p.is_file() and p.suffix not in _SKIP_SUFFIXES]
    files = [p for p in files if p.name != "README"]
    return files + sorted(CHARSET_FILES.glob("*.dcm"))


SAMPLES = _sample_files()


def _id(path: Path) -> str:
    return str(path.relative_to(path.parents[1] if path.parent.name != "test_files" else path.parent))


# --- split ----------------------------------------------------------------------------------
def test_split_part10_file() -> None:
    ds = small_ct(1)[0]
    data = to_part10(ds, ImplicitVRLittleEndian)
    split = part10.split(data)
    assert split.transfer_syntax_uid == ImplicitVRLittleEndian
    assert data.endswith(split.dataset)
    assert split.dataset[:4] == b"\x08\x00\x05\x00"  # (0008,0005) comes first
    assert split.source_aet is None


def test_split_reads_the_source_aet() -> None:
    ds = small_ct(1)[0]
    ds.file_meta.SourceApplicationEntityTitle = "CT_SCANNER"
    assert part10.split(to_part10(ds)).source_aet == "CT_SCANNER"


def test_split_without_preamble() -> None:
    data = to_part10(small_ct(1)[0])
    # Without the preamble and "DICM" the meta is still recognised by its first element.
    without = data[132:]
    split = part10.split(without)
    assert split.transfer_syntax_uid == ExplicitVRLittleEndian
    assert split.dataset == part10.split(data).dataset


@pytest.mark.parametrize("ts", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_split_bare_dataset(ts: str) -> None:
    dataset = part10.split(to_part10(small_ct(1)[0], ts)).dataset
    split = part10.split(dataset)
    assert split.transfer_syntax_uid == ts
    assert split.dataset == dataset
    assert part10.check_complete(split.dataset, split.transfer_syntax_uid) is True


def test_split_bare_pydicom_samples() -> None:
    split = part10.split(sample_bytes("ExplVR_LitEndNoMeta.dcm"))
    assert split.transfer_syntax_uid == ExplicitVRLittleEndian
    split = part10.split(sample_bytes("no_meta_group_length.dcm"))
    assert split.transfer_syntax_uid == ImplicitVRLittleEndian


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello world, this is not DICOM at all",
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 200,
        b"%PDF-1.4\n" + b"x" * 300,
        b"\x00" * 132,
        b"\x00" * 128 + b"DIC",
        bytes(range(256)) * 4,
    ],
    ids=["empty", "text", "png", "pdf", "zero-preamble", "short-prefix", "bytes"],
)
def test_split_garbage_is_not_dicom(data: bytes) -> None:
    with pytest.raises(NotDicom):
        part10.split(data)


def test_meta_without_transfer_syntax() -> None:
    with pytest.raises(MalformedDataset, match="Transfer Syntax"):
        part10.split(sample_bytes("meta_missing_tsyntax.dcm"))
    built = part10.build_file(b"", transfer_syntax_uid="", sop_class_uid="1.2", sop_instance_uid="1.2.3")
    with pytest.raises(MalformedDataset, match="Transfer Syntax"):
        part10.split(built)


@pytest.mark.parametrize("cut", [134, 140, 150, 160])
def test_split_meta_cut_short(cut: int) -> None:
    data = to_part10(small_ct(1)[0])
    with pytest.raises(MalformedDataset):
        split = part10.split(data[:cut])
        part10.check_complete(split.dataset, split.transfer_syntax_uid)


def test_meta_with_an_invalid_vr() -> None:
    data = bytearray(to_part10(small_ct(1)[0]))
    data[132 + 4 : 132 + 6] = b"ZZ"  # the group length's VR
    with pytest.raises(MalformedDataset):
        part10.split(bytes(data))


# --- build_file -------------------------------------------------------------------------------
@pytest.mark.parametrize("source_aet", [None, "MODALITY1", "A_VERY_LONG_AE_TITLE_THAT_IS_CUT"])
def test_build_file_is_read_by_pydicom(source_aet: str | None) -> None:
    original = small_ct(1)[0]
    dataset = part10.split(to_part10(original)).dataset
    built = part10.build_file(
        dataset,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        sop_class_uid=original.SOPClassUID,
        sop_instance_uid=original.SOPInstanceUID,
        source_aet=source_aet,
    )
    assert built[:128] == b"\x00" * 128 and built[128:132] == b"DICM"
    assert built.endswith(dataset)  # the dataset bytes are untouched
    ds = pydicom.dcmread(io.BytesIO(built))
    meta = ds.file_meta
    assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert meta.MediaStorageSOPClassUID == original.SOPClassUID
    assert meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
    assert meta.ImplementationClassUID == part10.IMPLEMENTATION_CLASS_UID
    assert meta.ImplementationVersionName == part10.IMPLEMENTATION_VERSION_NAME
    assert meta.FileMetaInformationVersion == b"\x00\x01"
    # The group length counts every meta element after it.
    assert meta.FileMetaInformationGroupLength == len(built) - len(dataset) - 132 - 12
    if source_aet is None:
        assert "SourceApplicationEntityTitle" not in meta
    else:
        assert meta.SourceApplicationEntityTitle == source_aet[:16]
    assert ds.PatientName == original.PatientName
    assert (ds.pixel_array == original.pixel_array).all()
    # Round trip through split.
    again = part10.split(built)
    assert again.dataset == dataset
    assert again.transfer_syntax_uid == ExplicitVRLittleEndian
    assert again.source_aet == (source_aet[:16] if source_aet else None)


def test_build_file_pads_odd_uids() -> None:
    built = part10.build_file(
        b"\x08\x00\x16\x00\x02\x00\x00\x001\x00",  # (0008,0016) implicit VR
        transfer_syntax_uid=ImplicitVRLittleEndian,  # 17 characters: padded with NUL
        sop_class_uid="1.2.3",
        sop_instance_uid="1.2.3.4",
    )
    assert len(built) % 2 == 0
    meta = pydicom.dcmread(io.BytesIO(built), force=True).file_meta
    assert meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert meta.MediaStorageSOPClassUID == "1.2.3"


def test_encoding_of() -> None:
    assert part10.encoding_of(ImplicitVRLittleEndian) == (True, True)
    assert part10.encoding_of(ExplicitVRLittleEndian) == (False, True)
    assert part10.encoding_of(ExplicitVRBigEndian) == (False, False)
    assert part10.encoding_of(JPEGLSLossless) == (False, True)


# --- check_complete on every sample --------------------------------------------------------
@pytest.mark.parametrize("path", SAMPLES, ids=_id)
def test_check_complete_on_pydicom_samples(path: Path) -> None:
    data = path.read_bytes()
    expected = NOT_PARSEABLE.get(path.name)
    if expected is not None:
        with pytest.raises(expected):
            split = part10.split(data)
            part10.check_complete(split.dataset, split.transfer_syntax_uid)
        return
    split = part10.split(data)
    has_pixels = part10.check_complete(split.dataset, split.transfer_syntax_uid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own remarks on odd samples
        ds = pydicom.dcmread(path, force=True)
    assert has_pixels == ("PixelData" in ds)


def test_check_complete_on_pydicom_data_samples() -> None:
    """The larger samples of pydicom-data, when installed."""
    from tests.unit.support import data_store

    store = data_store()
    if store is None:
        pytest.skip("pydicom-data is not installed")
    checked = 0
    for path in sorted(store.glob("*.dcm")):
        data = path.read_bytes()
        if path.name in NOT_PARSEABLE:
            with pytest.raises(NOT_PARSEABLE[path.name]):
                split = part10.split(data)
                part10.check_complete(split.dataset, split.transfer_syntax_uid)
            continue
        split = part10.split(data)
        assert part10.check_complete(split.dataset, split.transfer_syntax_uid) is True, path.name
        checked += 1
    assert checked > 20


def test_check_complete_rejects_an_empty_dataset() -> None:
    with pytest.raises(MalformedDataset, match="empty"):
        part10.check_complete(b"", ExplicitVRLittleEndian)


def test_check_complete_accepts_trailing_padding() -> None:
    dataset = part10.split(to_part10(small_ct(1)[0])).dataset
    assert part10.check_complete(dataset + b"\x00" * 6, ExplicitVRLittleEndian) is True
    with pytest.raises(MalformedDataset):
        part10.check_complete(dataset + b"\x01\x02\x03", ExplicitVRLittleEndian)


def test_check_complete_reads_implicit_behind_explicit() -> None:
    """Some writers put an implicit VR dataset behind an explicit transfer syntax."""
    dataset = part10.split(to_part10(small_ct(1)[0], ImplicitVRLittleEndian)).dataset
    assert part10.check_complete(dataset, ExplicitVRLittleEndian) is True


def test_check_complete_deflated() -> None:
    data = to_part10(small_ct(1)[0], DeflatedExplicitVRLittleEndian)
    split = part10.split(data)
    assert split.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    assert part10.check_complete(split.dataset, split.transfer_syntax_uid) is True
    with pytest.raises(MalformedDataset, match="inflated"):
        part10.check_complete(b"\xff" * 64, DeflatedExplicitVRLittleEndian)
    with pytest.raises(MalformedDataset):
        part10.check_complete(split.dataset[: len(split.dataset) // 2], split.transfer_syntax_uid)


# --- truncation ---------------------------------------------------------------------------------
def _assert_cut(dataset: bytes, ts: str, cut: int, elements: list[tuple[int, int]]) -> None:
    """A cut dataset is refused unless the cut falls on a top-level element boundary (perhaps
    followed by zero bytes): there it is a shorter, well-formed dataset that no structural check
    can tell apart (C-STORE has its last-fragment flag; a file cut there is a known limit)."""
    try:
        has_pixels = part10.check_complete(dataset[:cut], ts)
    except MalformedDataset:
        return
    on_boundary = [start for start, _tag in elements if start <= cut and not dataset[start:cut].strip(b"\x00")]
    assert on_boundary and cut > 0, f"cut at {cut} inside an element was accepted"
    assert has_pixels == any(tag == 0x7FE00010 and start < cut for start, tag in elements)


# (file, transfer syntax) of samples whose every cut position is checked (they are small).
EXHAUSTIVE = [
    "rtplan.dcm",  # implicit VR, nested defined-length sequences
    "JPEG2000.dcm",  # encapsulated pixel data
    "test-SR.dcm",  # deep undefined-length sequences
    "UN_sequence.dcm",
    "priv_SQ.dcm",
    "nested_priv_SQ.dcm",
    "chrSQEncoding.dcm",
    "reportsi.dcm",
]


@pytest.mark.parametrize("name", EXHAUSTIVE)
def test_every_cut_of_small_samples(name: str) -> None:
    split = part10.split(sample_bytes(name))
    dataset, ts = split.dataset, split.transfer_syntax_uid
    elements = top_level_elements(dataset, ts)
    assert elements[-1][0] == len(dataset)
    for cut in range(len(dataset)):
        _assert_cut(dataset, ts, cut, elements)


def test_every_cut_of_a_dicomdir() -> None:
    split = part10.split((DICOMDIR_TESTS / "DICOMDIR").read_bytes())
    elements = top_level_elements(split.dataset, split.transfer_syntax_uid)
    for cut in range(len(split.dataset)):
        _assert_cut(split.dataset, split.transfer_syntax_uid, cut, elements)


def _truncation_cases() -> list[tuple[str, bytes]]:
    ct = small_ct(1, size=32)[0]
    cases = [
        ("CT_small.dcm", sample_bytes("CT_small.dcm")),
        ("MR_small_implicit.dcm", sample_bytes("MR_small_implicit.dcm")),
        ("MR_small_RLE.dcm", sample_bytes("MR_small_RLE.dcm")),
        ("ExplVR_BigEnd.dcm", sample_bytes("ExplVR_BigEnd.dcm")),
        ("waveform_ecg.dcm", sample_bytes("waveform_ecg.dcm")),
        ("synthetic-ct-explicit", to_part10(ct)),
        ("synthetic-ct-implicit", to_part10(ct, ImplicitVRLittleEndian)),
        ("synthetic-ct-jpegls", to_part10(ct, JPEGLSLossless)),
    ]
    return cases


TRUNCATION_CASES = _truncation_cases()
_ELEMENTS: dict[str, list[tuple[int, int]]] = {}


@settings(max_examples=600, deadline=None, database=None)
@given(case=st.sampled_from(range(len(TRUNCATION_CASES))), fraction=st.floats(0, 1, exclude_max=True))
def test_truncated_files_are_refused(case: int, fraction: float) -> None:
    """Cut a whole Part 10 file anywhere after the preamble: split + check_complete raise
    MalformedDataset (and nothing else) unless the cut is on a top-level element boundary."""
    name, data = TRUNCATION_CASES[case]
    split = part10.split(data)
    meta_end = len(data) - len(split.dataset)
    cut = 132 + int(fraction * (len(data) - 132))
    if name not in _ELEMENTS:
        _ELEMENTS[name] = top_level_elements(split.dataset, split.transfer_syntax_uid)
    try:
        cut_split = part10.split(data[:cut])
    except MalformedDataset:
        assert cut < meta_end
        return
    if cut < meta_end:
        # Cut on a meta element boundary after the transfer syntax: no dataset is left.
        with pytest.raises(MalformedDataset):
            part10.check_complete(cut_split.dataset, cut_split.transfer_syntax_uid)
        return
    assert cut_split.dataset == split.dataset[: cut - meta_end]
    _assert_cut(split.dataset, split.transfer_syntax_uid, cut - meta_end, _ELEMENTS[name])


@settings(max_examples=150, deadline=None, database=None)
@given(cut=st.integers(1, 10_000))
def test_truncated_deflated_dataset(cut: int) -> None:
    """A cut deflate stream is refused unless what was cut was only padding after the stream's
    end: then the inflated dataset is whole."""
    data = sample_bytes("image_dfl.dcm")
    split = part10.split(data)
    full = zlib.decompress(split.dataset, -zlib.MAX_WBITS)
    cut = cut % len(split.dataset)
    try:
        part10.check_complete(split.dataset[:cut], split.transfer_syntax_uid)
    except MalformedDataset:
        return
    assert part10.inflate(split.dataset[:cut]) == full


@settings(max_examples=300, deadline=None, database=None)
@given(
    case=st.sampled_from(range(len(TRUNCATION_CASES))),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_damaged_files_raise_only_rejections(case: int, edits: list[tuple[float, int]]) -> None:
    """Random byte damage in the first kilobytes: split/check_complete either accept or raise a
    RejectedInstance, never an unexpected exception (struct.error, IndexError, ...)."""
    _name, data = TRUNCATION_CASES[case]
    damaged = bytearray(data)
    span = min(len(data), 4096) - 132
    for where, value in edits:
        damaged[132 + int(where * span)] = value
    try:
        split = part10.split(bytes(damaged))
        part10.check_complete(split.dataset, split.transfer_syntax_uid)
    except RejectedInstance:
        pass


def test_cut_inside_pixel_data_is_refused() -> None:
    data = to_part10(small_ct(1, size=32)[0])
    split = part10.split(data)
    for missing in (1, 2, 100, 2047):
        with pytest.raises(MalformedDataset, match="7FE0,0010"):
            part10.check_complete(split.dataset[:-missing], split.transfer_syntax_uid)


def _undefined_length_sr() -> bytes:
    ds = synthetic.sr_document()
    for elem in ds.iterall():
        if elem.VR == "SQ":
            elem.is_undefined_length = True
            for item in elem.value:
                item.is_undefined_length_sequence_item = True
    return part10.split(to_part10(ds)).dataset


def test_unclosed_sequence_is_refused() -> None:
    dataset = _undefined_length_sr()
    seq_delim, item_delim = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    assert dataset.endswith(seq_delim)
    assert part10.check_complete(dataset, ExplicitVRLittleEndian) is False
    with pytest.raises(MalformedDataset, match="not closed"):
        part10.check_complete(dataset[: -len(seq_delim)], ExplicitVRLittleEndian)
    # An item delimiter dropped in the middle: the walk loses its place and refuses.
    where = dataset.index(item_delim)
    with pytest.raises(MalformedDataset):
        part10.check_complete(dataset[:where] + dataset[where + 8 :], ExplicitVRLittleEndian)
    # A stray delimiter at the top level.
    with pytest.raises(MalformedDataset, match="unexpected delimiter"):
        part10.check_complete(dataset + item_delim, ExplicitVRLittleEndian)
