"""storage.codecs: which transfer syntax an instance is stored in, and lossless re-encoding
that keeps every pixel and every other attribute's value bytes."""

from __future__ import annotations

import io
import struct
import warnings
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    UltrasoundMultiFrameImageStorage,
)

from storage import codecs, part10
from storage.codecs import CompressionPolicy, StorageCodec
from storage.errors import CodecError
from tests.fixtures import synthetic
from tests.unit.support import (
    encapsulated_fragments,
    raw_values,
    read,
    sample_bytes,
    small_ct,
    to_part10,
)

TARGETS = [JPEGLSLossless, JPEG2000Lossless]
# Values the encoder may legitimately change: Pixel Data and Planar Configuration (frames
# are coded colour-by-pixel).
_CHANGED = frozenset({0x7FE00010, 0x00280006})


# --- the policy -----------------------------------------------------------------------------------
def _target(policy: CompressionPolicy, ts: str = ExplicitVRLittleEndian, modality: str | None = "CT",
            sop_class: str = CTImageStorage, has_pixels: bool = True) -> str | None:
    return policy.target_for(
        received_transfer_syntax=ts, modality=modality, sop_class_uid=sop_class, has_pixels=has_pixels
    )


def test_policy_default_is_jpeg_ls() -> None:
    policy = CompressionPolicy()
    assert policy.codec_for("CT", CTImageStorage) is StorageCodec.JPEG_LS
    for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        assert _target(policy, ts) == JPEGLSLossless
    assert _target(policy, modality=None) == JPEGLSLossless


def test_policy_jpeg2000_default() -> None:
    assert _target(CompressionPolicy(default=StorageCodec.JPEG_2000)) == JPEG2000Lossless


def test_policy_as_received_default() -> None:
    assert _target(CompressionPolicy(default=StorageCodec.AS_RECEIVED)) is None


def test_policy_per_modality() -> None:
    policy = CompressionPolicy(by_modality={"US": StorageCodec.AS_RECEIVED, "DX": StorageCodec.JPEG_2000})
    assert _target(policy, modality="US", sop_class=UltrasoundMultiFrameImageStorage) is None
    assert _target(policy, modality="us", sop_class=UltrasoundMultiFrameImageStorage) is None
    assert _target(policy, modality="DX", sop_class=DigitalXRayImageStorageForPresentation) == JPEG2000Lossless
    assert _target(policy, modality="CT") == JPEGLSLossless
    assert _target(policy, modality=None) == JPEGLSLossless


def test_policy_sop_class_wins_over_modality() -> None:
    policy = CompressionPolicy(
        default=StorageCodec.AS_RECEIVED,
        by_modality={"MR": StorageCodec.JPEG_LS, "CT": StorageCodec.AS_RECEIVED},
        by_sop_class={MRImageStorage: StorageCodec.JPEG_2000, CTImageStorage: StorageCodec.JPEG_LS},
    )
    assert policy.codec_for("MR", MRImageStorage) is StorageCodec.JPEG_2000
    assert _target(policy, modality="MR", sop_class=MRImageStorage) == JPEG2000Lossless
    assert _target(policy, modality="CT", sop_class=CTImageStorage) == JPEGLSLossless
    assert _target(policy, modality="MR", sop_class="1.2.840.10008.5.1.4.1.1.4.1") == JPEGLSLossless
    assert _target(policy, modality="OT", sop_class="1.2.840.10008.5.1.4.1.1.7") is None


@pytest.mark.parametrize("ts", [JPEGLSLossless, JPEG2000Lossless, RLELossless, JPEGBaseline8Bit])
def test_policy_keeps_compressed_objects(ts: str) -> None:
    assert _target(CompressionPolicy(), ts) is None
    assert _target(CompressionPolicy(default=StorageCodec.JPEG_2000), ts) is None


def test_policy_keeps_big_endian_and_objects_without_pixels() -> None:
    assert _target(CompressionPolicy(), ExplicitVRBigEndian) is None
    assert _target(CompressionPolicy(), has_pixels=False) is None




# --- compress_object ---------------------------------------------------------------------------
def _synthetic_cases() -> dict[str, bytes]:
    ct = small_ct(1, size=64)[0]
    return {
        "ct-explicit": to_part10(ct),
        "ct-implicit": to_part10(ct, ImplicitVRLittleEndian),
        "ct-deflated": to_part10(ct, DeflatedExplicitVRLittleEndian),
        "dx": to_part10(synthetic.dx_image(rows=120, cols=100)),
        "dx-monochrome1": to_part10(synthetic.dx_image(rows=40, cols=36, photometric="MONOCHROME1")),
        "us-rgb-multiframe": to_part10(synthetic.us_multiframe(3, rows=48, cols=64)),
    }


