"""read_labels dtype rules and check_same_grid messages."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segserve.imaging.errors import GridMismatch, ImageError
from segserve.scans.readers import check_same_grid, read_image, read_labels
from tests.imaging.conftest import shared


def test_ref18_labels() -> None:
    labels = read_labels([shared("mri-brain/subject-a/ref18.nii.gz")])
    assert labels.array.dtype == np.uint8
    assert labels.meta["label_values"] == list(range(18))
    assert labels.meta["dtype"] == "uint8"
    check_same_grid(read_image([shared("mri-brain/subject-a/norm.mgz")]), labels)


def test_totalseg_labels_share_the_ct_grid() -> None:
    ct = read_image([shared("ct/abdomen-totalseg/example_ct_sm.nii.gz")])
    seg = read_labels([shared("ct/abdomen-totalseg/example_seg.nii.gz")])
    check_same_grid(ct, seg)
    assert seg.array.dtype == np.uint8
    assert len(seg.meta["label_values"]) == 42  # background + 41 classes present


def _nifti(tmp_path: Path, data: np.ndarray, name: str = "lab.nii.gz") -> Path:
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def test_float_labels_are_cast(tmp_path: Path) -> None:
    data = np.zeros((4, 5, 6), np.float32)
    data[1, 2, 3] = 7.0
    labels = read_labels([_nifti(tmp_path, data)])
    assert labels.array.dtype == np.uint8
    assert labels.array[1, 2, 3] == 7 and labels.array.sum() == 7


def test_large_labels_become_uint16(tmp_path: Path) -> None:
    data = np.zeros((4, 5, 6), np.int32)
    data[0, 0, 0] = 1000
    labels = read_labels([_nifti(tmp_path, data)])
    assert labels.array.dtype == np.uint16
    assert labels.meta["label_values"] == [0, 1000]
    data[0, 0, 0] = 70_000
    with pytest.raises(ImageError, match="65535"):
        read_labels([_nifti(tmp_path, data, "big.nii.gz")])


def test_non_integral_and_negative_labels_refused(tmp_path: Path) -> None:
    data = np.zeros((4, 5, 6), np.float32)
    data[0, 0, 0] = 1.5
    with pytest.raises(ImageError, match="non-integral values") as info:
        read_labels([_nifti(tmp_path, data)])
    assert info.value.code == "invalid_labels"
    neg = np.zeros((4, 5, 6), np.int16)
    neg[0, 0, 0] = -1
    with pytest.raises(ImageError, match="negative"):
        read_labels([_nifti(tmp_path, neg, "neg.nii.gz")])


def test_grid_mismatch_names_both_grids() -> None:
    image = read_image([shared("mri-brain/subject-a/norm.mgz")])
    reference = read_labels([shared("ct/abdomen-totalseg/example_seg.nii.gz")])
    with pytest.raises(GridMismatch) as info:
        check_same_grid(image, reference)
    assert str(info.value) == (
        "reference grid 122x101x30 at 3.00x3.00x3.00 mm does not match image grid 256x256x256 at "
        "1.00x1.00x1.00 mm"
    )
    assert info.value.code == "grid_mismatch"


def test_same_shape_different_affine() -> None:
    image = read_image([shared("ct/abdomen-totalseg/example_ct_sm.nii.gz")])
    shifted = image.affine.copy()
    shifted[:3, 3] += [2.0, 0.0, 0.0]
    with pytest.raises(
        GridMismatch, match=r"affines differ, placing voxels up to 2 mm apart.*origins 2\.00 mm"
    ):
        check_same_grid(image, replace(image, affine=shifted))
    flipped = image.affine @ np.diag([-1.0, 1.0, 1.0, 1.0])
    with pytest.raises(GridMismatch, match="orientation LAS vs RAS"):
        check_same_grid(image, replace(image, affine=flipped))
    nearly = image.affine.copy()
    nearly[:3, 3] += 1e-5
    check_same_grid(image, replace(image, affine=nearly))  # within 1e-3 mm
    with pytest.raises(GridMismatch):
        check_same_grid(image, replace(image, affine=nearly), atol_mm=1e-6)
