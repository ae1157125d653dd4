"""Lesion instances: connected components of abnormality labels, each measured.

Conventions:
- Connectivity: 26-neighbourhood in 3D (faces, edges and corners; 8 in 2D), i.e.
  `scipy.ndimage.generate_binary_structure(ndim, ndim)`. This is `cc3d`'s default and the connectivity of the
  BraTS 2023 lesion-wise evaluation and of panoptica, so lesion counts agree with theirs.
- Each lesion label is split into components on its own: two touching lesions of different labels are two
  instances. Instance ids run 1..N over all lesion labels, ordered by label value, then by decreasing volume
  (ties: the component whose first voxel comes first in C order): lesion 1 is the first label's largest.
- Geometry comes from the volume's RAS+ affine (voxel index -> mm, the project's `Volume.affine`).
  Centroids are reported in DICOM patient coordinates (LPS: x and y of RAS negated), in mm.
- Volume: voxel count x |det(affine[:3, :3])| / 1000 (ml).
- Bounding box: voxel index ranges, `start` inclusive and `stop` exclusive per array axis.
- Diameters (RECIST 1.1 style, on axial slices): the axial array axis is the one whose affine column points
  most along superior-inferior. On every axial slice of the lesion the long axis is the greatest distance
  between two voxel centres of the lesion on that slice (mm, in-plane spacing applied); the lesion's long
  axis is the greatest over its slices, and its short axis is the lesion's extent on that same slice
  perpendicular to the long axis (distance between the two outermost voxel centres along that direction).
  Distances are centre-to-centre: a lesion one voxel wide has a 0 mm axis, a hand measurement from edge to
  edge reads about one voxel more.
- Intensity: mean and max of the scan inside the instance, in the scan's units (HU for CT); None without one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])


def connectivity_structure(ndim: int) -> np.ndarray:
    """The full (26-neighbour in 3D) structuring element used for every connected-component labelling."""
    return ndimage.generate_binary_structure(ndim, ndim)


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of a boolean mask: (int32 labels 1..n in scipy's C-order numbering, n)."""
    labels, n = ndimage.label(np.asarray(mask, dtype=bool), structure=connectivity_structure(mask.ndim))
    return labels.astype(np.int32, copy=False), int(n)


def box_centroids(components: np.ndarray, boxes: list[tuple[slice, ...] | None]) -> np.ndarray:
    """(n, ndim) centroids (mean voxel index) of components 1..n, each computed inside its own box only.

    Equal to `ndimage.center_of_mass(components > 0, components, 1..n)`, without its passes over the whole
    array (which dominate on large volumes with many small lesions).
    """
    out = np.zeros((len(boxes), components.ndim))
    for i, box in enumerate(boxes):
        if box is None:
            out[i] = np.nan
            continue
        own = np.argwhere(components[box] == i + 1)
        out[i] = own.mean(axis=0) + [s.start for s in box]
    return out


def box_sizes(components: np.ndarray, boxes: list[tuple[slice, ...] | None]) -> np.ndarray:
    """Voxel counts of components 0..n (index 0, background, is 0), each counted inside its own box."""
    sizes = [0 if b is None else np.count_nonzero(components[b] == i + 1) for i, b in enumerate(boxes)]
    return np.array([0, *sizes], dtype=np.int64)


@dataclass(frozen=True)
class Lesion:
    """One lesion instance (see module doc for units and conventions)."""

    id: int
    label: int
    name: str
    n_voxels: int
    volume_ml: float
    centroid_lps_mm: tuple[float, float, float]
    centroid_voxel: tuple[float, float, float]
    bbox_start: tuple[int, ...]
    bbox_stop: tuple[int, ...]
    long_axis_mm: float
    short_axis_mm: float
    axial_slice: int
    intensity_mean: float | None
    intensity_max: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def axial_axis(affine: np.ndarray) -> int:
    """The array axis whose direction (affine column) is closest to superior-inferior."""
    directions = np.asarray(affine, dtype=np.float64)[:3, :3]
    unit = directions / np.linalg.norm(directions, axis=0)
    return int(np.argmax(np.abs(unit[2])))


def _plane_coordinates(points_ab: np.ndarray, col_a: np.ndarray, col_b: np.ndarray) -> np.ndarray:
    """(n, 2) in-plane voxel indices -> (n, 2) mm coordinates in an orthonormal basis of the slice plane."""
    u = col_a / np.linalg.norm(col_a)
    b_perp = col_b - (col_b @ u) * u
    v = b_perp / np.linalg.norm(b_perp)
    basis = np.array([[col_a @ u, col_a @ v], [col_b @ u, col_b @ v]])
    return points_ab.astype(np.float64) @ basis


def _outline(points: np.ndarray) -> np.ndarray:
    """The convex-hull vertices of 2D points (all points where the hull is degenerate or tiny)."""
    if len(points) <= 4:
        return points
    try:
        return points[ConvexHull(points).vertices]
    except QhullError:  # collinear points: the extreme ones are among them anyway
        return points


