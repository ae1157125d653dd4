"""Lesion-wise evaluation: reference and predicted lesions matched, then scored lesion by lesion.

Lesions are 26-connected components (`evaluation.instances.connectivity_structure`) of a boolean mask (one
lesion label, or several merged by the caller). Two matching rules:

`brats2023` (default), the BraTS 2023 lesion-wise evaluation's rule:
- Reference components are dilated `dilation_iterations` times (default 3, BraTS-GLI's value) with the
  18-neighbour cross `generate_binary_structure(3, 2)`; reference components whose dilations touch
  (26-connected) are merged into one reference lesion.
- A predicted component is matched to every reference lesion whose dilation it overlaps by at least one
  voxel (so one prediction may serve two lesions, and several predictions one lesion). A reference lesion with
  at least one match is a true positive (TP); without, a false negative (FN). A predicted component that
  overlaps no dilated reference lesion is a false positive (FP).
- Per reference lesion: Dice and HD95 between the lesion and the union of its matched predicted components
  (the whole components, not only their part inside the dilation). A missed lesion scores Dice 0 and HD95 =
  `hd95_penalty_mm` (374 mm, as BraTS 2023).
- Reference lesions of volume <= `min_volume_mm3` are left out of the scores and counts (BraTS 2023 used
  50 mm^3; default 0: every lesion counts). They still make overlapping predictions non-FP.
- Case scores: lesion-wise Dice = sum(lesion Dice) / (n lesions + FP); lesion-wise HD95 =
  (sum(lesion HD95) + FP x penalty) / (n lesions + FP). With no lesion and no FP: Dice 1, HD95 0 (BraTS).

`bipartite`, the rule of the BraTS challenges' current package (`brats-evaluation`, built on panoptica's
`MaxBipartiteMatching` on Dice with threshold 1e-6): one-to-one matching of reference and predicted
components maximising the summed Dice (`scipy.optimize.linear_sum_assignment`); pairs with Dice > 1e-6
are TP, the rest FN / FP. Dice and HD95 per matched pair; misses and FPs penalised with the package's 373 mm.

HD95 per lesion, by rule:
- `brats2023`: `evaluation.surface`'s convention (MONAI's: the larger of the two directed 95th percentiles
  of surface-voxel distances), penalty 374 mm. The 2023 scripts used DeepMind's surface-distance
  (area-weighted surfels), which differs from this by up to about a voxel.
- `bipartite`: the package's own (panoptica's, medpy's definition): surface = mask XOR its erosion by the
  6-neighbour cross (voxels on the array's edge count as surface), Euclidean distance transform with the
  voxel spacing, one 95th percentile (`np.percentile`, linear) of both directions' distances pooled;
  penalty 373 mm. Equal to `brats-evaluation` 0.0.10 (tests/evaluation/test_lesionwise_reference.py).

Detection: sensitivity = TP / (TP + FN), precision = matched predicted components / all predicted components
(= TP / (TP + FP) for `bipartite`), F1 = 2 TP / (2 TP + FP + FN) (= RQ). Panoptic quality: SQ = mean IoU of
the TP pairs, RQ = TP / (TP + FP/2 + FN/2), PQ = SQ x RQ (None where there is no lesion and no FP).
Size bins: reference lesions by their volume (ml) for TP/FN, predicted components by theirs for FP.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from evaluation.instances import box_centroids, box_sizes, label_components
from evaluation.surface import check_spacing, surface_distances

HD95_PENALTY_MM = 374.0
"""BraTS 2023's HD95 for a missed lesion or a false positive (mm)."""
BIPARTITE_HD95_PENALTY_MM = 373.0
"""`brats-evaluation`'s HD95 penalty (mm), the `bipartite` rule's ("the diameter of the SRI cube")."""
DEFAULT_SIZE_BINS_ML: tuple[float, ...] = (0.1, 1.0, 10.0)
"""Upper edges of the size bins (ml): [0, 0.1), [0.1, 1), [1, 10), [10, inf)."""

Rule = Literal["brats2023", "bipartite"]


