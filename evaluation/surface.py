"""Surface-distance metrics per structure: Hausdorff (max), HD95, ASSD and normalised surface Dice (NSD).

All distances are in mm, with anisotropic voxel spacing (`spacing_mm`, one value per array axis) applied to
every coordinate. Label arrays are never one-hot encoded: each structure is worked on in its bounding box
(the union of its boxes in prediction and reference); all boxes come from one pass over both arrays
(`evaluation.scan`). Compiled loops (`evaluation.edges`, `evaluation.kernels`) mark the edge voxels of
each side in a bit mask of the box (1 bit per voxel: no mask, coordinate list or distance map the size of
the box), then find for each edge voxel the nearest edge voxel of the other side by looking at its
neighbours in order of distance, within a window of about 3 voxels of the coarsest axis; the few beyond it
are answered by a k-d tree over the other side's edge voxels. Every directed distance comes from one such
search, and HD, HD95, ASSD and NSD all from those. Structures run in parallel, one per thread.

Conventions: MONAI's (`monai.metrics`, 1.6, CPU path, `use_subvoxels=False`), so values can be checked
against `HausdorffDistanceMetric`, `SurfaceDistanceMetric(symmetric=True)` and `SurfaceDiceMetric`:
- Surface ("edge") voxels: the voxels of the mask that its binary erosion with the face-connected cross
  (scipy's default structure) removes, with everything outside the array counted as background. This is
  `get_mask_edges(..., spacing=None)`: `binary_erosion(mask) ^ mask` on the box cropped with margin 1.
- Directed distances: for each edge voxel of A, the Euclidean distance (mm) from its centre to the nearest
  edge-voxel centre of B, computed from coordinates (index + 1) x spacing exactly as a k-d tree over them
  (MONAI's CPU path) computes it, so the float64 values are the same. Edge
  voxels that lie on both surfaces have distance 0 and are not queried.
- HD = max of both directed maxima. HD95 = max of the two directed 95th percentiles (linear interpolation,
  as `torch.quantile`), i.e. MONAI `HausdorffDistanceMetric(percentile=95)`.
- ASSD = mean of all directed distances of both directions pooled: (sum d(P->R) + sum d(R->P)) /
  (|edge P| + |edge R|), as `compute_average_surface_distance(symmetric=True)`.
- NSD at tolerance t (mm) = (#{d(P->R) <= t} + #{d(R->P) <= t}) / (|edge P| + |edge R|): edge voxels are
  counted, not weighted by area, as `compute_surface_dice(use_subvoxels=False)`.

Where we differ from MONAI, and why:
- Distances stay float64; MONAI rounds them to float32 before taking maxima, percentiles and means, so
  HD, HD95 and ASSD agree to float32 rounding (about 1e-7 relative). MONAI's NSD quotient is float32.
- NSD counts d <= t * (1 + 1e-6): a distance that equals the tolerance on paper (3 x 0.79 mm against
  t = 2.37 mm) can come out of float64 arithmetic one ulp above it. MONAI's float32 rounding hides this by
  accident; the slack makes it deliberate. Only distances within 1e-6 relative of t are affected.
- Empty structures: MONAI returns inf (HD, ASSD) or nan, and warns. We return None (JSON null): see below.
- Tolerances must be > 0 mm (MONAI accepts 0).

Not the conventions of DeepMind's `surface-distance` (weights each surface element by its area and uses
sub-voxel surface elements between voxel centres) nor of `seg-metrics` (pools both directions into one
percentile for HD95): their values differ from ours, by tens of mm for HD95 when a structure loses a piece.

Empty policy (nnU-Net's, extended to distances):
- Empty in both prediction and reference: every value is None; the structure is left out of means.
- Empty in exactly one: HD, HD95 and ASSD are None (no surface to measure to); NSD is 0.0 (no boundary is
  within tolerance of a missing one; MONAI also gives 0).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from evaluation.edges import Edges, whole_box
from evaluation.scan import PARALLEL_VOXELS, Scan, View, run_all, scan, views

DEFAULT_TOLERANCE_MM = 1.0
"""NSD tolerance when none is given for a structure: 1 mm, as in the FLARE challenges. On 1 mm data this
forgives a one-voxel, face-neighbour boundary shift; on coarser grids give per-structure tolerances."""

NSD_RELATIVE_SLACK = 1e-6


@dataclass(frozen=True)
class SurfaceMetrics:
    """Surface metrics of one structure (mm, except NSD in [0, 1]); None where undefined (see module doc)."""

    hd_mm: float | None
    hd95_mm: float | None
    assd_mm: float | None
    nsd: float | None
    tolerance_mm: float
    n_edge_pred: int
    n_edge_ref: int


def check_spacing(spacing_mm: Sequence[float], ndim: int) -> tuple[float, ...]:
    """Spacing as a tuple of floats, one positive finite value per axis, or a ValueError naming the value."""
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != ndim:
        raise ValueError(f"spacing_mm needs {ndim} values, one per axis, got {spacing}")
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing_mm values must be finite and > 0 mm, got {spacing}")
    return spacing


def check_tolerance(tolerance_mm: float) -> float:
    t = float(tolerance_mm)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"tolerance must be > 0 mm, got {tolerance_mm}")
    return t


def bounding_boxes(
    prediction: np.ndarray, reference: np.ndarray, structures: Iterable[int]
) -> dict[int, tuple[slice, ...] | None]:
    """Union bounding box (prediction | reference) of each label value; None where empty in both.

    One pass over both arrays for all labels together (`evaluation.scan`).
    """
    values = sorted(int(v) for v in structures)
    if not values:
        return {}
    if values[0] < 1:
        raise ValueError(f"structure label values must be > 0, got {values}")
    pred, ref = views(prediction, reference)
    found = scan(pred, ref, 0, values[-1] + 1)
    out: dict[int, tuple[slice, ...] | None] = {}
    for v in values:
        box = found.union_box(v)
        out[v] = None if box is None else pred.box_to_array(box)
    return out


def edge_mask(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a boolean mask: those removed by a face-connected erosion, outside = background.

    Equal to MONAI's `get_mask_edges(..., spacing=None)` and to `binary_erosion(mask) ^ mask`, in slices.
    The metrics mark the same voxels in compiled loops (`evaluation.edges`); this numpy version is the
    reference the tests hold them to.
    """
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1)
    interior = mask.copy()
    for axis in range(mask.ndim):
        for start in (0, 2):
            index = [slice(1, -1)] * mask.ndim
            index[axis] = slice(start, start + mask.shape[axis])
            interior &= padded[tuple(index)]
    return mask & ~interior


