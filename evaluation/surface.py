"""Surface-distance metrics per structure: Hausdorff (max), HD95, ASSD and normalised surface Dice (NSD).

All distances are in mm, with anisotropic voxel spacing (`spacing_mm`, one value per array axis) applied to
every coordinate. Label arrays are never one-hot encoded: each structure is cut out of its bounding box (the
union of its boxes in prediction and reference) and padded by one background voxel for the erosion; all
boxes come from one `scipy.ndimage.find_objects` pass per array. Distances come from a k-d tree over the
edge voxels of the box (faster than a distance transform of the box: edges are a small fraction of it).

Conventions: MONAI's (`monai.metrics`, 1.6, CPU path, `use_subvoxels=False`), so values can be checked
against `HausdorffDistanceMetric`, `SurfaceDistanceMetric(symmetric=True)` and `SurfaceDiceMetric`:
- Surface ("edge") voxels: the voxels of the mask that its binary erosion with the face-connected cross
  (scipy's default structure) removes, with everything outside the array counted as background. This is
  `get_mask_edges(..., spacing=None)`: `binary_erosion(mask) ^ mask` on the box cropped with margin 1.
- Directed distances: for each edge voxel of A, the Euclidean distance (mm) from its centre to the nearest
  edge-voxel centre of B (a k-d tree over edge coordinates times spacing, like MONAI's CPU path). Edge
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

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

DEFAULT_TOLERANCE_MM = 1.0
"""NSD tolerance when none is given for a structure: 1 mm, as in the FLARE challenges. On 1 mm data this
forgives a one-voxel, face-neighbour boundary shift; on coarser grids give per-structure tolerances."""

NSD_RELATIVE_SLACK = 1e-6
_KDTREE_LEAFSIZE = 32  # MONAI's choice: one batched query per tree


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

    One `find_objects` pass per array for all labels together.
    """
    values = sorted(int(v) for v in structures)
    if not values:
        return {}
    top = max(values)
    if top < 1:
        raise ValueError(f"structure label values must be > 0, got {values}")
    boxes_pred = ndimage.find_objects(_as_labels(prediction), max_label=top)
    boxes_ref = ndimage.find_objects(_as_labels(reference), max_label=top)
    out: dict[int, tuple[slice, ...] | None] = {}
    for v in values:
        a, b = boxes_pred[v - 1], boxes_ref[v - 1]
        if a is None or b is None:
            out[v] = a if b is None else b
        else:
            out[v] = tuple(
                slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True)
            )
    return out


def _as_labels(array: np.ndarray) -> np.ndarray:
    # find_objects wants an integer array; bool masks are label 1.
    return array.view(np.uint8) if array.dtype == np.bool_ else array


