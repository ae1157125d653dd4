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
    edges_pred, edges_ref = edge_mask(pred_mask), edge_mask(ref_mask)
    if not edges_pred.any() or not edges_ref.any():
        raise ValueError("surface_distances needs both masks non-empty")
    # Coordinates relative to one voxel before the box, as MONAI's margin-1 crop has them, so that the
    # float64 products (index x spacing) are the very numbers MONAI feeds its k-d tree.
    pts_pred = (np.argwhere(edges_pred) + 1.0) * spacing
    pts_ref = (np.argwhere(edges_ref) + 1.0) * spacing
    # Boolean indexing and argwhere both run in C order, so these flags line up with the points.
    pred_only = ~edges_ref[edges_pred]
    ref_only = ~edges_pred[edges_ref]
    n_shared = int(pred_only.size - np.count_nonzero(pred_only))
    only_pred, only_ref = pts_pred[pred_only], pts_ref[ref_only]
    d_pr = _nearest(only_pred, pts_ref)
    d_rp = _nearest(only_ref, pts_pred)
    zeros = np.zeros(n_shared)
    return np.concatenate((zeros, d_pr)), np.concatenate((zeros, d_rp))


def _nearest(points: np.ndarray, targets: np.ndarray) -> np.ndarray:
    if len(points) == 0:
        return np.zeros(0)
    # An unbalanced, non-compacted tree builds faster; one batched query does not repay a tidier tree.
    tree = cKDTree(targets, leafsize=_KDTREE_LEAFSIZE, balanced_tree=False, compact_nodes=False)
    distances, _ = tree.query(points, k=1)
    return np.asarray(distances, dtype=np.float64)


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
        pred_mask = prediction[box] == value
        ref_mask = reference[box] == value
        if not pred_mask.any() or not ref_mask.any():
            n_pred = int(np.count_nonzero(edge_mask(pred_mask)))
            n_ref = int(np.count_nonzero(edge_mask(ref_mask)))
            out[value] = SurfaceMetrics(None, None, None, 0.0, t, n_pred, n_ref)
            continue
        d_pr, d_rp = surface_distances(pred_mask, ref_mask, spacing)
        out[value] = summarise(d_pr, d_rp, t)
    return out
