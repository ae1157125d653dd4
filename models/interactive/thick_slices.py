"""Helpers for scans with thick slices (clinical MR and CT at 5-6.5 mm between 0.5-1 mm pixels), where the
classical engine treats a slice step differently from an in-plane one.

Conventions: masks are bool arrays on one voxel grid (axis order I, J, K); spacing in mm along I, J, K.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def thick_axes(spacing_mm: Sequence[float], cap: float) -> list[bool]:
    """Per axis: whether its spacing is over ``cap`` times the finest one (a thick-slice axis); none
    when ``cap`` is not positive."""
    finest = min(spacing_mm)
    return [cap > 0 and s > cap * finest for s in spacing_mm]


def fill_small_holes_on_slices(
    mask: np.ndarray,
    spacing_mm: Sequence[float],
    thick: Sequence[bool],
    max_area_mm2: float,
    keep_open: np.ndarray,
) -> np.ndarray:
    """``mask`` with the holes of each slice across a thick axis filled when their area is at most
    ``max_area_mm2`` (bool, same shape; ``mask`` is not changed).

    A hole is a 2D component of the slice's background enclosed by the mask (scipy's
    ``binary_fill_holes`` on the slice). In 3D the same hole is often open through the next slice, 6.5 mm
    away, so the engine's 3D hole filling leaves it. Hole voxels connected across slices (3D, face
    connectivity) to a voxel of ``keep_open`` (bool, same shape: the background clicks) stay open: a
    background click is never filled over, on its own slice or the next."""
    holes = np.zeros(mask.shape, dtype=bool)
    for axis, is_thick in enumerate(thick):
        if not is_thick:
            continue
        pixel_mm2 = float(np.prod([s for a, s in enumerate(spacing_mm) if a != axis]))
        for index in np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis))):
            where: list[slice | int] = [slice(None)] * mask.ndim
            where[axis] = int(index)
            plane = mask[tuple(where)]
            enclosed = ndimage.binary_fill_holes(plane) & ~plane
            labels, count = ndimage.label(enclosed)
            if count == 0:
                continue
            small = np.bincount(labels.ravel()) * pixel_mm2 <= max_area_mm2
            small[0] = False
            holes[tuple(where)] |= small[labels]
    if keep_open.any() and holes.any():
        labels, _ = ndimage.label(holes)
        reached = np.unique(labels[keep_open])
        holes &= ~np.isin(labels, reached[reached > 0])
    return mask | holes
