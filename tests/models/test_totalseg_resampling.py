"""TotalSegmentator's reorientation and resampling without its float64 copies (models.totalseg.resampling):
bit-equal to its own ``as_closest_canonical`` + ``change_spacing`` on the real CT, stored in several
orientations (LAS, LPS, axes permuted, tilted), and the reorientation made of views of the int16 scan."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.support.paths import DATA

pytest.importorskip("totalsegmentator")

import nibabel as nib
from totalsegmentator.alignment import as_closest_canonical, undo_canonical
from totalsegmentator.resampling import change_spacing

from models.totalseg.resampling import (
    back_zoom,
    forward_zoom,
    resampled_affine,
    zoom_linear_int32,
    zoom_nearest_uint8,
)

CT = DATA / "ct" / "abdomen-totalseg" / "example_ct_sm.nii.gz"


def _tilt(degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return rotation


def _orientations() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The real CT (int16, 3 mm, RAS) re-stored: name -> (array, affine) on the same physical grid."""
    if not CT.is_file():
        pytest.skip(f"{CT} not found (set SEGSERVE_SHARED_DIR)")
    image: Any = nib.load(CT)
    data = np.asarray(image.dataobj).astype(np.int16)
    affine = np.asarray(image.affine, dtype=np.float64)
    n = np.array(data.shape)
    flip_ij = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip_ij[:2, 3] = n[:2] - 1
    permute = np.eye(4)[[2, 0, 1, 3]].T  # voxel (k, i, j) -> (i, j, k)
    return {
        "ras": (data, affine),
        "lps": (np.ascontiguousarray(data[::-1, ::-1]), affine @ flip_ij),
        "kij": (np.ascontiguousarray(data.transpose(2, 0, 1)), affine @ permute),
        "tilted-lps": (np.ascontiguousarray(data[::-1, ::-1]), _tilt(20.0) @ affine @ flip_ij),
    }


def _theirs_forward(data: np.ndarray, affine: np.ndarray, spacing: list[float]) -> tuple[Any, Any, Any]:
    """TotalSegmentator's steps: float64 copy, as_closest_canonical, change_spacing(order 1, int32)."""
    orig = nib.Nifti1Image(data, affine)
    img_in = as_closest_canonical(nib.Nifti1Image(orig.get_fdata(), orig.affine))
    return orig, img_in, change_spacing(img_in, spacing, order=1, dtype=np.int32, nr_cpus=1)


@pytest.mark.parametrize("name", ["ras", "lps", "kij", "tilted-lps"])
@pytest.mark.parametrize("spacing", [[1.5, 1.5, 1.5], [6.0, 6.0, 6.0], [3.0, 2.0, 1.5]])
def test_forward_and_back_equal_change_spacing(name: str, spacing: list[float]) -> None:
    data, affine = _orientations()[name]
    orig, img_in, theirs = _theirs_forward(data, affine, spacing)

    ours_orig = nib.Nifti1Image(data, affine)
    canonical_img = as_closest_canonical(ours_orig)
    canonical = np.asanyarray(canonical_img.dataobj)
    assert canonical.dtype == np.int16 and np.shares_memory(canonical, data)  # views, no copy
    assert np.array_equal(canonical_img.affine, img_in.affine)
    zooms = np.array(canonical_img.header.get_zooms())[:3]
    assert np.array_equal(zooms, np.array(img_in.header.get_zooms())[:3])
    zoom = forward_zoom(zooms, spacing)
    assert zoom is not None
    for slab in (1, 7, 1000):
        ours = zoom_linear_int32(canonical, zoom, slab=slab)
        assert ours.dtype == np.int32 and ours.flags.c_contiguous
        assert np.array_equal(ours, np.asanyarray(theirs.dataobj))
    rsp_affine = resampled_affine(canonical_img.affine, zoom)
    assert np.array_equal(rsp_affine, theirs.affine)
    assert nib.Nifti1Image(ours, rsp_affine).header.get_zooms() == theirs.header.get_zooms()

    # back: labels on the resampled grid (HU bands: many regions) to the canonical shape, then undone
    labels = np.digitize(ours, [-500, -30, 100, 200, 400]).astype(np.uint8) * 40
    labels[::3, ::5] += 1
    img_pred = nib.Nifti1Image(labels, theirs.affine)
    back_theirs = change_spacing(
        img_pred, spacing, img_in.shape, order=0, dtype=np.uint8, nr_cpus=1, force_affine=img_in.affine
    )
    back_theirs = undo_canonical(back_theirs, orig)
    back = back_zoom(labels.shape, img_in.shape, np.array(img_pred.header.get_zooms()))
    assert back is not None
    ours_back = zoom_nearest_uint8(labels, back)
    assert ours_back.dtype == np.uint8
    undone = np.asanyarray(undo_canonical(nib.Nifti1Image(ours_back, img_in.affine), ours_orig).dataobj)
    assert np.shares_memory(undone, ours_back)  # views
    assert undone.shape == data.shape
    assert np.array_equal(undone, np.asanyarray(back_theirs.dataobj))


def test_equal_spacing_and_unit_zoom_are_left_alone() -> None:
    data, affine = _orientations()["ras"]
    zooms = np.array(nib.Nifti1Image(data, affine).header.get_zooms())[:3]
    assert forward_zoom(zooms, [float(z) for z in zooms]) is None
    assert back_zoom(data.shape, data.shape, zooms) is None
    # a zoom of exactly 1 on every axis keeps the values (as ndimage.zoom's early exit does)
    assert np.array_equal(zoom_linear_int32(data[::-1], [1.0, 1.0, 1.0]), data[::-1])
    with pytest.raises(ValueError, match="uint8"):
        zoom_nearest_uint8(data, [2.0, 2.0, 2.0])