SYNTHETIC = _synthetic_cases()
# Uncompressed samples that pydicom ships (test_files, charset_files, pydicom-data).
SAMPLES: list[Any] = [
    "MR_small.dcm",  # signed 16 bit
    "CT_small.dcm",  # signed 16 bit
    "MR_small_implicit.dcm",
    "MR_small_padded.dcm",
    "examples_overlay.dcm",
    "examples_palette.dcm",
    "examples_rgb_color.dcm",
    "SC_rgb_jpeg_dcmd.dcm",  # implicit VR, RGB
    "chrH31.dcm",  # ISO 2022 text
    "chrX2.dcm",  # GB18030 text
    "SC_rgb_2frame.dcm",
    "SC_rgb_16bit_2frame.dcm",
    "OBXXXX1A_2frame.dcm",
    "color-pl.dcm",  # planar configuration 1 (and retired group lengths)
    "693_UNCR.dcm",  # retired group lengths
    "emri_small.dcm",  # 10 frames
    "MR-SIEMENS-DICOM-WithOverlays.dcm",  # private sequences
    "gdcm-US-ALOKA-16.dcm",  # implicit VR with over-padded text
]


def _load(case: str) -> bytes:
    if case.endswith(".dcm"):
        return sample_bytes(case)
    return SYNTHETIC[case]


def _assert_lossless(original: bytes, result: codecs.Compressed, target: str) -> None:
    assert not result.kept_original, result.note
    assert result.data is not None
    assert result.transfer_syntax_uid == target
    # Every attribute but the pixel encoding keeps its value bytes, private ones included
    # (read afresh: raw_values compares the undecoded bytes).
    assert dict(raw_values(read(result.data), skip=_CHANGED)) == dict(raw_values(read(original), skip=_CHANGED))
    before, after = read(original), read(result.data)
    assert after.file_meta.TransferSyntaxUID == target
    assert after.file_meta.ImplementationClassUID == part10.IMPLEMENTATION_CLASS_UID
    assert after.file_meta.MediaStorageSOPInstanceUID == before.SOPInstanceUID
    assert after["PixelData"].is_undefined_length
    # Decoded by pydicom (an independent decoder path), pixels are bit-identical.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's remarks on the samples (excess padding)
        a, b = before.pixel_array, after.pixel_array
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(a, b)
    if int(before.get("SamplesPerPixel", 1)) == 3 and "PlanarConfiguration" in before:
        assert after.PlanarConfiguration == 0
    frames = int(before.get("NumberOfFrames", 1) or 1)
    assert len(encapsulated_fragments(result.data)) == frames + 1  # the offset table, then frames


@pytest.mark.parametrize("target", TARGETS, ids=["jpeg-ls", "jpeg2000"])
@pytest.mark.parametrize("case", list(SYNTHETIC) + SAMPLES)
def test_compress_object_is_lossless(case: str, target: str) -> None:
    original = _load(case)
    _assert_lossless(original, codecs.compress_object(original, target), target)


def test_compress_keeps_specific_character_set_and_private_tags() -> None:
    original = SYNTHETIC["ct-implicit"]
    result = codecs.compress_object(original, JPEGLSLossless)
    assert result.data is not None
    ds = read(result.data)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.PatientName == "Nguyễn^Văn Đức"
    block = ds.private_block(synthetic.PRIVATE_GROUP, synthetic.PRIVATE_CREATOR)
    assert block[0x01].value == b"synthetic phantom - not patient data" or block[0x01].value == (
        "synthetic phantom - not patient data"
    )
    assert ds.file_meta.TransferSyntaxUID == JPEGLSLossless


def _over_padded(ts: str) -> bytes:
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    ct = small_ct(1, size=32)[0]
    data = to_part10(ct, ts)
    ds = read(data)
    value = b"NO INFO          "  # fixed-width fields, as some modalities write them
    ds[0x00081040] = RawDataElement(Tag(0x00081040), "LO", len(value) + 1, value + b" ", 0, ts == ImplicitVRLittleEndian, True)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_over_padded_text_keeps_its_bytes_explicit() -> None:
    original = _over_padded(ExplicitVRLittleEndian)
    assert read(original).get_item(0x00081040).value.endswith(b"          ")
    _assert_lossless(original, codecs.compress_object(original, JPEGLSLossless), JPEGLSLossless)


def test_over_padded_text_keeps_its_bytes_implicit() -> None:
    original = _over_padded(ImplicitVRLittleEndian)
    assert read(original).get_item(0x00081040).value.endswith(b"          ")
    _assert_lossless(original, codecs.compress_object(original, JPEGLSLossless), JPEGLSLossless)


