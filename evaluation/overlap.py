"""Overlap metrics for label volumes, from one confusion matrix.

Conventions (nnU-Net's):
- A structure is a label value > 0 listed in `labels`.
- Empty in both prediction and reference: Dice and IoU are None (not 1.0) and the structure is left out
  of the mean.
- Empty in exactly one: Dice and IoU are 0.0.
- Volumes are in millilitres: voxel count x voxel volume (mm^3) / 1000.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

_CHUNK_VOXELS = 1 << 24


def confusion_matrix(prediction: np.ndarray, reference: np.ndarray, n_labels: int) -> np.ndarray:
    """Counts of (predicted label, reference label) pairs.

    Args:
        prediction, reference: integer label arrays of the same shape, values in [0, n_labels).
        n_labels: number of label values (max label + 1).

    Returns:
        (n_labels, n_labels) int64 array; entry [p, r] counts voxels predicted p whose reference is r.

    One pass over the data in chunks, so no full-size int64 copy is ever made.
    """
    if prediction.shape != reference.shape:
        raise ValueError(f"shapes differ: prediction {prediction.shape}, reference {reference.shape}")
    pred = prediction.reshape(-1)
    ref = reference.reshape(-1)
    counts = np.zeros(n_labels * n_labels, dtype=np.int64)
    for start in range(0, pred.size, _CHUNK_VOXELS):
        p = pred[start : start + _CHUNK_VOXELS].astype(np.int64)
        r = ref[start : start + _CHUNK_VOXELS].astype(np.int64)
        if p.size and (p.min() < 0 or r.min() < 0 or p.max() >= n_labels or r.max() >= n_labels):
            raise ValueError(f"label values must lie in [0, {n_labels}); got values outside that range")
        counts += np.bincount(p * n_labels + r, minlength=n_labels * n_labels)
    return counts.reshape(n_labels, n_labels)


@dataclass(frozen=True)
class StructureOverlap:
    label: int
    name: str
    dice: float | None
    iou: float | None
    volume_pred_ml: float
    volume_ref_ml: float


def structure_overlaps(
    prediction: np.ndarray,
    reference: np.ndarray,
    labels: Mapping[int, str],
    voxel_volume_mm3: float,
) -> list[StructureOverlap]:
    """Dice, IoU and volumes for each structure in `labels` (label 0, background, is skipped)."""
    structures = sorted(v for v in labels if v > 0)
    n_labels = int(max([*structures, int(prediction.max(initial=0)), int(reference.max(initial=0))])) + 1
    cm = confusion_matrix(prediction, reference, n_labels)
    ml_per_voxel = voxel_volume_mm3 / 1000.0
    out: list[StructureOverlap] = []
    for value in structures:
        tp = int(cm[value, value])
        n_pred = int(cm[value, :].sum())
        n_ref = int(cm[:, value].sum())
        union = n_pred + n_ref - tp
        dice = None if n_pred + n_ref == 0 else 2.0 * tp / (n_pred + n_ref)
        iou = None if union == 0 else tp / union
        out.append(
            StructureOverlap(
                label=value,
                name=labels[value],
                dice=dice,
                iou=iou,
                volume_pred_ml=n_pred * ml_per_voxel,
                volume_ref_ml=n_ref * ml_per_voxel,
            )
        )
    return out


def overlap_report(
    prediction: np.ndarray,
    reference: np.ndarray,
    labels: Mapping[int, str],
    voxel_volume_mm3: float,
) -> dict[str, object]:
    """JSON-ready report: per structure values plus the means over structures that are not empty in both."""
    rows = structure_overlaps(prediction, reference, labels, voxel_volume_mm3)
    dices = [r.dice for r in rows if r.dice is not None]
    ious = [r.iou for r in rows if r.iou is not None]
    return {
        "structures": [asdict(r) for r in rows],
        "mean": {
            "dice": float(np.mean(dices)) if dices else None,
            "iou": float(np.mean(ious)) if ious else None,
            "n_structures": len(dices),
        },
        "conventions": {
            "empty_in_both": "null, excluded from the mean",
            "empty_in_one": "0.0",
            "volume_unit": "ml",
        },
    }