@dataclass(frozen=True)
class LesionScore:
    """One reference lesion (or, for FPs, one predicted component) and how it was scored."""

    kind: Literal["tp", "fn", "fp"]
    ref_id: int | None
    pred_ids: tuple[int, ...]
    volume_ref_ml: float
    volume_pred_ml: float
    dice: float
    iou: float
    hd95_mm: float
    centroid_voxel: tuple[float, ...]
    counted: bool = True


@dataclass(frozen=True)
class LesionwiseResult:
    rule: str
    dilation_iterations: int
    tp: int
    fp: int
    fn: int
    n_ref: int
    n_pred: int
    sensitivity: float | None
    precision: float | None
    f1: float | None
    lesionwise_dice: float
    lesionwise_hd95_mm: float
    sq: float | None
    rq: float | None
    pq: float | None
    lesions: list[LesionScore] = field(default_factory=list)
    by_size: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else num / den


def hd95_penalty_mm(rule: Rule) -> float:
    """The HD95 (mm) a missed lesion and a false positive score under ``rule``."""
    return BIPARTITE_HD95_PENALTY_MM if rule == "bipartite" else HD95_PENALTY_MM


def pooled_hd95_mm(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> float:
    """HD95 as panoptica (and medpy) compute it: the 95th percentile of both directions' surface distances
    pooled; surface = mask XOR its 6-neighbour erosion. Both masks non-empty, on one grid that holds them
    whole (a crop to their joint bounding box gives the same value as the full volume)."""
    cross = ndimage.generate_binary_structure(a.ndim, 1)
    edge_a = a ^ ndimage.binary_erosion(a, structure=cross)
    edge_b = b ^ ndimage.binary_erosion(b, structure=cross)
    a_to_b = ndimage.distance_transform_edt(~edge_b, sampling=spacing)[edge_a]
    b_to_a = ndimage.distance_transform_edt(~edge_a, sampling=spacing)[edge_b]
    return float(np.percentile(np.hstack((a_to_b, b_to_a)), 95))


def _pair_scores(
    ref_mask: np.ndarray, pred_mask: np.ndarray, spacing: tuple[float, ...], rule: Rule
) -> tuple[float, float, float]:
    """(Dice, IoU, HD95) of two masks on one (cropped) grid; HD95 is the rule's penalty when either is
    empty, else the rule's convention (module doc)."""
    inter = int(np.count_nonzero(ref_mask & pred_mask))
    total = int(np.count_nonzero(ref_mask)) + int(np.count_nonzero(pred_mask))
    if total == 0 or (inter == 0 and (not ref_mask.any() or not pred_mask.any())):
        return 0.0, 0.0, hd95_penalty_mm(rule)
    if rule == "bipartite":
        hd95 = pooled_hd95_mm(pred_mask, ref_mask, spacing)
    else:
        d_pr, d_rp = surface_distances(pred_mask, ref_mask, spacing)
        hd95 = float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)))
    return 2.0 * inter / total, inter / (total - inter), hd95


def _union_box(boxes: Sequence[tuple[slice, ...]]) -> tuple[slice, ...]:
    return tuple(
        slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(len(boxes[0]))
    )