def surface_distances(
    pred_mask: np.ndarray, ref_mask: np.ndarray, spacing_mm: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances (mm, float64): prediction edge -> reference edge, and the reverse.

    Both masks must be non-empty boolean arrays of one shape, 1 to 3 dimensions (crop them first: only
    their box matters). One value per edge voxel, in C order of the (memory-ordered) array; 0 for edge
    voxels on both surfaces.
    """
    pred, ref = views(np.asarray(pred_mask, dtype=bool), np.asarray(ref_mask, dtype=bool))
    spacing = pred.spacing(check_spacing(spacing_mm, pred_mask.ndim))
    edges = Edges.of(pred, ref, [1], [whole_box(pred.array.shape)])[0]
    if not edges.n_pred or not edges.n_ref:
        raise ValueError("surface_distances needs both masks non-empty")
    return edges.distances(spacing)


def summarise(d_pr: np.ndarray, d_rp: np.ndarray, tolerance_mm: float) -> SurfaceMetrics:
    """HD, HD95, ASSD and NSD from the two directed distance arrays (both non-empty)."""
    t = check_tolerance(tolerance_mm)
    n = d_pr.size + d_rp.size
    within = np.count_nonzero(d_pr <= t * (1 + NSD_RELATIVE_SLACK)) + np.count_nonzero(
        d_rp <= t * (1 + NSD_RELATIVE_SLACK)
    )
    return SurfaceMetrics(
        hd_mm=float(max(d_pr.max(), d_rp.max())),
        hd95_mm=max(percentile(d_pr, 95), percentile(d_rp, 95)),
        assd_mm=float((d_pr.sum() + d_rp.sum()) / n),
        nsd=float(within / n),
        tolerance_mm=t,
        n_edge_pred=int(d_pr.size),
        n_edge_ref=int(d_rp.size),
    )


def percentile(values: np.ndarray, q: float) -> float:
    """`np.percentile(values, q)` (linear interpolation, the same float64 number) of a non-empty 1D array,
    by one partial sort: np.percentile's own bookkeeping costs more than the sort on small arrays."""
    h = (values.size - 1) * (q / 100)
    low = math.floor(h)
    high = min(low + 1, values.size - 1)
    part = np.partition(values, [low, high] if high > low else [low])
    a, b = float(part[low]), float(part[high])
    t = h - low
    # numpy's _lerp: from the nearer end, so that t = 1 gives b exactly
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t


def structure_surface_metrics(
    prediction: np.ndarray,
    reference: np.ndarray,
    structures: Iterable[int],
    spacing_mm: Sequence[float],
    tolerances_mm: Mapping[int, float] | None = None,
    *,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
) -> dict[int, SurfaceMetrics]:
    """Surface metrics for each label value in `structures` (> 0) of two label arrays of one shape
    (1 to 3 dimensions).

    `tolerances_mm[label]` overrides `tolerance_mm` for NSD. Each structure is computed on its union
    bounding box only; structures run in parallel on `evaluation.scan.workers()` threads.
    """
    pred, ref = views(prediction, reference)
    spacing = check_spacing(spacing_mm, prediction.ndim)
    values = sorted(int(v) for v in structures)
    if values and values[0] < 1:
        raise ValueError(f"structure label values must be > 0, got {values}")
    found = scan(pred, ref, 0, values[-1] + 1 if values else 0)
    return surface_metrics_from_scan(
        pred, ref, found, values, spacing, tolerances_mm, tolerance_mm=tolerance_mm
    )


def surface_metrics_from_scan(
    pred: View,
    ref: View,
    found: Scan,
    structures: Iterable[int],
    spacing_mm: Sequence[float],
    tolerances_mm: Mapping[int, float] | None = None,
    *,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
) -> dict[int, SurfaceMetrics]:
    """`structure_surface_metrics` with the boxes of a `scan` already made (each value < its box count)."""
    spacing = pred.spacing(check_spacing(spacing_mm, sum(a >= 0 for a in pred.axes)))
    default_t = check_tolerance(tolerance_mm)
    tolerances = {int(k): check_tolerance(v) for k, v in (tolerances_mm or {}).items()}
    values = sorted(int(v) for v in structures)
    out: dict[int, SurfaceMetrics] = {}
    tasks: list[tuple[int, np.ndarray]] = []
    for value in values:
        box = found.union_box(value)
        if box is None:
            out[value] = SurfaceMetrics(None, None, None, None, tolerances.get(value, default_t), 0, 0)
        else:
            tasks.append((value, box))
    tasks.sort(key=lambda task: -_box_bytes(task[1]))  # largest first: the threads end together
    budget = max(_EDGE_BYTES_MIN, pred.array.size // _EDGE_BYTES_PER_VOXEL)
    for batch in _batches(tasks, budget):
        edges = Edges.of(pred, ref, [v for v, _ in batch], [box for _, box in batch])
        calls = [
            functools.partial(_summary, e, spacing, tolerances.get(v, default_t))
            for (v, _), e in zip(batch, edges, strict=True)
        ]
        box_voxels = sum(int(np.prod(box[1::2] - box[0::2])) for _, box in batch)
        results = run_all(calls) if box_voxels >= PARALLEL_VOXELS else [call() for call in calls]
        out.update({v: r for (v, _), r in zip(batch, results, strict=True)})
        del edges
    return {value: out[value] for value in values}


# The edge masks of the structures worked on together hold at most 1 byte per this many voxels of the
# array per side (the bits of 4 whole-array boxes), or _EDGE_BYTES_MIN: more structures, further passes.
_EDGE_BYTES_PER_VOXEL = 2
_EDGE_BYTES_MIN = 1 << 20


def _box_bytes(box: np.ndarray) -> int:
    return int((box[1] - box[0]) * (box[3] - box[2]) * ((box[5] - box[4] + 7) // 8))


def _batches(tasks: list[tuple[int, np.ndarray]], budget: int) -> list[list[tuple[int, np.ndarray]]]:
    """``tasks`` in consecutive groups whose edge masks fit ``budget`` bytes (a larger one alone)."""
    out: list[list[tuple[int, np.ndarray]]] = []
    used = budget
    for task in tasks:
        size = _box_bytes(task[1])
        if used + size > budget:
            out.append([])
            used = 0
        out[-1].append(task)
        used += size
    return out


def _summary(edges: Edges, spacing: np.ndarray, tolerance_mm: float) -> SurfaceMetrics:
    if not edges.n_pred or not edges.n_ref:  # a non-empty mask always has an edge voxel
        return SurfaceMetrics(None, None, None, 0.0, tolerance_mm, edges.n_pred, edges.n_ref)
    d_pr, d_rp = edges.distances(spacing)
    return summarise(d_pr, d_rp, tolerance_mm)
