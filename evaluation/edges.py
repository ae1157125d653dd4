"""Edge (surface) voxels of structures as bit masks of their boxes, and the directed distances between them.

`Edges.of` marks the edge voxels of several structures in one pass per side (`kernels.edge_bits`);
`Edges.distances` finds, for each edge voxel, the nearest edge voxel of the other side by visiting its
neighbours in order of distance (`kernels.directed_distances`) within a window of about 3 voxels of the
coarsest axis; the few beyond it go to a k-d tree over the other side's edge voxels, as MONAI's CPU path
does for all of them. Both give the same float64 numbers (tests/evaluation/test_surface.py). Conventions
(what an edge voxel is, distances between voxel centres in mm) are `evaluation.surface`'s.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from evaluation.scan import PARALLEL_VOXELS, View, kernels, run_all, workers

_KDTREE_LEAFSIZE = 32  # MONAI's choice: one batched query per tree


def whole_box(shape: Sequence[int]) -> np.ndarray:
    """(start, stop) along each axis of a box holding the whole array of ``shape``."""
    return np.array([x for n in shape for x in (0, n)], dtype=np.int64)


@dataclass(frozen=True)
class Edges:
    """Edge voxels of one structure in its box (view axes), as bit masks (`evaluation.kernels`)."""

    pred: np.ndarray
    ref: np.ndarray
    n_pred: int
    n_ref: int
    shape: tuple[int, int, int]

    @staticmethod
    def of(pred: View, ref: View, values: Sequence[int], boxes: Sequence[np.ndarray]) -> list[Edges]:
        """Edges of the structures ``values`` in their ``boxes`` (start, stop along the view's axes): one
        pass per side over the union of the boxes, the sides and halves of it on threads."""
        shapes = [(int(b[1] - b[0]), int(b[3] - b[2]), int(b[5] - b[4])) for b in boxes]
        sizes = [z * y * ((x + 7) // 8) for z, y, x in shapes]
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        lut = np.full(max(values) + 1, -1, dtype=np.int64)
        lut[list(values)] = np.arange(len(values))
        box_table = np.ascontiguousarray(np.stack(boxes), dtype=np.int64)
        region = np.empty(6, dtype=np.int64)
        region[0::2], region[1::2] = box_table[:, 0::2].min(axis=0), box_table[:, 1::2].max(axis=0)
        region_voxels = int(np.prod(region[1::2] - region[0::2]))
        parts = 1 if region_voxels < PARALLEL_VOXELS else max(1, workers() // 2)
        cuts = [int(region[0] + (region[1] - region[0]) * i // parts) for i in range(parts + 1)]
        bits = {side: np.zeros(int(starts[-1]), dtype=np.uint8) for side in ("pred", "ref")}

        def run(view: View, side: str, z0: int, z1: int) -> np.ndarray:
            counts = np.zeros(len(values), dtype=np.int64)
            part = region.copy()
            part[0], part[1] = z0, z1
            kernels().edge_bits(view.array, part, lut, box_table, starts, view.active(), bits[side], counts)
            return counts

        calls = [
            functools.partial(run, view, side, cuts[i], cuts[i + 1])
            for view, side in ((pred, "pred"), (ref, "ref"))
            for i in range(parts)
        ]
        counts = run_all(calls) if region_voxels >= PARALLEL_VOXELS else [call() for call in calls]
        n_pred, n_ref = np.sum(counts[:parts], axis=0), np.sum(counts[parts:], axis=0)
        return [
            Edges(
                bits["pred"][starts[k] : starts[k + 1]].reshape(z, y, (x + 7) // 8),
                bits["ref"][starts[k] : starts[k + 1]].reshape(z, y, (x + 7) // 8),
                int(n_pred[k]),
                int(n_ref[k]),
                (z, y, x),
            )
            for k, (z, y, x) in enumerate(shapes)
        ]

    def distances(
        self, spacing: np.ndarray, window_voxels: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Directed distances (mm): prediction -> reference, reference -> prediction (C order of the box).

        ``window_voxels`` bounds the search window (default `_WINDOW_VOXELS`; tests make it small to send
        more voxels to the k-d tree, which must give the same numbers).
        """
        window = _window(
            (float(spacing[0]), float(spacing[1]), float(spacing[2])),
            (
                min(self.shape[0] - 1, _MAX_REACH),
                min(self.shape[1] - 1, _MAX_REACH),
                min(self.shape[2] - 1, _MAX_REACH),
            ),
            _WINDOW_VOXELS if window_voxels is None else window_voxels,
        )
        return (
            _directed(self.pred, self.n_pred, self.ref, self.n_ref, self.shape, spacing, window),
            _directed(self.ref, self.n_ref, self.pred, self.n_pred, self.shape, spacing, window),
        )


# The search window around each edge voxel holds about this many voxels (isotropic: a radius of 10 voxels);
# distances beyond it (a structure that lost or gained a piece) go to a k-d tree, which costs about 90 bytes
# per edge voxel of the other side: a prediction 2 voxels off along every axis (3.5 voxels) stays inside.
_WINDOW_VOXELS = 4000
_MAX_REACH = 1 << 10  # offsets along one axis, at most (keeps the cache keys few)


@functools.lru_cache(maxsize=256)
def _window(
    spacing: tuple[float, float, float], extent: tuple[int, int, int], voxels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (K, 3) int64 of the search window, sorted by their squared length in mm (K,) float64.

    The window is the ball (disc, segment) that holds about ``voxels`` voxels over the axes along which the
    box has room (``extent``: its size - 1 per axis; no offset goes further, as no voxel lies beyond).
    """
    s = np.asarray(spacing)
    axes = [j for j in range(3) if extent[j] > 0]
    if not axes or voxels <= 0:
        return np.zeros((0, 3), dtype=np.int64), np.zeros(0, dtype=np.float64)
    unit_ball = {1: 2.0, 2: math.pi, 3: 4 * math.pi / 3}[len(axes)]
    radius = (voxels * float(np.prod(s[axes])) / unit_ball) ** (1 / len(axes))
    reach = [min(int(radius // s[j]), extent[j]) for j in range(3)]
    grid = np.stack(np.meshgrid(*[np.arange(-k, k + 1) for k in reach], indexing="ij"), axis=-1).reshape(
        -1, 3
    )
    d2 = ((grid * s) ** 2).sum(axis=1)
    keep = (d2 <= radius * radius) & (d2 > 0)
    order = np.argsort(d2[keep], kind="stable")
    return np.ascontiguousarray(grid[keep][order], dtype=np.int64), np.ascontiguousarray(d2[keep][order])


# Points per k-d tree query: their float64 coordinates and the answers exist one piece at a time.
_QUERY_POINTS = 1 << 18


def _directed(
    src: np.ndarray,
    n_src: int,
    dst: np.ndarray,
    n_dst: int,
    shape: tuple[int, int, int],
    spacing: np.ndarray,
    window: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """Distances (mm) of the ``src`` edge voxels to the nearest ``dst`` edge voxel (C order)."""
    offsets, offset_d2 = window
    out = np.empty(n_src, dtype=np.float64)
    shape_a = np.array(shape, dtype=np.int64)
    n_far = kernels().directed_distances(src, dst, shape_a, spacing, offsets, offset_d2, out)
    if n_far:
        # beyond the window: a k-d tree over the dst edge voxels, as MONAI's CPU path
        far = np.flatnonzero(np.isnan(out))
        points = np.empty((n_src, 3), dtype=np.int32)
        kernels().bit_indices(src, shape_a, points)
        points = points[far]
        targets = np.empty((n_dst, 3), dtype=np.int32)
        kernels().bit_indices(dst, shape_a, targets)
        tree = cKDTree(
            (targets + 1.0) * spacing, leafsize=_KDTREE_LEAFSIZE, balanced_tree=False, compact_nodes=False
        )
        del targets
        for start in range(0, len(far), _QUERY_POINTS):
            piece = points[start : start + _QUERY_POINTS]
            out[far[start : start + _QUERY_POINTS]] = tree.query((piece + 1.0) * spacing, k=1)[0]
    return out
