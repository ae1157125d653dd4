"""Dice, IoU and volumes on shapes with known answers, and the empty-structure policy."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.overlap import confusion_matrix, overlap_report, structure_overlaps


def _boxes() -> tuple[np.ndarray, np.ndarray]:
    pred = np.zeros((20, 20, 20), np.uint8)
    ref = np.zeros_like(pred)
    pred[0:10, 0:10, 0:10] = 1  # 1000 voxels
    ref[5:15, 0:10, 0:10] = 1  # 1000 voxels, 500 shared
    ref[15:20, 15:20, 15:20] = 2  # only in the reference: 125 voxels
    return pred, ref


def test_confusion_matrix_counts_pairs() -> None:
    pred, ref = _boxes()
    cm = confusion_matrix(pred, ref, 4)
    assert cm[1, 1] == 500 and cm[1, 0] == 500 and cm[0, 1] == 500 and cm[0, 2] == 125
    assert cm.sum() == pred.size


def test_known_overlaps_and_empty_policy() -> None:
    pred, ref = _boxes()
    rows = {r.label: r for r in structure_overlaps(pred, ref, {0: "bg", 1: "a", 2: "b", 3: "c"}, 2.0)}
    assert rows[1].dice == pytest.approx(0.5)
    assert rows[1].iou == pytest.approx(500 / 1500)
    assert rows[1].volume_pred_ml == pytest.approx(2.0) and rows[1].volume_ref_ml == pytest.approx(2.0)
    assert rows[2].dice == 0.0 and rows[2].iou == 0.0 and rows[2].volume_ref_ml == pytest.approx(0.25)
    assert rows[3].dice is None and rows[3].iou is None


def test_report_mean_leaves_out_structures_empty_in_both() -> None:
    pred, ref = _boxes()
    report = overlap_report(pred, ref, {1: "a", 2: "b", 3: "c"}, 1.0)
    assert report["mean"] == {"dice": pytest.approx(0.25), "iou": pytest.approx(1 / 6), "n_structures": 2}


def test_identical_volumes_give_one() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=(30, 31, 32)).astype(np.uint8)
    rows = structure_overlaps(labels, labels, {i: str(i) for i in range(5)}, 1.0)
    assert all(r.dice == pytest.approx(1.0) for r in rows)


@pytest.mark.parametrize(("pred_shape", "ref_shape"), [((4, 4, 4), (4, 4, 5)), ((2, 2, 2), (8,))])
def test_shape_mismatch_is_an_error(pred_shape: tuple[int, ...], ref_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        confusion_matrix(np.zeros(pred_shape, np.uint8), np.zeros(ref_shape, np.uint8), 2)


def test_labels_out_of_range_are_an_error() -> None:
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.full((2, 2, 2), 7, np.uint8), np.zeros((2, 2, 2), np.uint8), 3)
