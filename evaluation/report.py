"""One case's metrics report: overlap, volumes and surface distances per structure, JSON-ready, and as CSV.

Per structure (label value > 0 listed in `labels`):
- dice, iou, precision = TP / |P|, recall = TP / |R|, from one confusion matrix (`evaluation.overlap`).
- volume_pred_ml, volume_ref_ml (voxel count x voxel volume), volume_diff_ml = pred - ref,
  volume_diff_pct = 100 x (pred - ref) / ref.
- hd_mm, hd95_mm, assd_mm, nsd at nsd_tolerance_mm (`evaluation.surface`, MONAI's conventions; see there
  for every difference from MONAI).

Empty policy (nnU-Net's; `empty` says which side is empty, None when neither is):
- "both": every metric is None (JSON null); volumes are 0; the structure is left out of all means.
- "prediction" (a missed structure): dice = iou = recall = 0, precision None (0/0), distances None,
  nsd 0, volume_diff_pct -100.
- "reference" (a false structure): dice = iou = precision = 0, recall None (0/0), distances None, nsd 0,
  volume_diff_pct None (no reference volume).
Differences from MONAI: Dice is `DiceMetric(ignore_empty=False)` except for the empty cases: MONAI's
default (`ignore_empty=True`) gives nan whenever the reference is empty, also for a false structure (we
give 0), and `ignore_empty=False` gives 1.0 when both are empty (we give None, as nnU-Net). For the
surface metrics see `evaluation.surface`.

Per case (`case`): voxel accuracy, mean class accuracy and mean IoU over classes with background
(`evaluation.overlap.accuracy_summary`; Dice is the F1 score of binary voxel classification).

Means are over structures not empty in both, skipping None values; `n_structures` counts those
structures and `n_with_distances` the ones present in both, over which the distance means are taken (a
missed structure has no distance, so mean HD95 says nothing about misses: read it with mean Dice).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from evaluation.overlap import CASE_CONVENTIONS, accuracy_summary, counts_from_confusion, label_scan
from evaluation.surface import (
    DEFAULT_TOLERANCE_MM,
    NSD_RELATIVE_SLACK,
    check_spacing,
    check_tolerance,
    structure_surface_metrics,
    surface_metrics_from_scan,
)

ROW_FIELDS = (
    "label",
    "name",
    "empty",
    "dice",
    "iou",
    "precision",
    "recall",
    "volume_pred_ml",
    "volume_ref_ml",
    "volume_diff_ml",
    "volume_diff_pct",
    "hd_mm",
    "hd95_mm",
    "assd_mm",
    "nsd",
    "nsd_tolerance_mm",
)
MEAN_FIELDS = ("dice", "iou", "precision", "recall", "hd_mm", "hd95_mm", "assd_mm", "nsd")

CONVENTIONS: dict[str, str] = {
    "empty_in_both": "all metrics null, structure excluded from the means",
    "empty_in_one": "dice/iou 0; precision or recall 0 where defined, null where 0/0; distances null; nsd 0",
    "volume_unit": "ml",
    "distance_unit": "mm, voxel spacing applied per axis",
    "surface": "voxels removed by a face-connected erosion (outside the array is background), as MONAI",
    "hd": "max over both directed maxima (MONAI HausdorffDistanceMetric)",
    "hd95": "max of the two directed 95th percentiles, linear interpolation "
    "(MONAI HausdorffDistanceMetric(percentile=95)); not pooled (seg-metrics), not area-weighted (DeepMind)",
    "assd": "mean of both directed distance sets pooled (MONAI SurfaceDistanceMetric(symmetric=True))",
    "nsd": "fraction of surface voxels of both within the tolerance, counted not area-weighted "
    f"(MONAI SurfaceDiceMetric, use_subvoxels=False); d <= t*(1+{NSD_RELATIVE_SLACK:g})",
    "mean": "over structures not empty in both, null values skipped",
    **CASE_CONVENTIONS,
}


def evaluate_case(
    prediction: np.ndarray,
    reference: np.ndarray,
    labels: Mapping[int, str],
    spacing_mm: Sequence[float],
    *,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    tolerances_mm: Mapping[int, float] | None = None,
) -> dict[str, Any]:
    """Metrics of one predicted label array against its reference, JSON-ready.

    Args:
        prediction, reference: integer label arrays of one shape (2D or 3D), non-negative values.
        labels: label value -> structure name; value 0 (background) is skipped.
        spacing_mm: voxel size along each array axis, in mm.
        tolerance_mm: NSD tolerance for structures not in `tolerances_mm`.
        tolerances_mm: per label value NSD tolerance, in mm.

    Returns:
        {"structures": [row, ...], "mean": {...}, "spacing_mm": [...], "conventions": {...}}; rows carry
        `ROW_FIELDS` (a superset of `overlap_report`'s rows), `mean` carries `MEAN_FIELDS`,
        `n_structures` and `n_with_distances`.
    """
    if prediction.shape != reference.shape:
        raise ValueError(f"shapes differ: prediction {prediction.shape}, reference {reference.shape}")
    spacing = check_spacing(spacing_mm, prediction.ndim)
    default_t = check_tolerance(tolerance_mm)
    unknown = sorted(set(tolerances_mm or {}) - set(labels))
    if unknown:
        raise ValueError(f"tolerances_mm names labels not in labels: {unknown}")
    structures = sorted(int(v) for v in labels if v > 0)
    ml_per_voxel = math.prod(spacing) / 1000.0
    classes = sorted({0, *structures})
    # one pass gives the confusion matrix and the boxes the surface metrics work in
    cm, found, pred, ref = label_scan(prediction, reference, classes)
    counts = counts_from_confusion(cm, structures)
    if found is None or pred is None or ref is None:  # label values too large for the compiled pass
        surfaces = structure_surface_metrics(
            prediction, reference, structures, spacing, tolerances_mm, tolerance_mm=default_t
        )
    else:
        surfaces = surface_metrics_from_scan(
            pred, ref, found, structures, spacing, tolerances_mm, tolerance_mm=default_t
        )
    rows: list[dict[str, Any]] = []
    for c in counts:
        s = surfaces[c.label]
        empty = _empty_side(c.n_pred, c.n_ref)
        union = c.n_pred + c.n_ref - c.tp
        volume_pred, volume_ref = c.n_pred * ml_per_voxel, c.n_ref * ml_per_voxel
        rows.append(
            {
                "label": c.label,
                "name": labels[c.label],
                "empty": empty,
                "dice": None if empty == "both" else 2.0 * c.tp / (c.n_pred + c.n_ref),
                "iou": None if empty == "both" else c.tp / union,
                "precision": c.tp / c.n_pred if c.n_pred else None,
                "recall": c.tp / c.n_ref if c.n_ref else None,
                "volume_pred_ml": volume_pred,
                "volume_ref_ml": volume_ref,
                "volume_diff_ml": None if empty == "both" else volume_pred - volume_ref,
                "volume_diff_pct": 100.0 * (c.n_pred - c.n_ref) / c.n_ref if c.n_ref else None,
                "hd_mm": s.hd_mm,
                "hd95_mm": s.hd95_mm,
                "assd_mm": s.assd_mm,
                "nsd": s.nsd,
                "nsd_tolerance_mm": s.tolerance_mm,
            }
        )
    return {
        "structures": rows,
        "mean": _means(rows),
        "case": accuracy_summary(cm, classes),
        "spacing_mm": list(spacing),
        "conventions": dict(CONVENTIONS),
    }


def _empty_side(n_pred: int, n_ref: int) -> str | None:
    if n_pred == 0 and n_ref == 0:
        return "both"
    if n_pred == 0:
        return "prediction"
    if n_ref == 0:
        return "reference"
    return None


def _means(rows: list[dict[str, Any]]) -> dict[str, Any]:
    counted = [r for r in rows if r["empty"] != "both"]
    means: dict[str, Any] = {}
    for field in MEAN_FIELDS:
        values = [r[field] for r in counted if r[field] is not None]
        means[field] = float(np.mean(values)) if values else None
    means["n_structures"] = len(counted)
    means["n_with_distances"] = sum(r["empty"] is None for r in rows)
    return means


def to_csv(report: Mapping[str, Any]) -> str:
    """One line per structure of an `evaluate_case` report, header first; null is an empty cell."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=ROW_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in report["structures"]:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in ROW_FIELDS})
    return buffer.getvalue()
