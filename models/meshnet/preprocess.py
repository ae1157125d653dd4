"""Intensity normalisation and foreground cropping for MeshNet-style models (numpy only).

Normalisations a card can name (``params["normalisation"]``):

- ``"minmax"``: the volume's minimum -> 0, maximum -> 1.
- ``"quantile:LO,HI"``: the LO and HI quantiles of the non-zero voxels -> 0 and 1 (clipped by default).
- ``"scale:Q,V"``: intensities are only multiplied, so that 0 stays 0 and the Q quantile of the non-zero
  voxels becomes V (not clipped). It anchors the scale on tissue (the non-zero 95th percentile of a T1 is
  close to white matter, with or without skull), not on how much empty field of view surrounds the head.
"""

from __future__ import annotations

import numpy as np


def parse_normalisation(spec: str) -> tuple[str, float, float]:
    """Parse a card's normalisation into (kind, a, b).

    "minmax" -> ("minmax", 0, 1); "quantile:LO,HI" (fractions, 0 <= LO < HI <= 1) -> ("quantile", LO, HI);
    "scale:Q,V" (0 < Q <= 1, V > 0) -> ("scale", Q, V).
    """
    if spec == "minmax":
        return "minmax", 0.0, 1.0
    kind, _, args = spec.partition(":")
    if kind not in ("quantile", "scale"):
        raise ValueError(f"normalisation must be 'minmax', 'quantile:LO,HI' or 'scale:Q,V', got {spec!r}")
    try:
        a_text, b_text = args.split(",")
        a, b = float(a_text), float(b_text)
    except ValueError:
        form = "quantile:LO,HI" if kind == "quantile" else "scale:Q,V"
        raise ValueError(f"normalisation must be '{form}', got {spec!r}") from None
    if kind == "quantile" and not 0.0 <= a < b <= 1.0:
        raise ValueError(f"quantiles must satisfy 0 <= LO < HI <= 1, got {spec!r}")
    if kind == "scale" and not (0.0 < a <= 1.0 and b > 0.0):
        raise ValueError(f"scale needs 0 < Q <= 1 and V > 0, got {spec!r}")
    return kind, a, b


def intensity_range(array: np.ndarray, spec: str) -> tuple[float, float]:
    """The (low, high) intensities that map to 0 and 1.

    "minmax": the volume's minimum and maximum. "quantile:LO,HI": those quantiles of the non-zero voxels
    (zero is the background of skull-stripped and resampled volumes; counting it would put both quantiles
    at 0 for a small brain in a large field of view). "scale:Q,V": low 0, high = (Q quantile of the
    non-zero voxels) / V. (0, 0) when there is no non-zero voxel.
    """
    kind, a, b = parse_normalisation(spec)
    if kind == "minmax":
        return float(array.min()), float(array.max())
    foreground = array[array != 0]
    if foreground.size == 0:
        return 0.0, 0.0
    if kind == "scale":
        return 0.0, float(np.quantile(foreground, a)) / b
    q = np.quantile(foreground, [a, b])
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