def edge_mask(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a boolean mask: those removed by a face-connected erosion, outside = background.

    Equal to MONAI's `get_mask_edges(..., spacing=None)` and to `binary_erosion(mask) ^ mask`, in slices.
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

    Both masks must be non-empty boolean arrays of one shape (crop them first: only their box matters).
    Edge voxels shared by both surfaces come first, with distance 0.
    """
    if pred_mask.shape != ref_mask.shape:
        raise ValueError(f"shapes differ: prediction {pred_mask.shape}, reference {ref_mask.shape}")
    spacing = np.asarray(check_spacing(spacing_mm, pred_mask.ndim), dtype=np.float64)
    edges = _EdgePoints.of(edge_mask(pred_mask), edge_mask(ref_mask))
    if not len(edges.pred) or not len(edges.ref):
        raise ValueError("surface_distances needs both masks non-empty")
    return edges.distances(spacing)


@dataclass(frozen=True)
class _EdgePoints:
    """Edge-voxel indices of prediction and reference (C order) and whether each is on one side only.

    Indices are kept as int32 (not float64 coordinates) until the distances need them.
    """

    pred: np.ndarray  # (N, ndim) int32
    ref: np.ndarray  # (M, ndim) int32
    pred_only: np.ndarray  # (N,) bool: not also a reference edge voxel
    ref_only: np.ndarray  # (M,) bool

    @staticmethod
    def of(edges_pred: np.ndarray, edges_ref: np.ndarray, offset: int = 0) -> _EdgePoints:
        """From two edge masks of one shape; ``offset`` is added to the first index (a slab's start)."""
        pred = np.argwhere(edges_pred).astype(np.int32)
        ref = np.argwhere(edges_ref).astype(np.int32)
        pred[:, 0] += offset
        ref[:, 0] += offset
        # Boolean indexing and argwhere both run in C order, so these flags line up with the points.
        return _EdgePoints(pred, ref, ~edges_ref[edges_pred], ~edges_pred[edges_ref])

    @staticmethod
    def join(parts: list[_EdgePoints], ndim: int) -> _EdgePoints:
        empty = np.zeros((0, ndim), dtype=np.int32)
        return _EdgePoints(
            np.concatenate([p.pred for p in parts]) if parts else empty,
            np.concatenate([p.ref for p in parts]) if parts else empty,
            np.concatenate([p.pred_only for p in parts]) if parts else np.zeros(0, dtype=bool),
            np.concatenate([p.ref_only for p in parts]) if parts else np.zeros(0, dtype=bool),
        )

    def distances(self, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Directed distances (mm), shared edge voxels first with 0 (see :func:`surface_distances`)."""
        return (
            _nearest(self.pred, self.pred_only, self.ref, spacing),
            _nearest(self.ref, self.ref_only, self.pred, spacing),
        )


# Structures are cut into slabs of about this many voxels along their box's first axis, so the masks of
# one slab exist at a time (a whole-box mask of a body-sized structure is as large as the label map).
_SLAB_VOXELS = 1 << 22


def _edges_in_slabs(
    prediction: np.ndarray,
    reference: np.ndarray,
    box: tuple[slice, ...],
    value: int,
    slab_voxels: int = _SLAB_VOXELS,
) -> _EdgePoints:
    """Edge voxels of structure ``value`` within ``box`` (indices relative to the box), slab by slab.

    Equal to ``edge_mask(prediction[box] == value)`` and the same for the reference, taken whole: each slab
    is read with one row more on each side (where the box has one), so every voxel sees its 6 neighbours;
    outside the box is background either way, as the structure does not reach past its box.
    """
    pred_box, ref_box = prediction[box], reference[box]
    rows = pred_box.shape[0]
    step = max(1, slab_voxels // max(1, int(np.prod(pred_box.shape[1:]))))
    parts: list[_EdgePoints] = []
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        low, high = max(0, start - 1), min(rows, stop + 1)
        inner = slice(start - low, stop - low)
        edges_pred = edge_mask(pred_box[low:high] == value)[inner]
        edges_ref = edge_mask(ref_box[low:high] == value)[inner]
        parts.append(_EdgePoints.of(edges_pred, edges_ref, start))
        del edges_pred, edges_ref
    return _EdgePoints.join(parts, prediction.ndim)


# Points per k-d tree query: their float64 coordinates and the answers exist one piece at a time.
_QUERY_POINTS = 1 << 18


def _nearest(points: np.ndarray, wanted: np.ndarray, targets: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distances (mm, float64) of the ``wanted`` points to their nearest target, after one 0 per point not
    wanted (those on both surfaces). Points and targets are voxel indices (int, (N, ndim)).

    Coordinates are (index + 1) x spacing: relative to one voxel before the box, as MONAI's margin-1 crop has
    them, so that the float64 products are the very numbers MONAI feeds its k-d tree. Each query point is
    answered on its own, so querying in pieces gives the same distances as one batch.
    """
    n_wanted = int(np.count_nonzero(wanted))
    out = np.zeros(len(points) - n_wanted + n_wanted, dtype=np.float64)
    if n_wanted == 0:
        return out
    # An unbalanced, non-compacted tree builds faster; one batched query does not repay a tidier tree.
    tree = cKDTree(
        (targets + 1.0) * spacing, leafsize=_KDTREE_LEAFSIZE, balanced_tree=False, compact_nodes=False
    )
    at = len(points) - n_wanted
    for start in range(0, len(points), _QUERY_POINTS):
        piece = points[start : start + _QUERY_POINTS][wanted[start : start + _QUERY_POINTS]]
        if len(piece):
            out[at : at + len(piece)] = tree.query((piece + 1.0) * spacing, k=1)[0]
            at += len(piece)
    return out


def summarise(d_pr: np.ndarray, d_rp: np.ndarray, tolerance_mm: float) -> SurfaceMetrics:
    """HD, HD95, ASSD and NSD from the two directed distance arrays (both non-empty)."""
    t = check_tolerance(tolerance_mm)
    n = d_pr.size + d_rp.size
    within = np.count_nonzero(d_pr <= t * (1 + NSD_RELATIVE_SLACK)) + np.count_nonzero(
        d_rp <= t * (1 + NSD_RELATIVE_SLACK)
    )
    return SurfaceMetrics(
        hd_mm=float(max(d_pr.max(), d_rp.max())),
        hd95_mm=float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))),
        assd_mm=float((d_pr.sum() + d_rp.sum()) / n),
        nsd=float(within / n),
        tolerance_mm=t,
        n_edge_pred=int(d_pr.size),
        n_edge_ref=int(d_rp.size),
    )


def structure_surface_metrics(
    prediction: np.ndarray,
    reference: np.ndarray,
    structures: Iterable[int],
    spacing_mm: Sequence[float],
    tolerances_mm: Mapping[int, float] | None = None,
    *,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
) -> dict[int, SurfaceMetrics]:
    """Surface metrics for each label value in `structures` (> 0) of two label arrays of one shape.

    `tolerances_mm[label]` overrides `tolerance_mm` for NSD. Each structure is computed on its union
    bounding box only.
    """
    if prediction.shape != reference.shape:
        raise ValueError(f"shapes differ: prediction {prediction.shape}, reference {reference.shape}")
    spacing = check_spacing(spacing_mm, prediction.ndim)
    default_t = check_tolerance(tolerance_mm)
    tolerances = {int(k): check_tolerance(v) for k, v in (tolerances_mm or {}).items()}
    values = sorted(int(v) for v in structures)
    out: dict[int, SurfaceMetrics] = {}
    for value, box in bounding_boxes(prediction, reference, values).items():
        t = tolerances.get(value, default_t)
        if box is None:
            out[value] = SurfaceMetrics(None, None, None, None, t, 0, 0)
            continue
        edges = _edges_in_slabs(prediction, reference, box, value)
        if not len(edges.pred) or not len(edges.ref):  # a non-empty mask always has an edge voxel
            out[value] = SurfaceMetrics(None, None, None, 0.0, t, len(edges.pred), len(edges.ref))
            continue
        d_pr, d_rp = edges.distances(np.asarray(spacing, dtype=np.float64))
        del edges
        out[value] = summarise(d_pr, d_rp, t)
    return out