def _overlap_pairs(ref_labels: np.ndarray, pred_labels: np.ndarray, n_pred: int) -> np.ndarray:
    """(m, 3) rows (ref id, pred id, overlapping voxels) for every overlapping pair."""
    both = (ref_labels > 0) & (pred_labels > 0)
    key = ref_labels[both].astype(np.int64) * (n_pred + 1) + pred_labels[both]
    keys, counts = np.unique(key, return_counts=True)
    return np.stack([keys // (n_pred + 1), keys % (n_pred + 1), counts], axis=1)


def brats2023_reference_lesions(reference: np.ndarray, dilation_iterations: int) -> tuple[np.ndarray, int]:
    """Reference lesions merged by dilation, and the dilated lesions' label array: (dilated labels, n).

    Reference voxels carry their lesion's id in the returned array wherever `reference` is set; voxels of the
    dilation only carry it elsewhere (callers mask with `reference`).
    """
    if dilation_iterations < 0:
        raise ValueError(f"dilation_iterations must be >= 0, got {dilation_iterations}")
    ref = np.asarray(reference, dtype=bool)
    if dilation_iterations == 0:
        return label_components(ref)
    cross = ndimage.generate_binary_structure(ref.ndim, 2)
    dilated = ndimage.binary_dilation(ref, structure=cross, iterations=dilation_iterations)
    return label_components(dilated)


def lesionwise_metrics(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    rule: Rule = "brats2023",
    dilation_iterations: int = 3,
    min_volume_mm3: float = 0.0,
    size_bins_ml: Sequence[float] = DEFAULT_SIZE_BINS_ML,
) -> LesionwiseResult:
    """Lesion-wise scores of a predicted against a reference lesion mask (boolean arrays of one shape).

    `spacing_mm`: one value per axis (mm). See the module doc for the rules and every convention.
    """
    if prediction.shape != reference.shape:
        raise ValueError(f"shapes differ: prediction {prediction.shape}, reference {reference.shape}")
    if rule not in ("brats2023", "bipartite"):
        raise ValueError(f"rule must be 'brats2023' or 'bipartite', got {rule!r}")
    spacing = check_spacing(spacing_mm, prediction.ndim)
    voxel_mm3 = float(np.prod(spacing))
    ref = np.asarray(reference, dtype=bool)
    pred = np.asarray(prediction, dtype=bool)
    pred_labels, n_pred = label_components(pred)
    pred_boxes = ndimage.find_objects(pred_labels)
    pred_sizes = box_sizes(pred_labels, pred_boxes)
    pred_centres = box_centroids(pred_labels, pred_boxes)

    if rule == "brats2023":
        dilated, n_ref = brats2023_reference_lesions(ref, dilation_iterations)
        ref_labels = np.where(ref, dilated, 0).astype(np.int32)
        pairs = _overlap_pairs(dilated, pred_labels, n_pred)
        matches: dict[int, list[int]] = {}
        for r, p, _ in pairs:
            matches.setdefault(int(r), []).append(int(p))
    else:
        ref_labels, n_ref = label_components(ref)
        pairs = _overlap_pairs(ref_labels, pred_labels, n_pred)
    ref_boxes = ndimage.find_objects(ref_labels, max_label=n_ref)
    ref_sizes = box_sizes(ref_labels, ref_boxes)
    ref_centres = box_centroids(ref_labels, ref_boxes)
    if rule == "bipartite":
        matches = _bipartite(pairs, ref_sizes, pred_sizes, n_ref, n_pred)

    scores: list[LesionScore] = []
    for r in range(1, n_ref + 1):
        box_r = ref_boxes[r - 1]
        assert box_r is not None
        matched = sorted(matches.get(r, []))
        box = _union_box([box_r, *(b for p in matched if (b := pred_boxes[p - 1]) is not None)])
        ref_mask = ref_labels[box] == r
        pred_mask = np.isin(pred_labels[box], matched) if matched else np.zeros_like(ref_mask)
        dice, iou, hd95 = _pair_scores(ref_mask, pred_mask, spacing, rule)
        scores.append(
            LesionScore(
                kind="tp" if matched else "fn",
                ref_id=r,
                pred_ids=tuple(matched),
                volume_ref_ml=float(ref_sizes[r] * voxel_mm3 / 1000.0),
                volume_pred_ml=float(sum(int(pred_sizes[p]) for p in matched) * voxel_mm3 / 1000.0),
                dice=dice,
                iou=iou,
                hd95_mm=hd95,
                centroid_voxel=tuple(float(c) for c in ref_centres[r - 1]),
                counted=bool(ref_sizes[r] * voxel_mm3 > min_volume_mm3),
            )
        )
    matched_pred = {p for ps in matches.values() for p in ps}
    for p in range(1, n_pred + 1):
        if p not in matched_pred:
            scores.append(
                LesionScore(
                    kind="fp",
                    ref_id=None,
                    pred_ids=(p,),
                    volume_ref_ml=0.0,
                    volume_pred_ml=float(pred_sizes[p] * voxel_mm3 / 1000.0),
                    dice=0.0,
                    iou=0.0,
                    hd95_mm=hd95_penalty_mm(rule),
                    centroid_voxel=tuple(float(c) for c in pred_centres[p - 1]),
                )
            )
    return _summarise(scores, rule, dilation_iterations, n_ref, n_pred, len(matched_pred), size_bins_ml)


def _bipartite(
    pairs: np.ndarray, ref_sizes: np.ndarray, pred_sizes: np.ndarray, n_ref: int, n_pred: int
) -> dict[int, list[int]]:
    """One-to-one matches maximising summed Dice over overlapping pairs (panoptica's cost: 1 - Dice)."""
    if n_ref == 0 or n_pred == 0 or len(pairs) == 0:
        return {}
    cost = np.full((n_ref, n_pred), 1.0 + 1e-6)
    r, p, inter = pairs[:, 0], pairs[:, 1], pairs[:, 2]
    dice = 2.0 * inter / (ref_sizes[r] + pred_sizes[p])
    keep = dice > 1e-6
    cost[r[keep] - 1, p[keep] - 1] = 1.0 - dice[keep]
    rows, cols = linear_sum_assignment(cost)
    return {int(i) + 1: [int(j) + 1] for i, j in zip(rows, cols, strict=True) if cost[i, j] < 1.0}


def _summarise(
    scores: list[LesionScore],
    rule: Rule,
    dilation_iterations: int,
    n_ref: int,
    n_pred: int,
    n_pred_matched: int,
    size_bins_ml: Sequence[float],
) -> LesionwiseResult:
    counted = [s for s in scores if s.kind != "fp" and s.counted]
    fps = [s for s in scores if s.kind == "fp"]
    tp = sum(1 for s in counted if s.kind == "tp")
    fn = len(counted) - tp
    fp = len(fps)
    n_scored = len(counted) + fp
    if n_scored == 0:
        lw_dice, lw_hd95 = 1.0, 0.0
    else:
        lw_dice = sum(s.dice for s in counted) / n_scored
        lw_hd95 = (sum(s.hd95_mm for s in counted) + fp * hd95_penalty_mm(rule)) / n_scored
    sq = _ratio(sum(s.iou for s in counted if s.kind == "tp"), tp)
    rq = _ratio(tp, tp + 0.5 * fp + 0.5 * fn)
    precision = _ratio(n_pred_matched, n_pred) if rule == "brats2023" else _ratio(tp, tp + fp)
    return LesionwiseResult(
        rule=rule,
        dilation_iterations=dilation_iterations if rule == "brats2023" else 0,
        tp=tp,
        fp=fp,
        fn=fn,
        n_ref=n_ref,
        n_pred=n_pred,
        sensitivity=_ratio(tp, tp + fn),
        precision=precision,
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        lesionwise_dice=float(lw_dice),
        lesionwise_hd95_mm=float(lw_hd95),
        sq=sq,
        rq=rq,
        pq=None if sq is None and rq is None else (sq or 0.0) * (rq or 0.0),
        lesions=scores,
        by_size=size_bin_table(scores, size_bins_ml),
    )


def size_bin_table(scores: Sequence[LesionScore], size_bins_ml: Sequence[float]) -> list[dict[str, Any]]:
    """Detection counts per size bin: TP/FN by reference volume, FP by predicted volume (ml)."""
    edges = [0.0, *sorted(float(e) for e in size_bins_ml), float("inf")]
    rows = []
    for low, high in itertools.pairwise(edges):

        def inside(volume: float, lo: float = low, hi: float = high) -> bool:
            return lo <= volume < hi

        tp = sum(1 for s in scores if s.kind == "tp" and s.counted and inside(s.volume_ref_ml))
        fn = sum(1 for s in scores if s.kind == "fn" and s.counted and inside(s.volume_ref_ml))
        fp = sum(1 for s in scores if s.kind == "fp" and inside(s.volume_pred_ml))
        rows.append(
            {
                "min_ml": low,
                "max_ml": None if high == float("inf") else high,
                "tp": tp,
                "fn": fn,
                "fp": fp,
                "sensitivity": _ratio(tp, tp + fn),
                "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            }
        )
    return rows
