"""Lesion-wise metrics: the edge cases and penalties of the BraTS 2023 rule, on small hand-made masks."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.lesionwise import HD95_PENALTY_MM, lesionwise_metrics


def _mask(*boxes: tuple[slice, ...]) -> np.ndarray:
    out = np.zeros((20, 20, 20), dtype=bool)
    for box in boxes:
        out[box] = True
    return out


A = (slice(2, 5), slice(2, 5), slice(2, 5))
B = (slice(12, 16), slice(12, 16), slice(12, 16))
FAR = (slice(2, 4), slice(15, 17), slice(15, 17))


@pytest.mark.parametrize("rule", ["brats2023", "bipartite"])
def test_empty_in_both_scores_perfect(rule: str) -> None:
    empty = _mask()
    result = lesionwise_metrics(empty, empty, (1, 1, 1), rule=rule)  # type: ignore[arg-type]
    assert (result.tp, result.fp, result.fn) == (0, 0, 0)
    assert (result.lesionwise_dice, result.lesionwise_hd95_mm) == (1.0, 0.0)
    assert result.sensitivity is None and result.pq is None


def test_missed_lesion_and_false_positive_are_penalised() -> None:
    reference = _mask(A, B)
    prediction = _mask(B, FAR)
    result = lesionwise_metrics(prediction, reference, (1, 1, 1))
    assert (result.tp, result.fp, result.fn) == (1, 1, 1)
    # B is perfect (Dice 1, HD95 0); A missed (0, penalty); FAR a false positive (0, penalty)
    assert result.lesionwise_dice == pytest.approx(1 / 3)
    assert result.lesionwise_hd95_mm == pytest.approx(2 * HD95_PENALTY_MM / 3)
    assert result.sensitivity == 0.5 and result.f1 == pytest.approx(0.5)
    assert result.rq == pytest.approx(0.5) and result.sq == 1.0 and result.pq == pytest.approx(0.5)
    missed = [s for s in result.lesions if s.kind == "fn"]
    assert len(missed) == 1 and missed[0].centroid_voxel == (3.0, 3.0, 3.0)


def test_dilation_merges_close_reference_lesions_and_catches_near_misses() -> None:
    left = (slice(5, 8), slice(5, 8), slice(5, 8))
    right = (slice(10, 13), slice(5, 8), slice(5, 8))  # 2 voxels apart from `left`
    reference = _mask(left, right)
    near = _mask((slice(5, 8), slice(10, 12), slice(5, 8)))  # touches no lesion, within 3 voxels
    result = lesionwise_metrics(near, reference, (1, 1, 1), dilation_iterations=3)
    assert (result.n_ref, result.tp, result.fp, result.fn) == (1, 1, 0, 0)
    assert result.lesions[0].dice == 0.0 and result.lesions[0].hd95_mm < HD95_PENALTY_MM
    separate = lesionwise_metrics(near, reference, (1, 1, 1), dilation_iterations=0)
    assert (separate.n_ref, separate.tp, separate.fp, separate.fn) == (2, 0, 1, 2)


def test_small_reference_lesions_can_be_left_out() -> None:
    reference = _mask(A, (slice(15, 16), slice(2, 3), slice(2, 3)))
    result = lesionwise_metrics(reference, reference, (1, 1, 1), min_volume_mm3=1.0)
    assert (result.tp, result.fn, result.fp) == (1, 0, 0)
    assert [s.counted for s in result.lesions] == [True, False]


def test_bad_arguments_name_the_value() -> None:
    with pytest.raises(ValueError, match="rule"):
        lesionwise_metrics(_mask(), _mask(), (1, 1, 1), rule="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dilation_iterations"):
        lesionwise_metrics(_mask(), _mask(A), (1, 1, 1), dilation_iterations=-1)
    with pytest.raises(ValueError, match="shapes differ"):
        lesionwise_metrics(_mask(), np.zeros((2, 2, 2), bool), (1, 1, 1))
