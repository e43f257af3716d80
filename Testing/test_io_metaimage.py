"""MetaImage reader/writer: real PLUS/IGSIO files, VTK's reader as an independent check, round trips, bad files."""

from __future__ import annotations

import shutil
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import vtk
from vtk.util.numpy_support import vtk_to_numpy

from freehandrecon.errors import InputError, OutputExistsError
from freehandrecon.io.metaimage import read_metaimage, write_metaimage

DATA = Path(__file__).parent / "Data"
SPINE = DATA / "igsio" / "SpinePhantomFreehand.igs.mha"
REF_LNMAXI = DATA / "igsio" / "VolumeReconstructorTestLNMAXIvolumeRef.mha"
CURVI = DATA / "plus" / "UltrasonixCurvilinearScanConvertedData.igs.mha"


def vtk_read(path: Path) -> np.ndarray:
    r = vtk.vtkMetaImageReader()
    r.SetFileName(str(path))
    r.Update()
    im = r.GetOutput()
    comps = im.GetNumberOfScalarComponents()
    shape = im.GetDimensions()[::-1] + ((comps,) if comps > 1 else ())
    return vtk_to_numpy(im.GetPointData().GetScalars()).reshape(shape)


def test_reads_compressed_plus_sequence_fast_and_like_vtk():
    t0 = time.perf_counter()
    img = read_metaimage(SPINE)
    elapsed = time.perf_counter() - t0
    assert img.array.shape == (21, 616, 820) and img.array.dtype == np.uint8
    assert img.array.flags.writeable
    assert img.dim_size == (820, 616, 21) and img.element_type == "MET_UCHAR" and img.channels == 1
    keys = list(img.fields)
    assert keys[:3] == ["ObjectType", "NDims", "AnatomicalOrientation"] and keys[-1] == "ElementDataFile"
    assert img.fields["Seq_Frame0020_ImageStatus"] == "OK"
    assert sum(k.startswith("Seq_Frame") for k in keys) == 21 * 8
    np.testing.assert_array_equal(img.array, vtk_read(SPINE))
    assert elapsed < 1.0, f"reading the 3.4 MB compressed sequence took {elapsed:.3f} s"


def test_reads_reference_volume_geometry():
    img = read_metaimage(REF_LNMAXI)
    assert img.array.shape == (105, 106, 147)
    assert img.spacing == (0.5, 0.5, 0.5)
    assert img.offset == (-74.5217, 165.573, 29.072)
    np.testing.assert_array_equal(img.direction, np.eye(3))
    np.testing.assert_array_equal(img.array, vtk_read(REF_LNMAXI))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("suffix", [".mha", ".mhd"])
def test_round_trip_types(tmp_path, dtype, compress, suffix):
    rng = np.random.default_rng(0)
    arr = (rng.random((3, 5, 7)) * 100).astype(dtype)
    direction = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    out = write_metaimage(tmp_path / f"a{suffix}", arr, spacing=(0.1, 0.2, 0.3), offset=(1, 2, 3),
                          direction=direction, compress=compress, fields={"Note": "x y"})
    img = read_metaimage(out)
    assert img.array.dtype == dtype
    np.testing.assert_array_equal(img.array, arr)
    assert img.spacing == (0.1, 0.2, 0.3) and img.offset == (1.0, 2.0, 3.0)
    np.testing.assert_array_equal(img.direction, direction)
    assert img.fields["Note"] == "x y"
    if suffix == ".mhd":
        assert (tmp_path / ("a.zraw" if compress else "a.raw")).is_file()
    np.testing.assert_array_equal(vtk_read(out), arr)  # other readers understand what we write


@pytest.mark.parametrize("shape,channels", [((6, 5), 1), ((4, 6, 3), 3), ((2, 3, 4, 5), 1), ((3, 4, 5, 4), 4),
                                            ((4, 5, 2), 2)])
def test_round_trip_dims_and_channels(tmp_path, shape, channels):
    arr = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    out = write_metaimage(tmp_path / "c.mha", arr, channels=channels, compress=True)
    img = read_metaimage(out)
    np.testing.assert_array_equal(img.array, arr)
    assert img.channels == channels
    assert img.ndims == len(shape) - (channels > 1)


def test_big_endian_and_external_header_size(tmp_path):
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(">i2")
    (tmp_path / "be.raw").write_bytes(b"JUNKJUNK" + arr.tobytes())
    (tmp_path / "be.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 3 2\nElementType = MET_SHORT\n"
                                     "BinaryDataByteOrderMSB = True\nHeaderSize = 8\nElementDataFile = be.raw\n")
    img = read_metaimage(tmp_path / "be.mhd")
    assert img.array.dtype == np.int16 and img.array.dtype.isnative
    np.testing.assert_array_equal(img.array, arr.astype(np.int16))
    (tmp_path / "end.mhd").write_text("NDims = 3\nDimSize = 4 3 2\nElementType = MET_SHORT\n"
                                      "ElementByteOrderMSB = True\nHeaderSize = -1\nElementDataFile = be.raw\n")
    np.testing.assert_array_equal(read_metaimage(tmp_path / "end.mhd").array, arr.astype(np.int16))


