"""The classical engine's working grids (:mod:`models.interactive.classical`): what ``prepare`` keeps
for a click, and the voxel helpers both grids use.

Conventions: voxel indices of the image array (axis order I, J, K); spacing in mm along I, J, K; a working
grid's voxel ``n`` is image voxel ``origin + n * step``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.interactive.prompts import Box, Click

Index3 = tuple[int, int, int]


@dataclass(frozen=True)
class ClassicalPrepared:
    """What a click reuses, on the working grid (the image's grid, or every ``step``-th voxel of it for an
    image over the engine's ``max_voxels``): ``smoothed`` (float32, scaled as
    :mod:`models.interactive.classical` says), ``gradient`` (float32, its gradient magnitude per mm),
    ``spacing_mm`` (of the working grid, along I, J, K); ``image_shape`` is the image's own shape
    (I, J, K)."""

    smoothed: np.ndarray
    gradient: np.ndarray
    spacing_mm: tuple[float, float, float]
    image_shape: Index3
    step: Index3

    @property
    def shape(self) -> Index3:
        i, j, k = self.smoothed.shape
        return (i, j, k)

    @property
    def nbytes(self) -> int:
        return int(self.smoothed.nbytes + self.gradient.nbytes)


@dataclass(frozen=True)
class ClassicalLargePrepared:
    """What a click reuses on a large scan: ``scaled`` (float16, (I, J, K), the image scaled as
    :mod:`models.interactive.classical` says, not smoothed), ``spacing_mm`` (along I, J, K); ``regions``
    keeps the latest ROIs' working grids (at most ``REGION_CACHE`` of ``region_voxels`` voxels each),
    filled by ``segment``."""

    scaled: np.ndarray
    spacing_mm: tuple[float, float, float]
    region_voxels: int
    regions: dict[tuple[Index3, Index3, Index3], Region] = field(default_factory=dict)

    @property
    def image_shape(self) -> Index3:
        i, j, k = self.scaled.shape
        return (i, j, k)

    @property
    def nbytes(self) -> int:
        """The scaled image and the most the ROI cache holds (two float32 arrays per ROI, a margin of one
        working voxel on each side)."""
        return int(self.scaled.nbytes + REGION_CACHE * 2 * 4 * self.region_voxels * 1.1)


@dataclass(frozen=True)
class Region:
    """A seed's ROI on its own grid: ``prepared`` covers the ROI plus one working voxel on each side where
    the image goes on (so the ROI's inner faces are known), ``roi`` is the ROI within it, working voxel
    ``n`` is image voxel ``origin + n * step``."""

    prepared: ClassicalPrepared
    roi: tuple[slice, ...]
    origin: Index3
    step: Index3


REGION_CACHE = 8


def smoothing_sigma(
    smoothing_mm: float, spacing: Sequence[float], step: Sequence[int] | np.ndarray
) -> list[float]:
    """The Gaussian's sigma in voxels per axis: ``smoothing_mm`` (at most 2 voxels), and at least half a
    step, so a grid strided by ``step`` does not alias."""
    return [max(min(smoothing_mm / s, 2.0), 0.5 * (f - 1)) for s, f in zip(spacing, step, strict=True)]


def ball_slices(
    centre: Sequence[int], radius_mm: float, spacing: Sequence[float], shape: Sequence[int]
) -> tuple[slice, ...]:
    """The box around a ball of ``radius_mm`` at ``centre`` (voxel indices), clipped to ``shape``."""
    out = []
    for c, s, n in zip(centre, spacing, shape, strict=True):
        r = int(radius_mm // s)
        out.append(slice(max(c - r, 0), min(c + r + 1, n)))
    return tuple(out)


def working_step(shape: Sequence[int], spacing: Sequence[float], max_voxels: int) -> Index3:
    """Integer strides per axis so the strided grid has at most ``max_voxels``: the finest axis (in mm
    after striding) is coarsened first, so a thick-slice scan keeps its slices."""
    step = [1, 1, 1]
    while int(np.prod([-(-n // f) for n, f in zip(shape, step, strict=True)])) > max_voxels:
        axis = min(range(3), key=lambda a: (spacing[a] * step[a], a))
        step[axis] += 1
    return (step[0], step[1], step[2])


def on_grid(prompt: Click | Box, step: Index3, origin: Index3 = (0, 0, 0)) -> Click | Box:
    """The prompt on a working grid whose voxel ``n`` is image voxel ``origin + n * step``."""
    if isinstance(prompt, Click):
        i, j, k = ((v - o) // f for v, o, f in zip(prompt.point, origin, step, strict=True))
        return Click((i, j, k), prompt.foreground)
    lo = tuple((v - o) // f for v, o, f in zip(prompt.lo, origin, step, strict=True))
    hi = tuple((v - o) // f for v, o, f in zip(prompt.hi, origin, step, strict=True))
    return Box((lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2]))


def index3(values: Sequence[int] | np.ndarray) -> Index3:
    """The first three values as an (I, J, K) tuple of ints."""
    return (int(values[0]), int(values[1]), int(values[2]))


def ball_element(radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """A ball of ``radius_mm`` as a bool structuring element on the voxel grid of ``spacing``."""
    half = [int(radius_mm // s) for s in spacing]
    grid = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    distance2 = sum((g * s) ** 2 for g, s in zip(grid, spacing, strict=True))
    return np.asarray(distance2 <= radius_mm**2)


def inner_faces(roi: tuple[slice, ...], shape: Index3) -> np.ndarray:
    """The ROI's faces that lie inside the image (bool, ROI shape): the image's own edge is no border
    the structure should be kept from."""
    size = [s.stop - s.start for s in roi]
    faces = np.zeros(size, dtype=bool)
    for axis, (s, n) in enumerate(zip(roi, shape, strict=True)):
        where: list[Any] = [slice(None)] * 3
        if s.start > 0:
            where[axis] = 0
            faces[tuple(where)] = True
        if s.stop < n:
            where[axis] = -1
            faces[tuple(where)] = True
    return faces