def slice_diameters(points_mm: np.ndarray) -> tuple[float, float]:
    """(long axis, perpendicular extent) of 2D voxel-centre coordinates (mm) of one slice."""
    hull = _outline(points_mm)
    if len(hull) < 2:
        return 0.0, 0.0
    diff = hull[:, None, :] - hull[None, :, :]
    dist2 = np.einsum("ijk,ijk->ij", diff, diff)
    i, j = np.unravel_index(int(np.argmax(dist2)), dist2.shape)
    long_axis = float(np.sqrt(dist2[i, j]))
    if long_axis == 0.0:
        return 0.0, 0.0
    direction = (hull[j] - hull[i]) / long_axis
    normal = np.array([-direction[1], direction[0]])
    across = hull @ normal
    return long_axis, float(across.max() - across.min())


def recist_diameters(mask: np.ndarray, affine: np.ndarray) -> tuple[float, float, int]:
    """(long axis mm, short axis mm, axial slice index within `mask`) of one lesion's boolean mask.

    `affine` is the voxel -> mm affine of `mask`'s own grid (only its 3x3 part matters).
    """
    axis = axial_axis(affine)
    in_plane = [a for a in range(3) if a != axis]
    col_a, col_b = (np.asarray(affine, dtype=np.float64)[:3, a] for a in in_plane)
    best = (0.0, 0.0, -1)
    for index in range(mask.shape[axis]):
        plane = np.take(mask, index, axis=axis)
        if not plane.any():
            continue
        if best[2] < 0:
            best = (0.0, 0.0, index)
        # Interior pixels cannot be ends of a longest chord: the plane's edge pixels suffice.
        edge = plane & ~ndimage.binary_erosion(plane)
        points = _plane_coordinates(np.argwhere(edge if edge.any() else plane), col_a, col_b)
        long_axis, short_axis = slice_diameters(points)
        if long_axis > best[0]:
            best = (long_axis, short_axis, index)
    return best


def lesion_instances(
    label_volume: np.ndarray,
    lesion_labels: Mapping[int, str],
    affine: np.ndarray,
    intensities: np.ndarray | None = None,
) -> tuple[np.ndarray, list[Lesion]]:
    """Instance volume and measured lesions of a label volume.

    Args:
        label_volume: (I, J, K) integer labels (the segmentation).
        lesion_labels: label value -> name, for the labels that are lesions (others are ignored).
        affine: (4, 4) voxel -> RAS+ mm.
        intensities: optional (I, J, K) scan on the same grid, for the intensity statistics.

    Returns:
        (instances, lesions): instances is an (I, J, K) uint16/uint32 array, 0 outside lesions and the
        lesion's id inside it; lesions lists them by id.
    """
    if label_volume.ndim != 3:
        raise ValueError(f"label_volume must be 3D, got shape {label_volume.shape}")
    if intensities is not None and intensities.shape != label_volume.shape:
        raise ValueError(f"intensities shape {intensities.shape} differs from labels {label_volume.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {affine.shape}")
    ml_per_voxel = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    labelled = []
    for value in sorted(int(v) for v in lesion_labels):
        components, n = label_components(label_volume == value)
        if n:
            labelled.append((value, components, ndimage.find_objects(components)))
    total = sum(len(boxes) for _, _, boxes in labelled)
    instances = np.zeros(label_volume.shape, dtype=np.uint16 if total < 1 << 16 else np.uint32)
    lesions: list[Lesion] = []
    axis = axial_axis(affine)
    for value, components, boxes in labelled:
        # sizes and centroids from each component's box: no pass over the whole volume
        counts = np.array(
            [0 if b is None else np.count_nonzero(components[b] == i + 1) for i, b in enumerate(boxes)]
        )
        order = np.argsort(-counts, kind="stable")
        centroids = box_centroids(components, boxes)
        for comp in order:
            lesion_id = len(lesions) + 1
            box = boxes[comp]
            assert box is not None
            own = components[box] == comp + 1
            instances[box][own] = lesion_id
            inside = None if intensities is None else intensities[box][own].astype(np.float64)
            long_axis, short_axis, slice_in_box = recist_diameters(own, affine)
            centroid = centroids[comp]
            world = (affine @ np.append(centroid, 1.0))[:3] * RAS_TO_LPS
            lesions.append(
                Lesion(
                    id=lesion_id,
                    label=value,
                    name=str(lesion_labels[value]),
                    n_voxels=int(counts[comp]),
                    volume_ml=float(counts[comp] * ml_per_voxel),
                    centroid_lps_mm=(float(world[0]), float(world[1]), float(world[2])),
                    centroid_voxel=(float(centroid[0]), float(centroid[1]), float(centroid[2])),
                    bbox_start=tuple(int(s.start) for s in box),
                    bbox_stop=tuple(int(s.stop) for s in box),
                    long_axis_mm=long_axis,
                    short_axis_mm=short_axis,
                    axial_slice=int(box[axis].start + slice_in_box),
                    intensity_mean=None if inside is None else float(inside.mean()),
                    intensity_max=None if inside is None else float(inside.max()),
                )
            )
    return instances, lesions
