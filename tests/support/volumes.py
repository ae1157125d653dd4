"""Small real inputs cut from the shared scans, written to a test's tmp dir; label-volume helpers for the
model tests (per-label Dice, one-voxel shifts)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from tests.support.paths import DATA

SUBJECT_A = DATA / "mri-brain" / "subject-a"


def brain_crop(tmp: Path, size: int = 48) -> tuple[Path, Path]:
    """A `size`³ block from the middle of subject-a's conformed T1 and its 18-class reference, with the
    affine shifted so that it stays on the same physical positions. Returns (image, reference) paths."""
    img = nib.load(SUBJECT_A / "norm.mgz")
    ref = nib.load(SUBJECT_A / "ref18.nii.gz")
    start = np.array([128 - size // 2] * 3)
    sl = tuple(slice(int(s), int(s) + size) for s in start)
    affine = img.affine.copy()
    affine[:3, 3] = img.affine[:3, :3] @ start + img.affine[:3, 3]
    image_path = tmp / "crop_t1.nii.gz"
    ref_path = tmp / "crop_ref.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[sl].astype(np.uint8), affine), image_path)
    nib.save(nib.Nifti1Image(np.asarray(ref.dataobj)[sl].astype(np.uint8), affine), ref_path)
    return image_path, ref_path


def dice_per_label(pred: np.ndarray, ref: np.ndarray, labels: range) -> dict[int, float]:
    """Dice of each label in ``labels`` (1.0 when empty in both), from one bincount of pred * K + ref."""
    k = max(int(pred.max()), int(ref.max()), max(labels)) + 1
    counts = np.bincount(
        pred.astype(np.int64).ravel() * k + ref.astype(np.int64).ravel(), minlength=k * k
    ).reshape(k, k)
    dice = {}
    for c in labels:
        denom = counts[c, :].sum() + counts[:, c].sum()
        dice[c] = 1.0 if denom == 0 else float(2 * counts[c, c] / denom)
    return dice


def shifted(labels: np.ndarray, axis: int, step: int) -> np.ndarray:
    """``labels`` moved by ``step`` (+1 or -1) voxels along ``axis``, background filling the gap."""
    out = np.zeros_like(labels)
    src, dst = [slice(None)] * 3, [slice(None)] * 3
    src[axis], dst[axis] = (
        (slice(0, -step), slice(step, None)) if step > 0 else (slice(-step, None), slice(0, step))
    )
    out[tuple(dst)] = labels[tuple(src)]
    return out