def test_tiny_images_are_kept_by_jpeg2000() -> None:
    """OpenJPEG's default six resolution levels need 32 pixels a side: smaller images are kept
    (safely) as received; JPEG-LS takes them."""
    tiny = to_part10(small_ct(1, size=16)[0])
    result = codecs.compress_object(tiny, JPEG2000Lossless)
    assert result.kept_original and "codec failed" in result.note
    _assert_lossless(tiny, codecs.compress_object(tiny, JPEGLSLossless), JPEGLSLossless)


def test_compression_ratio_of_synthetic_ct() -> None:
    ct = next(synthetic.ct_series(1, rows=256, cols=256, seed=3))
    original = to_part10(ct)
    result = codecs.compress_object(original, JPEGLSLossless)
    assert result.data is not None
    assert len(original) / len(result.data) > 3.0


def _with_group_lengths(file_bytes: bytes) -> bytes:
    """Insert retired Group Length elements (gggg,0000) before each group of an explicit VR
    little endian file, as older writers did."""
    from tests.unit.support import top_level_elements

    split = part10.split(file_bytes)
    meta = file_bytes[: len(file_bytes) - len(split.dataset)]
    elements = top_level_elements(split.dataset, split.transfer_syntax_uid)
    out, i = [], 0
    while i < len(elements) - 1:
        group = elements[i][1] >> 16
        j = i
        while j < len(elements) - 1 and elements[j][1] >> 16 == group:
            j += 1
        body = split.dataset[elements[i][0] : elements[j][0]]
        out.append(struct.pack("<HH2sHI", group, 0, b"UL", 4, len(body)) + body)
        i = j
    return meta + b"".join(out)


def test_group_lengths_do_not_prevent_compression() -> None:
    original = _with_group_lengths(SYNTHETIC["ct-explicit"])
    assert 0x00080000 in read(original)
    result = codecs.compress_object(original, JPEGLSLossless)
    _assert_lossless(original, result, JPEGLSLossless)
    stored = read(result.data or b"")
    assert stored[0x00080000].value == read(original)[0x00080000].value  # explicit input: kept
    assert 0x7FE00000 not in stored  # described the replaced Pixel Data: dropped


# --- kept as received ----------------------------------------------------------------------
def _ct_with(pixels: np.ndarray | None = None, **attrs: object) -> bytes:
    ct = small_ct(1, size=32)[0]
    for keyword, value in attrs.items():
        setattr(ct, keyword, value)
    if pixels is not None:
        ct.PixelData = pixels.tobytes()
    return to_part10(ct)


def test_bits_above_bits_stored_are_kept() -> None:
    pixels = small_ct(1, size=32)[0].pixel_array.copy()
    pixels[3, 4] = 0x9000  # an overlay bit in a 12-bit image
    original = _ct_with(pixels)
    for target in TARGETS:
        result = codecs.compress_object(original, target)
        assert result.kept_original and result.data is None
        assert "above Bits Stored" in result.note
        assert result.transfer_syntax_uid == ExplicitVRLittleEndian


def test_signed_values_not_sign_extended_are_kept() -> None:
    pixels = np.full((32, 32), 0x0123, dtype="<u2")
    pixels[0, 0] = 0x0FFF  # -1 in 12 bits, but stored without sign extension
    result = codecs.compress_object(_ct_with(pixels, PixelRepresentation=1), JPEGLSLossless)
    assert result.kept_original
    assert "sign-extended" in result.note


def test_signed_values_sign_extended_are_compressed() -> None:
    pixels = np.full((32, 32), 0x0123, dtype="<u2")
    pixels[0, 0], pixels[0, 1] = 0xFFFF, 0xF800  # -1 and -2048 in 12 bits, sign-extended
    original = _ct_with(pixels, PixelRepresentation=1)
    _assert_lossless(original, codecs.compress_object(original, JPEGLSLossless), JPEGLSLossless)


@pytest.mark.parametrize("name", ["rtdose.dcm", "rtdose_1frame.dcm"])
def test_32_bit_data_is_kept(name: str) -> None:
    result = codecs.compress_object(sample_bytes(name), JPEGLSLossless)
    assert result.kept_original
    assert "Bits Allocated 32" in result.note


def test_1_bit_data_is_kept() -> None:
    result = codecs.compress_object(sample_bytes("liver_1frame.dcm"), JPEGLSLossless)
    assert result.kept_original and "Bits Allocated 1" in result.note


def test_short_pixel_data_is_kept() -> None:
    ct = small_ct(1, size=32)[0]
    ct.PixelData = ct.PixelData[:-64]
    result = codecs.compress_object(to_part10(ct), JPEGLSLossless)
    assert result.kept_original and "needs" in result.note


def test_objects_without_pixels_are_kept() -> None:
    result = codecs.compress_object(to_part10(synthetic.sr_document()), JPEGLSLossless)
    assert result.kept_original
    assert result.note.startswith("kept as received") or result.note == "no pixel data"


