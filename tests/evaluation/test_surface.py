"""Surface distances on shapes with known answers, MONAI's edge definition, and the empty policy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from evaluation.surface import (
    SurfaceMetrics,
    bounding_boxes,
    edge_mask,
    structure_surface_metrics,
    summarise,
    surface_distances,
)


def _box(shape: tuple[int, ...], lo: tuple[int, ...], hi: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return mask


def _sphere(shape: tuple[int, ...], spacing: tuple[float, ...], radius_mm: float) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij")
    centre = [(n - 1) / 2 * s for n, s in zip(shape, spacing, strict=True)]
    return sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)) <= radius_mm**2


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_edges_are_monai_erosion_xor(ndim: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = ndimage.binary_opening(rng.random((24,) * ndim) > 0.4)  # blobs, some touching the border
    expected = ndimage.binary_erosion(mask) ^ mask
    np.testing.assert_array_equal(edge_mask(mask), expected)


# (spacing, axis, shift d): boxes shifted by d voxels along `axis` -> HD = d * spacing[axis].
SHIFTS = [
    ((1.0, 1.0, 1.0), 0, 1),
    ((0.79, 0.79, 5.0), 2, 1),
    ((0.79, 0.79, 5.0), 0, 3),
    ((0.5, 1.0, 3.0), 1, 2),
    ((0.5, 1.0, 3.0), 2, 2),
    ((2.0, 0.3, 0.7), 0, 4),
]


@pytest.mark.parametrize(("spacing", "axis", "d"), SHIFTS)
def test_shifted_boxes_give_shift_in_mm(spacing: tuple[float, ...], axis: int, d: int) -> None:
    shape = (40, 40, 40)
    lo, hi = [8, 8, 8], [30, 30, 30]
    ref = _box(shape, tuple(lo), tuple(hi))
    lo[axis] += d
    hi[axis] += d
    pred = _box(shape, tuple(lo), tuple(hi))
    shift_mm = d * spacing[axis]
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    s = summarise(d_pr, d_rp, shift_mm)
    assert s.hd_mm == pytest.approx(shift_mm, rel=1e-12)
    assert s.nsd == 1.0  # tolerance equal to the shift: every boundary voxel counts
    assert summarise(d_pr, d_rp, shift_mm * 1.5).nsd == 1.0
    below = summarise(d_pr, d_rp, shift_mm * 0.99).nsd
    assert below is not None and below < 1.0
    assert 0 < s.assd_mm <= shift_mm  # type: ignore[operator]
    assert s.hd95_mm is not None and s.hd95_mm <= s.hd_mm  # type: ignore[operator]


# (r1, r2 in mm, spacing): concentric spheres -> HD = r2 - r1 within a voxel.
SPHERES = [
    (6.0, 9.0, (1.0, 1.0, 1.0)),
    (10.0, 12.0, (1.0, 1.0, 1.0)),
    (8.0, 14.0, (0.8, 0.8, 2.0)),
    (12.0, 15.0, (1.5, 0.7, 0.7)),
]


@pytest.mark.parametrize(("r1", "r2", "spacing"), SPHERES)
def test_concentric_spheres_give_radius_difference(r1: float, r2: float, spacing: tuple[float, ...]) -> None:
    shape = tuple(int(2 * r2 / s) + 6 for s in spacing)
    inner, outer = _sphere(shape, spacing, r1), _sphere(shape, spacing, r2)
    voxel = max(spacing)
    d_pr, d_rp = surface_distances(inner, outer, spacing)
    s = summarise(d_pr, d_rp, r2 - r1)
    assert s.hd_mm == pytest.approx(r2 - r1, abs=voxel)
    assert s.hd95_mm == pytest.approx(r2 - r1, abs=voxel)
    assert s.assd_mm == pytest.approx(r2 - r1, abs=voxel)
    assert summarise(d_pr, d_rp, r2 - r1 + voxel).nsd == 1.0
    assert summarise(d_pr, d_rp, r2 - r1 - voxel).nsd < 0.5  # type: ignore[operator]


def test_identical_masks_give_zero_distances() -> None:
    mask = _sphere((20, 20, 20), (1.0, 1.0, 2.0), 8.0)
    d_pr, d_rp = surface_distances(mask, mask, (1.0, 1.0, 2.0))
    assert not d_pr.any() and not d_rp.any()
    assert summarise(d_pr, d_rp, 1.0) == SurfaceMetrics(0.0, 0.0, 0.0, 1.0, 1.0, d_pr.size, d_rp.size)


def test_hd95_is_max_of_directed_percentiles_not_pooled() -> None:
    d_pr = np.array([0.0] * 19 + [10.0])  # 95th percentile 0.5 (linear interpolation)
    d_rp = np.array([1.0] * 20)
    s = summarise(d_pr, d_rp, 1.0)
    assert s.hd95_mm == pytest.approx(1.0)
    assert s.hd_mm == 10.0
    assert s.assd_mm == pytest.approx(30.0 / 40)
    assert s.nsd == pytest.approx(39 / 40)


def _labels() -> np.ndarray:
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[2:10, 2:10, 2:10] = 1
    labels[12:20, 12:20, 12:20] = 2
    labels[25:29, 0:4, 20:30] = 3
    return labels


def test_bounding_boxes_are_the_union_of_both() -> None:
    ref = _labels()
    pred = np.zeros_like(ref)
    pred[5:14, 3:9, 1:5] = 1
    pred[0:2, 0:2, 0:2] = 4
    boxes = bounding_boxes(pred, ref, [1, 2, 3, 4, 5])
    for value, box in boxes.items():
        where = np.argwhere((pred == value) | (ref == value))
        if len(where) == 0:
            assert box is None
            continue
        assert box == tuple(
            slice(int(a), int(b) + 1) for a, b in zip(where.min(0), where.max(0), strict=True)
        )


def test_empty_policy() -> None:
    ref = _labels()
    pred = ref.copy()
    pred[pred == 2] = 0  # missed
    pred[0:2, 28:30, 0:2] = 4  # not in the reference
    out = structure_surface_metrics(pred, ref, [1, 2, 3, 4, 5], (1.0, 1.0, 1.0), {3: 2.5})
    assert out[1].hd_mm == 0.0 and out[1].nsd == 1.0 and out[1].tolerance_mm == 1.0
    assert out[3].tolerance_mm == 2.5
    for value in (2, 4):
        assert (out[value].hd_mm, out[value].hd95_mm, out[value].assd_mm, out[value].nsd) == (
            None,
            None,
            None,
            0.0,
        )
    assert out[2].n_edge_pred == 0 and out[2].n_edge_ref > 0
    assert out[5] == SurfaceMetrics(None, None, None, None, 1.0, 0, 0)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_bad_tolerance_names_the_value(bad: float) -> None:
    ref = _labels()
    with pytest.raises(ValueError, match=f"tolerance must be > 0 mm, got {bad}"):
        structure_surface_metrics(ref, ref, [1], (1.0, 1.0, 1.0), tolerance_mm=bad)
    with pytest.raises(ValueError, match=f"tolerance must be > 0 mm, got {bad}"):
        structure_surface_metrics(ref, ref, [1], (1.0, 1.0, 1.0), {1: bad})


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.0, 0.0, 1.0), (1.0, -2.0, 1.0), (1.0, math.nan, 1.0)])
def test_bad_spacing_names_the_value(spacing: tuple[float, ...]) -> None:
    ref = _labels()
    with pytest.raises(ValueError, match=r"spacing_mm .*got \("):
        structure_surface_metrics(ref, ref, [1], spacing)


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"prediction \(4, 4, 4\), reference \(4, 4, 5\)"):
        structure_surface_metrics(
            np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 5), np.uint8), [1], (1, 1, 1)
        )


@pytest.mark.parametrize("window_voxels", [0, 30, None])
def test_edges_and_distances_equal_whole_box_masks_and_a_kd_tree(window_voxels: int | None) -> None:
    """The compiled edges (bit masks of the box) are the whole-box `edge_mask`s, and the window search gives
    the very float64 distances of one k-d tree over them, also where it hands voxels to its own k-d tree
    (small windows; window 0: all of them) (the LiTS case: liver and 79 tumour pieces, against a shifted
    copy, anisotropic spacing)."""
    import nibabel as nib

    from evaluation.edges import Edges
    from evaluation.scan import scan, views
    from tests.support.paths import DATA, require_shared

    require_shared()
    reference = np.ascontiguousarray(
        np.asarray(nib.load(DATA / "ct" / "liver-tumor" / "lits117_label.nii.gz").dataobj), dtype=np.uint8
    )
    prediction = np.zeros_like(reference)
    prediction[1:, :-2, 1:] = reference[:-1, 2:, :-1]
    prediction[40:44, 40:44, 10:12] = 2  # a false piece far from every tumour: beyond any window
    spacing = (0.8, 0.8, 2.5)
    pred, ref = views(prediction, reference)
    found = scan(pred, ref, 0, 3)
    boxes = [found.union_box(1), found.union_box(2)]
    assert boxes[0] is not None and boxes[1] is not None
    for value, box, edges in zip((1, 2), boxes, Edges.of(pred, ref, [1, 2], boxes), strict=True):
        whole = pred.box_to_array(box)
        whole_pred, whole_ref = edge_mask(prediction[whole] == value), edge_mask(reference[whole] == value)
        np.testing.assert_array_equal(
            np.unpackbits(edges.pred, axis=-1, bitorder="little")[..., : whole_pred.shape[-1]], whole_pred
        )
        np.testing.assert_array_equal(
            np.unpackbits(edges.ref, axis=-1, bitorder="little")[..., : whole_ref.shape[-1]], whole_ref
        )
        d_pr, d_rp = edges.distances(pred.spacing(spacing), window_voxels)
        want_pr, want_rp = _whole_box_distances(whole_pred, whole_ref, spacing)
        shared_pr, shared_rp = whole_ref[whole_pred], whole_pred[whole_ref]
        assert not d_pr[shared_pr].any() and not d_rp[shared_rp].any()
        np.testing.assert_array_equal(d_pr[~shared_pr], want_pr[int(shared_pr.sum()) :])
        np.testing.assert_array_equal(d_rp[~shared_rp], want_rp[int(shared_rp.sum()) :])


def _whole_box_distances(
    edges_pred: np.ndarray, edges_ref: np.ndarray, spacing: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """The distances as computed before the slabs: float64 points of whole-box edge masks, one k-d tree."""
    from scipy.spatial import cKDTree

    pts_pred = (np.argwhere(edges_pred) + 1.0) * np.asarray(spacing)
    pts_ref = (np.argwhere(edges_ref) + 1.0) * np.asarray(spacing)
    pred_only, ref_only = ~edges_ref[edges_pred], ~edges_pred[edges_ref]
    shared = np.zeros(int(pred_only.size - np.count_nonzero(pred_only)))
    tree_ref = cKDTree(pts_ref, leafsize=32, balanced_tree=False, compact_nodes=False)
    tree_pred = cKDTree(pts_pred, leafsize=32, balanced_tree=False, compact_nodes=False)
    d_pr = tree_ref.query(pts_pred[pred_only], k=1)[0] if pred_only.any() else np.zeros(0)
    d_rp = tree_pred.query(pts_ref[ref_only], k=1)[0] if ref_only.any() else np.zeros(0)
    return np.concatenate((shared, d_pr)), np.concatenate((shared, d_rp))
