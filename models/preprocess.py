"""Intensity normalisation and foreground cropping for MeshNet-style models (numpy only)."""

from __future__ import annotations

import numpy as np


def parse_normalisation(spec: str) -> tuple[str, float, float]:
    """Parse a card's normalisation: "minmax" or "quantile:LO,HI" (fractions, 0 <= LO < HI <= 1)."""
    if spec == "minmax":
        return "minmax", 0.0, 1.0
    if spec.startswith("quantile:"):
        try:
            lo_text, hi_text = spec.removeprefix("quantile:").split(",")
            lo, hi = float(lo_text), float(hi_text)
        except ValueError:
            raise ValueError(f"normalisation must be 'quantile:LO,HI', got {spec!r}") from None
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"quantiles must satisfy 0 <= LO < HI <= 1, got {spec!r}")
        return "quantile", lo, hi
    raise ValueError(f"normalisation must be 'minmax' or 'quantile:LO,HI', got {spec!r}")


def intensity_range(array: np.ndarray, spec: str) -> tuple[float, float]:
    """The (low, high) intensities that map to 0 and 1.

    "minmax": the volume's minimum and maximum. "quantile:LO,HI": those quantiles of the non-zero voxels
    (zero is the background of skull-stripped and resampled volumes; counting it would put both quantiles
    at 0 for a small brain in a large field of view).
    """
    kind, lo, hi = parse_normalisation(spec)
    if kind == "minmax":
        return float(array.min()), float(array.max())
    foreground = array[array != 0]
    if foreground.size == 0:
        return 0.0, 0.0
    q = np.quantile(foreground, [lo, hi])
    return float(q[0]), float(q[1])


def normalise(array: np.ndarray, low: float, high: float, clip: bool) -> np.ndarray:
    """Scale float32 intensities so that ``low`` -> 0 and ``high`` -> 1 (optionally clipped to [0, 1])."""
    if high <= low:
        return np.zeros(array.shape, dtype=np.float32)
    out = (np.asarray(array, dtype=np.float32) - np.float32(low)) / np.float32(high - low)
    if clip:
        np.clip(out, 0.0, 1.0, out=out)
    return out


def foreground_box(array: np.ndarray, margin: int) -> tuple[slice, slice, slice] | None:
    """Bounding box of the non-zero voxels grown by ``margin`` voxels (clamped); None if all zero."""
    slices = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(np.any(array != 0, axis=others))
        if present.size == 0:
            return None
        start = max(int(present[0]) - margin, 0)
        stop = min(int(present[-1]) + margin + 1, array.shape[axis])
        slices.append(slice(start, stop))
    return slices[0], slices[1], slices[2]