def test_writer_refuses_to_overwrite_and_leaves_no_partial_file(tmp_path):
    out = write_metaimage(tmp_path / "x.mha", np.zeros((2, 2), np.uint8), force=False)
    with pytest.raises(OutputExistsError, match="already exists"):
        write_metaimage(out, np.ones((2, 2), np.uint8), force=False)
    with pytest.raises(InputError, match="pixel type"):
        write_metaimage(tmp_path / "y.mha", np.zeros((2, 2), np.complex64))
    with pytest.raises(InputError, match="derived from the array"):
        write_metaimage(tmp_path / "z.mha", np.zeros((2, 2), np.uint8), fields={"DimSize": "9 9"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.mha"]
    np.testing.assert_array_equal(read_metaimage(out).array, 0)


# --- bad input --------------------------------------------------------------------------------
def _truncate(src: Path, dst: Path, drop: int) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) - drop])
    return dst


def test_empty_file(tmp_path):
    (tmp_path / "e.mha").write_bytes(b"")
    with pytest.raises(InputError, match="empty") as e:
        read_metaimage(tmp_path / "e.mha")
    assert e.value.fix


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_metaimage(tmp_path / "nope.mha")


def test_truncated_uncompressed(tmp_path):
    bad = _truncate(CURVI, tmp_path / "t.mha", 1000)
    with pytest.raises(InputError, match=r"truncated: 2525600 bytes .* only 2524600 found") as e:
        read_metaimage(bad)
    assert "t.mha" in str(e.value) and e.value.fix


def test_truncated_compressed(tmp_path):
    bad = _truncate(SPINE, tmp_path / "t.igs.mha", 200_000)
    with pytest.raises(InputError, match=r"truncated: the header declares 3466024 compressed bytes but only "
                                         r"3266024 follow"):
        read_metaimage(bad)


def test_truncated_compressed_without_declared_size(tmp_path):
    data = SPINE.read_bytes().replace(b"CompressedDataSize", b"CompressedDataSiz_", 1)
    (tmp_path / "t.mha").write_bytes(data[:-300_000])
    with pytest.raises(InputError, match=r"truncated or corrupt: they give \d+ bytes but .* needs 10607520 bytes"):
        read_metaimage(tmp_path / "t.mha")


def test_corrupt_compressed(tmp_path):
    data = bytearray(SPINE.read_bytes())
    start = data.find(b"ElementDataFile = LOCAL\n") + len(b"ElementDataFile = LOCAL\n")
    data[start + 1000: start + 1100] = bytes(100)
    (tmp_path / "c.mha").write_bytes(bytes(data))
    with pytest.raises(InputError, match="corrupt"):
        read_metaimage(tmp_path / "c.mha")


def test_header_without_dimsize(tmp_path):
    (tmp_path / "h.mha").write_bytes(b"ObjectType = Image\nNDims = 3\nElementType = MET_UCHAR\n"
                                     b"ElementDataFile = LOCAL\n" + bytes(100))
    with pytest.raises(InputError, match="no DimSize") as e:
        read_metaimage(tmp_path / "h.mha")
    assert "DimSize = " in e.value.fix


def test_header_cut_short_and_not_metaimage(tmp_path):
    _truncate(SPINE, tmp_path / "cut.mha", SPINE.stat().st_size - 5000)
    with pytest.raises(InputError, match="no 'ElementDataFile'"):
        read_metaimage(tmp_path / "cut.mha")
    (tmp_path / "png.mha").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(InputError, match="does not start with a MetaImage header"):
        read_metaimage(tmp_path / "png.mha")


def test_bad_header_values(tmp_path):
    base = b"NDims = 2\nDimSize = 4 3\nElementType = %s\nElementDataFile = %s\n"
    (tmp_path / "a.mha").write_bytes(base % (b"MET_HALF", b"LOCAL") + bytes(100))
    with pytest.raises(InputError, match="MET_HALF"):
        read_metaimage(tmp_path / "a.mha")
    (tmp_path / "b.mhd").write_bytes(base % (b"MET_UCHAR", b"b.raw"))
    with pytest.raises(InputError, match="does not exist"):
        read_metaimage(tmp_path / "b.mhd")
    (tmp_path / "c.mha").write_bytes(b"NDims = 2\nDimSize = 4 x\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n")
    with pytest.raises(InputError, match="not a list of numbers"):
        read_metaimage(tmp_path / "c.mha")
    (tmp_path / "d.mha").write_bytes(b"NDims = 3\nDimSize = 4 3\nElementType = MET_UCHAR\nElementDataFile = LOCAL\n")
    with pytest.raises(InputError, match="NDims"):
        read_metaimage(tmp_path / "d.mha")


def test_compressed_raw_file_roundtrip_and_zlib_stream(tmp_path):
    arr = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    (tmp_path / "z.zraw").write_bytes(zlib.compress(arr.tobytes()))
    (tmp_path / "z.mhd").write_text("NDims = 3\nDimSize = 5 4 3\nElementType = MET_FLOAT\nCompressedData = True\n"
                                    "ElementDataFile = z.zraw\n")
    np.testing.assert_array_equal(read_metaimage(tmp_path / "z.mhd").array, arr)
    shutil.copy(tmp_path / "z.mhd", tmp_path / "copy.mhd")
    (tmp_path / "z.zraw").write_bytes(zlib.compress(arr.tobytes())[:-20])
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_metaimage(tmp_path / "copy.mhd")
