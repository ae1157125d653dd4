"""Overlap metrics for label volumes, from one confusion matrix.

Conventions (nnU-Net's):
- A structure is a label value > 0 listed in `labels`.
- Empty in both prediction and reference: Dice and IoU are None (not 1.0) and the structure is left out
  of the mean.
- Empty in exactly one: Dice and IoU are 0.0.
- Volumes are in millilitres: voxel count x voxel volume (mm^3) / 1000.
- Dice = 2 TP / (2 TP + FP + FN) is, for a binary mask, exactly the F1 score of voxel classification
  (harmonic mean of precision and recall); IoU (Jaccard) = TP / (TP + FP + FN) = Dice / (2 - Dice).

Case-level vocabulary (`accuracy_summary`), over classes that include background (value 0), as in the
semantic-segmentation literature (Long et al., FCN): voxel (pixel) accuracy = correctly labelled voxels /
all voxels; mean class accuracy = mean over classes present in the reference of the per-class recall;
mean IoU = mean over classes present in prediction or reference of the per-class IoU. The per-structure
means of Dice and IoU (`overlap_report`'s "mean") are over foreground structures only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from evaluation.scan import Scan, View, scan, views

CASE_CONVENTIONS: dict[str, str] = {
    "dice": "2TP / (2TP + FP + FN): for a binary mask the F1 score of voxel classification",
    "iou": "Jaccard, TP / (TP + FP + FN) = Dice / (2 - Dice)",
    "voxel_accuracy": "correctly labelled voxels / all voxels (pixel accuracy), background included",
    "mean_class_accuracy": "mean over classes present in the reference (background included) of recall",
    "mean_iou": "mean over classes present in prediction or reference (background included) of IoU; "
    "the structures' mean Dice/IoU are over foreground structures only",
}

# Larger label values (a uint16 map with values in the thousands) take the numpy path: the per-thread
# (n, n) histograms of the compiled pass would outgrow the data.
_MAX_KERNEL_LABELS = 2048
_CHUNK_VOXELS = 1 << 18  # numpy path: 256k voxels, the chunk's temporaries stay in cache


def confusion_matrix(prediction: np.ndarray, reference: np.ndarray, n_labels: int) -> np.ndarray:
    """Counts of (predicted label, reference label) pairs.

    Args:
        prediction, reference: integer (or bool) label arrays of the same shape, values in [0, n_labels).
        n_labels: number of label values (max label + 1).

    Returns:
        (n_labels, n_labels) int64 array; entry [p, r] counts voxels predicted p whose reference is r.

    One compiled pass over both arrays, split over the cores (`evaluation.scan`); no temporary the size
    of the data. Arrays of more than 3 dimensions are read flat.
    """
    if prediction.shape != reference.shape:
        raise ValueError(f"shapes differ: prediction {prediction.shape}, reference {reference.shape}")
    return _confusion(prediction, reference, n_labels)[0]


def _confusion(
    prediction: np.ndarray, reference: np.ndarray, n_labels: int, n_box: int = 0
) -> tuple[np.ndarray, Scan | None, View | None, View | None]:
    """`confusion_matrix`, and the scan and views it came from (None: the numpy path, for large n_labels)."""
    if n_labels > _MAX_KERNEL_LABELS:
        return _confusion_numpy(prediction, reference, n_labels), None, None, None
    if prediction.ndim > 3:
        prediction, reference = prediction.reshape(-1), reference.reshape(-1)
    pred, ref = views(prediction, reference)
    found = scan(pred, ref, n_labels, max(n_box, n_labels))
    if found.outside or (prediction.size and found.low < 0):
        raise ValueError(
            f"label values must lie in [0, {n_labels}); got values outside that range "
            f"({found.low}..{found.high})"
        )
    return found.hist, found, pred, ref


def _confusion_numpy(prediction: np.ndarray, reference: np.ndarray, n_labels: int) -> np.ndarray:
    """`confusion_matrix` by np.bincount over chunks of one combined index of the narrowest type."""
    pred = prediction.reshape(-1)
    ref = reference.reshape(-1)
    if pred.size:
        low = min(int(pred.min()), int(ref.min()))
        high = max(int(pred.max()), int(ref.max()))
        if low < 0 or high >= n_labels:
            raise ValueError(
                f"label values must lie in [0, {n_labels}); got values outside that range ({low}..{high})"
            )
    n_bins = n_labels * n_labels
    index_type: np.dtype[Any] = np.dtype(
        np.uint16 if n_bins <= 1 << 16 else np.uint32 if n_bins <= 1 << 32 else np.int64
    )
    counts = np.zeros(n_bins, dtype=np.int64)
    for start in range(0, pred.size, _CHUNK_VOXELS):
        index = pred[start : start + _CHUNK_VOXELS].astype(index_type)
        index *= n_labels
        index += ref[start : start + _CHUNK_VOXELS].astype(index_type)
        counts += np.bincount(index, minlength=n_bins)
    return counts.reshape(n_labels, n_labels)


@dataclass(frozen=True)
class OverlapCounts:
    """Voxel counts for one structure: true positives, predicted voxels, reference voxels."""

    label: int
    tp: int
    n_pred: int
    n_ref: int


def label_confusion(prediction: np.ndarray, reference: np.ndarray, structures: Iterable[int]) -> np.ndarray:
    """`confusion_matrix` sized to hold every value of both arrays and of `structures`."""
    return label_scan(prediction, reference, structures)[0]


def label_scan(
    prediction: np.ndarray, reference: np.ndarray, structures: Iterable[int]
) -> tuple[np.ndarray, Scan | None, View | None, View | None]:
    """`label_confusion`, with the pass's boxes (for every value up to the largest of `structures`) and
    views where the compiled pass made it (None otherwise), so the surface metrics need no second pass."""
    if prediction.shape != reference.shape:
        raise ValueError(f"shapes differ: prediction {prediction.shape}, reference {reference.shape}")
    values = [int(v) for v in structures]
    top = max(values, default=0)
    # uint8 maps: all 256 values fit, one pass; wider types: try the structures' range first
    guess = 256 if prediction.dtype.itemsize == 1 and reference.dtype.itemsize == 1 else top + 1
    guess = max(guess, top + 1)
    try:
        cm, found, pred, ref = _confusion(prediction, reference, guess, top + 1)
    except ValueError:  # a value beyond the guess (a negative one raises again)
        high = max(int(prediction.max(initial=0)), int(reference.max(initial=0)))
        cm, found, pred, ref = _confusion(prediction, reference, max(high, top) + 1, top + 1)
    n = len(cm) if found is None else max(top, found.high, 0) + 1
    return np.ascontiguousarray(cm[:n, :n]), found, pred, ref


def counts_from_confusion(cm: np.ndarray, structures: Iterable[int]) -> list[OverlapCounts]:
    """Counts for each label value in `structures` (each < len(cm)) from a confusion matrix."""
    n_pred = cm.sum(axis=1)
    n_ref = cm.sum(axis=0)
    return [OverlapCounts(v, int(cm[v, v]), int(n_pred[v]), int(n_ref[v])) for v in sorted(structures)]


def overlap_counts(
    prediction: np.ndarray, reference: np.ndarray, structures: Iterable[int]
) -> list[OverlapCounts]:
    """Counts for each label value in `structures`, all from one confusion matrix (one pass over the data)."""
    values = sorted(int(v) for v in structures)
    return counts_from_confusion(label_confusion(prediction, reference, values), values)


def accuracy_summary(cm: np.ndarray, classes: Iterable[int]) -> dict[str, Any]:
    """Voxel accuracy, mean class accuracy and mean IoU of a case (see the module doc), from its confusion
    matrix; `classes` are the label values taken as classes (background 0 included by the callers).

    Voxel accuracy counts every voxel, also those whose values are not in `classes`. Each value is None
    where it is undefined (no voxel; no class present).
    """
    total = int(cm.sum())
    values = sorted(int(v) for v in classes)
    counts = counts_from_confusion(cm, values)
    recalls = [c.tp / c.n_ref for c in counts if c.n_ref > 0]
    ious = [c.tp / (c.n_pred + c.n_ref - c.tp) for c in counts if c.n_pred + c.n_ref > 0]
    return {
        "voxel_accuracy": float(np.trace(cm)) / total if total else None,
        "mean_class_accuracy": float(np.mean(recalls)) if recalls else None,
        "mean_iou": float(np.mean(ious)) if ious else None,
        "n_classes": len(values),
    }


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
    values = sorted(int(v) for v in labels if v > 0)
    return _overlaps_from_confusion(label_confusion(prediction, reference, values), labels, voxel_volume_mm3)


def _overlaps_from_confusion(
    cm: np.ndarray, labels: Mapping[int, str], voxel_volume_mm3: float
) -> list[StructureOverlap]:
    ml_per_voxel = voxel_volume_mm3 / 1000.0
    out: list[StructureOverlap] = []
    for counts in counts_from_confusion(cm, (v for v in labels if v > 0)):
        value, tp, n_pred, n_ref = counts.label, counts.tp, counts.n_pred, counts.n_ref
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
    classes = sorted({0, *(int(v) for v in labels)})
    cm = label_confusion(prediction, reference, classes)  # one pass for the rows and the case
    rows = _overlaps_from_confusion(cm, labels, voxel_volume_mm3)
    case = accuracy_summary(cm, classes)
    dices = [r.dice for r in rows if r.dice is not None]
    ious = [r.iou for r in rows if r.iou is not None]
    return {
        "structures": [asdict(r) for r in rows],
        "mean": {
            "dice": float(np.mean(dices)) if dices else None,
            "iou": float(np.mean(ious)) if ious else None,
            "n_structures": len(dices),
        },
        "case": case,
        "conventions": {
            "empty_in_both": "null, excluded from the mean",
            "empty_in_one": "0.0",
            "volume_unit": "ml",
            **CASE_CONVENTIONS,
        },
    }
