"""storage.frames on objects a real archive stored: frames filmless compressed itself (JPEG-LS
after the compressor ran), frames received compressed (pydicom's samples: JPEG baseline, JPEG
lossless, JPEG 2000, RLE, JPEG-LS, multi-frame), native frames (big endian, 1-bit); each frame
decodes to the same bytes as storage.retrieve.decode_to_native gives for the whole object."""

from __future__ import annotations

from io import BytesIO

import jpeg_ls
import numpy as np
import pytest
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, JPEGLSLossless

from filmless.bootstrap import Archive
from storage.errors import CodecError
from storage.frames import FrameNotFound, FrameSource
from storage.index import Source
from storage.retrieve import Retriever, decode_to_native
from tests.fixtures import synthetic
from tests.unit.support import read, sample_bytes, small_ct, to_part10

SOURCE = Source(aet="MOD1", host="127.0.0.1")


def _stored(archive: Archive, sop_instance_uid: str) -> bytes:
    retriever = Retriever(archive.index, archive.store)
    (item,) = retriever.locate(sop_instance_uids=[sop_instance_uid])
    return retriever.read(item)


def _native_pixels(data: bytes) -> bytes:
    return bytes(dcmread(BytesIO(decode_to_native(data))).PixelData)


def _assert_frames_match(source: FrameSource, data: bytes) -> None:
    """native_frame of every frame is that frame's slice of decode_to_native."""
    pixels = _native_pixels(data)
    frames = [source.native_frame(n) for n in range(1, source.number_of_frames + 1)]
    size = len(frames[0])
    assert all(len(f) == size for f in frames)
    assert b"".join(frames) == pixels[: size * len(frames)]
    assert len(pixels) - size * len(frames) in (0, 1)  # the even-length pad


def _signed_ct() -> Dataset:
    """A small CT with signed 12-bit pixels (sign-extended to 16 bits)."""
    (ds,) = small_ct(1, size=48, seed=11)
    values = np.clip(ds.pixel_array.astype(np.int32) - 1024, -2048, 2047).astype("<i2")
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = "0"
    ds.PixelPaddingValue = -2048
    ds.PixelData = values.tobytes()
    return ds


def test_frames_of_objects_the_archive_compressed(archive: Archive) -> None:
    datasets = [*small_ct(2, size=64, seed=5), _signed_ct(), synthetic.us_multiframe(3, rows=32, cols=48, seed=2)]
    results = [archive.ingest.store_file(to_part10(ds), SOURCE) for ds in datasets]
    archive.compressor(worker_id="frames").drain()
    for ds, result in zip(datasets, results, strict=True):
        data = _stored(archive, result.sop_instance_uid)
        source = FrameSource.from_bytes(data)
        assert source.transfer_syntax_uid == JPEGLSLossless and source.encapsulated
        assert source.number_of_frames == int(ds.get("NumberOfFrames", 1))
        assert source.header.SOPInstanceUID == ds.SOPInstanceUID and "PixelData" not in source.header
        assert source.header.file_meta.TransferSyntaxUID == JPEGLSLossless
        _assert_frames_match(source, data)
        expected = ds.pixel_array if source.number_of_frames > 1 else ds.pixel_array[None]
        for number in range(1, source.number_of_frames + 1):
            # the stored bitstream is a JPEG-LS image whose samples are the frame's pixels
            decoded, _info = jpeg_ls.decode_buffer(source.stored_frame(number))
            native = source.native_frame(number)
            layout = source.layout
            mask = (1 << layout.bits_stored) - 1
            dtype = np.dtype(np.uint8) if layout.bits_allocated == 8 else np.dtype("<u2")
            samples = np.frombuffer(native, dtype).astype(np.int64)
            assert np.array_equal(np.frombuffer(bytes(decoded), dtype), samples & mask)
            assert np.array_equal(source.array(number), expected[number - 1])


# Compressed as received: (sample, expected transfer syntax, frames)
RECEIVED = [
    ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50", 1),  # JPEG baseline, YBR_FULL
    ("examples_ybr_color.dcm", "1.2.840.10008.1.2.4.50", 30),  # JPEG baseline multi-frame, 4:2:2
    ("JPEG-LL.dcm", "1.2.840.10008.1.2.4.70", 1),  # JPEG lossless, signed 16-bit
    ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91", 1),
    ("US1_J2KR.dcm", "1.2.840.10008.1.2.4.90", 1),  # JPEG 2000 lossless, YBR_RCT colour
    ("emri_small_RLE.dcm", "1.2.840.10008.1.2.5", 10),
    ("SC_rgb_rle_2frame.dcm", "1.2.840.10008.1.2.5", 2),
    ("MR_small_jpeg_ls_lossless.dcm", "1.2.840.10008.1.2.4.80", 1),  # JPEG-LS from the sender, signed
]


