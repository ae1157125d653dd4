"""NIfTI and MGZ reading (nibabel), by content."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segserve.imaging.errors import CorruptImage, NotVolumetric
from segserve.scans.readers import read_image
from tests.imaging.conftest import shared


def test_ref18_matches_nibabel() -> None:
    path = shared("mri-brain/subject-a/ref18.nii.gz")
    volume = read_image([path])
    expected = nib.load(path)
    assert volume.source_format == "nifti"
    assert volume.shape == (256, 256, 256)
    assert volume.array.dtype == np.uint8
    assert np.array_equal(volume.affine, expected.affine)
    assert np.array_equal(volume.array, np.asanyarray(expected.dataobj))
    assert isinstance(volume.header, nib.Nifti1Header)
    assert int(volume.header["sform_code"]) == int(expected.header["sform_code"]) == 2
    assert volume.meta["orientation"] == "LIA"


def test_abdomen_ct_keeps_int16_and_hu() -> None:
    path = shared("ct/abdomen-totalseg/example_ct_sm.nii.gz")
    volume = read_image([path])
    expected = nib.load(path)
    assert volume.shape == (122, 101, 30)
    assert volume.array.dtype == np.int16  # no scl_slope: no float64 blow-up
    assert np.array_equal(volume.array, expected.get_fdata())
    assert volume.spacing_mm == pytest.approx((3.0, 3.0, 3.0))
    assert volume.array.min() < -500  # HU: air is about -1000


def test_mgz_matches_nibabel() -> None:
    path = shared("mri-brain/subject-a/norm.mgz")
    volume = read_image([path])
    expected = nib.load(path)
    assert volume.source_format == "mgz"
    assert volume.shape == (256, 256, 256)
    assert volume.header is None
    assert np.array_equal(volume.affine, expected.affine)
    assert np.array_equal(volume.array, np.asanyarray(expected.dataobj))


def test_big_endian_mgz_comes_back_native() -> None:
    path = shared("mri-brain/subject-a/aparc.a2009s+aseg.mgz")
    volume = read_image([path])
    expected = np.asanyarray(nib.load(path).dataobj)
    assert not expected.dtype.isnative  # stored big-endian
    assert volume.array.dtype.isnative and volume.array.dtype == np.int32
    assert np.array_equal(volume.array, expected)


def test_read_by_content_under_any_name(tmp_path: Path) -> None:
    nii = tmp_path / "upload.bin"
    shutil.copy(shared("ct/abdomen-totalseg/example_ct_sm.nii.gz"), nii)
    mgz = tmp_path / "upload2"
    shutil.copy(shared("mri-brain/subject-a/norm.mgz"), mgz)
    raw_nii = tmp_path / "upload3"
    raw_nii.write_bytes(gzip.decompress(nii.read_bytes()))
    a = read_image([nii])
    assert np.array_equal(a.array, read_image([shared("ct/abdomen-totalseg/example_ct_sm.nii.gz")]).array)
    assert np.array_equal(read_image([raw_nii]).array, a.array)
    assert read_image([mgz]).shape == (256, 256, 256)


def _save(tmp_path: Path, data: np.ndarray, name: str = "x.nii.gz", **header: float) -> Path:
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]))
    if "slope" in header:
        img.header.set_slope_inter(header["slope"], header["inter"])
    path = tmp_path / name
    nib.save(img, path)
    return path


def test_singleton_fourth_dimension_is_squeezed(tmp_path: Path) -> None:
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6, 1)
    volume = read_image([_save(tmp_path, data)])
    assert volume.shape == (4, 5, 6) and volume.array.ndim == 3
    assert np.array_equal(volume.array, data[..., 0])


def test_real_4d_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotVolumetric, match=r"3 volumes \(4x5x6x3"):
        read_image([_save(tmp_path, np.zeros((4, 5, 6, 3), np.int16))])


def test_2d_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotVolumetric, match=r"a 2D image \(64x48\).*needs a 3D volume"):
        read_image([_save(tmp_path, np.zeros((64, 48), np.uint8))])
    with pytest.raises(NotVolumetric, match=r"2D image \(64x48x1"):
        read_image([_save(tmp_path, np.zeros((64, 48, 1), np.uint8), "one.nii.gz")])


def test_scaling_applied_in_float32(tmp_path: Path) -> None:
    raw = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    volume = read_image([_save(tmp_path, raw, slope=2.0, inter=-10.0)])
    assert volume.array.dtype == np.float32
    assert np.array_equal(volume.array, raw.astype(np.float32) * 2 - 10)


def test_truncated_gzip_is_corrupt(tmp_path: Path) -> None:
    data = shared("ct/abdomen-totalseg/example_ct_sm.nii.gz").read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptImage, match="truncated") as info:
        read_image([cut])
    assert str(tmp_path) not in str(info.value)  # no server paths in client messages


def test_truncated_uncompressed_is_corrupt(tmp_path: Path) -> None:
    raw = gzip.decompress(shared("ct/abdomen-totalseg/example_ct_sm.nii.gz").read_bytes())
    cut = tmp_path / "cut.nii"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptImage, match="truncated"):
        read_image([cut])
    header_only = tmp_path / "hdr.nii"
    header_only.write_bytes(raw[:350])  # a whole header, no voxels
    with pytest.raises(CorruptImage):
        read_image([header_only])


def test_truncated_mgz_is_corrupt(tmp_path: Path) -> None:
    data = shared("mri-brain/subject-a/norm.mgz").read_bytes()
    cut = tmp_path / "cut.mgz"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(CorruptImage, match="truncated"):
        read_image([cut])