def test_unknown_target_is_kept() -> None:
    result = codecs.compress_object(SYNTHETIC["ct-explicit"], RLELossless)
    assert result.kept_original and "no lossless encoder" in result.note


def test_garbage_is_kept() -> None:
    result = codecs.compress_object(b"not a dicom file" * 20, JPEGLSLossless)
    assert result.kept_original and result.note.startswith("kept as received")


def test_a_decoder_mismatch_keeps_the_original(monkeypatch: pytest.MonkeyPatch) -> None:
    encode, decode = codecs._ENCODERS[JPEGLSLossless]

    def lying_decode(data: bytes, layout: codecs.PixelLayout) -> bytes:
        out = bytearray(decode(data, layout))
        out[10] ^= 1
        return bytes(out)

    monkeypatch.setitem(codecs._ENCODERS, JPEGLSLossless, (encode, lying_decode))
    result = codecs.compress_object(SYNTHETIC["ct-explicit"], JPEGLSLossless)
    assert result.kept_original
    assert "differ from the original" in result.note


def test_an_encoder_failure_keeps_the_original(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_encode(frame: np.ndarray, layout: codecs.PixelLayout) -> bytes:
        raise RuntimeError("encoder exploded")

    _encode, decode = codecs._ENCODERS[JPEG2000Lossless]
    monkeypatch.setitem(codecs._ENCODERS, JPEG2000Lossless, (failing_encode, decode))
    result = codecs.compress_object(SYNTHETIC["us-rgb-multiframe"], JPEG2000Lossless)
    assert result.kept_original and "encoder exploded" in result.note


# --- comparisons ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "ts",
    [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, JPEGLSLossless, JPEG2000Lossless, RLELossless],
)
def test_same_content_across_transfer_syntaxes(ts: str) -> None:
    ct = small_ct(1, size=32)[0]
    assert codecs.same_content(to_part10(ct), to_part10(ct, ts))
    assert codecs.same_content(to_part10(ct, ts), to_part10(ct))


def test_same_content_with_our_own_compression() -> None:
    original = SYNTHETIC["us-rgb-multiframe"]
    compressed = codecs.compress_object(original, JPEG2000Lossless).data
    assert compressed is not None and codecs.same_content(original, compressed)


def test_same_content_sees_changes() -> None:
    ct = small_ct(1, size=32)[0]
    original = to_part10(ct)
    changed = small_ct(1, size=32)[0]
    changed.SeriesDescription = "another description"
    assert not codecs.same_content(original, to_part10(changed))
    pixels = ct.pixel_array.copy()
    pixels[0, 0] += 1
    other = small_ct(1, size=32)[0]
    other.PixelData = pixels.tobytes()
    assert not codecs.same_content(original, to_part10(other, JPEGLSLossless))
    no_pixels = small_ct(1, size=32)[0]
    del no_pixels.PixelData
    assert not codecs.same_content(original, to_part10(no_pixels))
    assert not codecs.same_content(original, b"garbage")
    sr = to_part10(synthetic.sr_document())
    assert codecs.same_content(sr, sr)


def test_same_attributes_names_the_difference() -> None:
    a = read(SYNTHETIC["ct-explicit"])
    b = read(SYNTHETIC["ct-explicit"])
    assert codecs.same_attributes(a, b) is None
    b.StudyDescription = "changed"
    assert "(0008,1030)" in (codecs.same_attributes(a, b) or "")
    c = read(SYNTHETIC["ct-explicit"])
    c.OtherPatientIDsSequence[1].PatientID = "HT2010000000000"
    assert "changed" in (codecs.same_attributes(a, c) or "")
    d = read(SYNTHETIC["ct-explicit"])
    del d.StudyDescription
    assert "attribute set changed" in (codecs.same_attributes(a, d) or "")


# --- decodability check of compressed objects --------------------------------------------------
@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm"])
def test_check_pixels_decodable(name: str) -> None:
    data = sample_bytes(name)
    assert codecs.check_pixels_decodable(data) is None
    offset, length = encapsulated_fragments(data)[1]
    damaged = bytearray(data)
    damaged[offset + 2 : offset + 32] = bytes((i * 37 + 11) & 0xFF for i in range(30))
    problem = codecs.check_pixels_decodable(bytes(damaged))
    assert problem is not None and problem.startswith("compressed pixel data does not decode")
    assert codecs.check_pixels_decodable(to_part10(synthetic.sr_document())) is None


def test_sha256() -> None:
    assert codecs.sha256(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_pixel_layout_of_invalid_dataset() -> None:
    with pytest.raises(CodecError):
        codecs.PixelLayout.of(Dataset())
