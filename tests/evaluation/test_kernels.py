"""The compiled passes (evaluation.kernels through evaluation.scan) against plain numpy on the same arrays:
every dtype, layout and dimension the metrics accept, the threaded split, the batches of edge masks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from evaluation import scan as scan_module
from evaluation import surface
from evaluation.overlap import confusion_matrix, label_confusion
from evaluation.scan import scan, views
from evaluation.surface import (
    bounding_boxes,
    edge_mask,
    percentile,
    structure_surface_metrics,
    surface_distances,
)


def _blobs(shape: tuple[int, ...], n_labels: int, seed: int) -> np.ndarray:
    """Smooth label regions (blobs touching each other and the border), values 0..n_labels-1."""
    rng = np.random.default_rng(seed)
    noise = ndimage.uniform_filter(rng.random(shape), size=5)
    edges = np.quantile(noise, np.linspace(0, 1, n_labels + 1)[1:-1])
    return np.digitize(noise, edges).astype(np.uint8)


def _numpy_confusion(pred: np.ndarray, ref: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(
        pred.astype(np.int64).ravel() * n + ref.astype(np.int64).ravel(), minlength=n * n
    ).reshape(n, n)


# Each integer type and memory layout is compiled once (cached on disk): a few types, not all of them.
TYPES_ORDERS = [
    (np.uint8, "C"),
    (np.uint8, "F"),
    (np.uint8, "strided"),
    (np.bool_, "C"),
    (np.uint16, "F"),
    (np.int64, "C"),
]


@pytest.mark.parametrize(("dtype", "order"), TYPES_ORDERS)
@pytest.mark.parametrize("shape", [(9, 10, 11), (13, 17), (40,)])
def test_confusion_equals_numpy(dtype: type, order: str, shape: tuple[int, ...]) -> None:
    n = 2 if dtype is np.bool_ else 5
    pred = _blobs(shape, n, 0).astype(dtype)
    ref = _blobs(shape, n, 1).astype(dtype)
    if order == "F":
        pred, ref = np.asfortranarray(pred), np.asfortranarray(ref)
    elif order == "strided":
        pred, ref = np.repeat(pred, 2, axis=-1)[..., ::2], np.repeat(ref, 2, axis=-1)[..., ::2]
    np.testing.assert_array_equal(confusion_matrix(pred, ref, n), _numpy_confusion(pred, ref, n))


def test_label_confusion_holds_values_beyond_the_structures() -> None:
    pred = _blobs((10, 12, 14), 4, 0).astype(np.uint16)
    ref = _blobs((10, 12, 14), 4, 1).astype(np.uint16)
    pred[0, 0, :3] = 3000  # beyond the structures: a second pass sized to it (numpy path, > 2048 values)
    ref[1, 1, 1] = 700
    cm = label_confusion(pred, ref, [1, 2])
    np.testing.assert_array_equal(cm, _numpy_confusion(pred, ref, 3001))
    small = label_confusion(pred % 1000, ref, [1, 2])  # largest value 700: the compiled pass again
    np.testing.assert_array_equal(small, _numpy_confusion(pred % 1000, ref, 701))


def test_negative_labels_are_an_error() -> None:
    pred = np.zeros((3, 3, 3), np.int16)
    pred[1, 1, 1] = -2
    with pytest.raises(ValueError, match=r"outside that range \(-2\.\.0\)"):
        label_confusion(pred, np.zeros_like(pred), [1])


def test_threaded_pass_equals_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large enough for the split over threads (>= 1M voxels), against the same pass on one thread."""
    pred = _blobs((64, 128, 130), 6, 0)
    ref = _blobs((64, 128, 130), 6, 2)
    assert pred.size >= scan_module.PARALLEL_VOXELS
    monkeypatch.setattr(scan_module, "workers", lambda: 3)  # uneven parts
    threaded = scan(*views(pred, ref), 6, 6)
    monkeypatch.setattr(scan_module, "workers", lambda: 1)
    single = scan(*views(pred, ref), 6, 6)
    np.testing.assert_array_equal(threaded.hist, single.hist)
    np.testing.assert_array_equal(threaded.box_pred, single.box_pred)
    np.testing.assert_array_equal(threaded.box_ref, single.box_ref)
    np.testing.assert_array_equal(threaded.hist, _numpy_confusion(pred, ref, 6))
    boxes = bounding_boxes(pred, ref, range(1, 6))
    for value, box in boxes.items():
        where = np.argwhere((pred == value) | (ref == value))
        assert box == tuple(
            slice(int(a), int(b) + 1) for a, b in zip(where.min(0), where.max(0), strict=True)
        )


def _kd_distances(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    """Directed distances of numpy edge masks by one k-d tree per direction (MONAI's CPU path)."""
    edges_p, edges_r = edge_mask(pred), edge_mask(ref)
    pts_p = (np.argwhere(edges_p) + 1.0) * np.asarray(spacing)
    pts_r = (np.argwhere(edges_r) + 1.0) * np.asarray(spacing)
    return cKDTree(pts_r).query(pts_p)[0], cKDTree(pts_p).query(pts_r)[0]


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize(
    ("shape", "spacing"), [((30, 26, 20), (0.8, 1.1, 2.5)), ((41, 37), (0.7, 1.3)), ((90,), (0.5,))]
)
def test_surface_distances_equal_a_kd_tree_in_any_dimension(
    order: str, shape: tuple[int, ...], spacing: tuple[float, ...]
) -> None:
    """1D, 2D and 3D masks, C or Fortran order, with pieces far apart (beyond the search window)."""
    labels = _blobs(shape, 3, 4)
    pred, ref = labels == 1, np.roll(labels, 2, axis=0) == 1
    pred[(0,) * len(shape)] = True  # a lone voxel in a corner
    if order == "F":
        pred, ref = np.asfortranarray(pred), np.asfortranarray(ref)
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    want_pr, want_rp = _kd_distances(pred, ref, spacing)
    if order == "C":  # same order, same float64 numbers
        np.testing.assert_array_equal(d_pr, want_pr)
        np.testing.assert_array_equal(d_rp, want_rp)
    else:  # the transposed view's order; the squares are summed in the other order (last-bit rounding)
        np.testing.assert_allclose(np.sort(d_pr), np.sort(want_pr), rtol=1e-14)
        np.testing.assert_allclose(np.sort(d_rp), np.sort(want_rp), rtol=1e-14)


def test_edge_masks_in_several_batches_give_the_same_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    pred, ref = _blobs((20, 30, 40), 6, 0), _blobs((20, 30, 40), 6, 3)
    together = structure_surface_metrics(pred, ref, range(1, 6), (1.0, 0.9, 2.0))
    monkeypatch.setattr(surface, "_EDGE_BYTES_MIN", 1)
    monkeypatch.setattr(surface, "_EDGE_BYTES_PER_VOXEL", 1 << 30)  # one structure per batch
    assert len(surface._batches([(v, np.array([0, 20, 0, 30, 0, 40])) for v in range(5)], 1)) == 5
    assert structure_surface_metrics(pred, ref, range(1, 6), (1.0, 0.9, 2.0)) == together


@pytest.mark.parametrize("n", [1, 2, 3, 20, 21, 1001])
@pytest.mark.parametrize("q", [0, 50, 95, 99.9, 100])
def test_percentile_is_numpys(n: int, q: float) -> None:
    values = np.random.default_rng(n).random(n) * 7
    assert percentile(values, q) == np.percentile(values, q)
    rounded = np.round(values, 1)  # ties
    assert percentile(rounded, q) == np.percentile(rounded, q)