def test_frames_of_objects_received_compressed(archive: Archive) -> None:
    for name, ts, frames in RECEIVED:
        original = sample_bytes(name)
        result = archive.ingest.store_file(original, SOURCE)
        data = _stored(archive, result.sop_instance_uid)
        source = FrameSource.from_bytes(data)
        assert (source.transfer_syntax_uid, source.number_of_frames, source.encapsulated) == (ts, frames, True), name
        _assert_frames_match(source, data)
        # array(): the same values pydicom's pixel_array gives (YCbCr converted to RGB)
        reference = read(original).pixel_array
        for number in sorted({1, frames}):
            expected = reference[number - 1] if frames > 1 else reference
            assert np.array_equal(source.array(number), expected), name
        # the stored bitstream of the last frame is that frame's fragments joined
        assert source.stored_frame(frames)[:2] in (b"\xff\xd8", b"\xff\x4f") or ts == "1.2.840.10008.1.2.5"


def test_native_frames_big_endian_multiframe(archive: Archive) -> None:
    ds = read(sample_bytes("emri_small.dcm"))  # 10 frames, 16 bits
    big = BytesIO()
    dcmwrite(
        big, synthetic.encode(ds, ExplicitVRBigEndian),
        little_endian=False, implicit_vr=False, force_encoding=True,
    )
    result = archive.ingest.store_file(big.getvalue(), SOURCE)
    data = _stored(archive, result.sop_instance_uid)
    source = FrameSource.from_bytes(data)
    assert source.transfer_syntax_uid == ExplicitVRBigEndian and not source.encapsulated
    little = ds.pixel_array.astype("<u2")
    for number in (1, 7, 10):
        assert source.native_frame(number) == little[number - 1].tobytes()
        assert source.stored_frame(number) == little[number - 1].astype(">u2").tobytes()
        assert np.array_equal(source.array(number), ds.pixel_array[number - 1])


def test_native_frames_of_one_bit_data_not_on_byte_boundaries() -> None:
    frames = np.array(
        [[[1, 0, 1], [0, 1, 0], [1, 1, 1]], [[0, 0, 1], [1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 0], [1, 0, 1]]],
        dtype=np.uint8,
    )
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.1.1"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.NumberOfFrames = 3, 3, 1, 3
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.packbits(frames.ravel(), bitorder="little").tobytes()  # 27 bits in 4 bytes
    ds["PixelData"].VR = "OB"
    out = BytesIO()
    ds.file_meta = Dataset()  # type: ignore[assignment]
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(out, enforce_file_format=True)
    source = FrameSource.from_bytes(out.getvalue())
    for number in (1, 2, 3):
        packed = source.native_frame(number)
        assert np.array_equal(np.unpackbits(np.frombuffer(packed, np.uint8), bitorder="little")[:9], frames[number - 1].ravel())
        assert np.array_equal(source.array(number), frames[number - 1])


def test_frame_numbers_out_of_range_and_objects_without_pixels() -> None:
    source = FrameSource.from_bytes(sample_bytes("emri_small_jpeg_ls_lossless.dcm"))
    for bad in (0, -1, 11):
        with pytest.raises(FrameNotFound):
            source.native_frame(bad)
        with pytest.raises(FrameNotFound):
            source.stored_frame(bad)
    report = FrameSource.from_bytes(to_part10(synthetic.sr_document()))
    assert report.number_of_frames == 0 and not report.encapsulated
    with pytest.raises(FrameNotFound):
        report.array(1)


def test_undecodable_objects_raise_codec_errors() -> None:
    with pytest.raises(CodecError):
        FrameSource.from_bytes(b"not dicom at all" * 20)
    ds = read(sample_bytes("MR_small_jpeg_ls_lossless.dcm"))
    # a JPEG-LS stream cut after its header: the codec cannot decode it
    from pydicom.encaps import encapsulate, generate_frames

    (frame,) = list(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[:40] + b"\xff\xd9"])
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    source = FrameSource.from_bytes(out.getvalue())
    assert source.stored_frame(1)[:40] == frame[:40]
    with pytest.raises(CodecError):
        source.native_frame(1)
    with pytest.raises(CodecError):
        source.array(1)
