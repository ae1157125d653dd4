"""DICOM slice geometry: where each plane lies, and whether the planes form one regular 3D stack.

Positions and orientations are in the patient's LPS frame (mm), as DICOM gives them. A stack is accepted when
every plane has the same size, orientation and pixel spacing, the positions along the slice normal are
distinct, evenly spaced (within ``SPACING_RTOL`` / ``SPACING_ATOL_MM``, no gaps over ``GAP_FACTOR``
steps) and the stack is not tilted against its normal (gantry tilt, ``TILT_TOL_DEG``).
:func:`assemble_geometry` then gives the slice order and the LPS affine; :mod:`segserve.dicom.series`
turns that into a Volume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from segserve.imaging.errors import ImageError, InvalidSeries

#: Two slices whose positions along the normal differ by less than this (mm) are at the same position.
DUPLICATE_TOL_MM = 1e-3


#: A step larger than this multiple of the median step means slices are missing.
GAP_FACTOR = 1.5


#: Steps may differ from the median step by this fraction (and at least SPACING_ATOL_MM) before the spacing
#: counts as non-uniform.
SPACING_RTOL = 0.01


SPACING_ATOL_MM = 1e-3


#: Largest angle (degrees) between the slice-position step and the slice normal that is not a gantry tilt.
TILT_TOL_DEG = 0.1


#: Component-wise tolerance for ImageOrientationPatient values to count as the same orientation.
ORIENTATION_ATOL = 1e-3


#: Relative tolerance for PixelSpacing values to count as equal.
PIXEL_SPACING_RTOL = 1e-3


@dataclass
class Plane:
    """One 2D plane of the series: a single-frame object, or one frame of an enhanced multi-frame object."""

    obj: int  # index into the series' objects
    frame: int | None  # 0-based frame index for multi-frame objects
    ipp: np.ndarray  # (3,) ImagePositionPatient, LPS mm
    iop: np.ndarray  # (6,) ImageOrientationPatient: row cosine, column cosine
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing) mm
    rows: int
    cols: int
    slope: float
    intercept: float


@dataclass(frozen=True)
class Geometry:
    order: list[int]  # plane indices in slice order (ascending along the normal)
    affine_lps: np.ndarray  # (4, 4)
    slice_step_mm: float


def classic_plane(index: int, ds: Dataset, label: str) -> Plane:
    """The plane of single-frame object number ``index`` of the series (``label`` names it in messages)."""
    missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if k not in ds]
    if missing:
        raise InvalidSeries(
            f"{label} lacks {', '.join(missing)}, so its slices cannot be placed in 3D "
            f"(modality {ds.get('Modality', '?')}; projection images such as CR/DX are not volumes)",
            code="missing_geometry",
        )
    return Plane(
        obj=index,
        frame=None,
        ipp=floats_of(ds.ImagePositionPatient, 3, "ImagePositionPatient", label),
        iop=floats_of(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", label),
        pixel_spacing=spacing_of(ds.PixelSpacing, label),
        rows=int(ds.Rows),
        cols=int(ds.Columns),
        slope=as_float(ds.get("RescaleSlope"), 1.0),
        intercept=as_float(ds.get("RescaleIntercept"), 0.0),
    )


def enhanced_planes(ds: Dataset, n_frames: int, label: str) -> list[Plane]:
    """Planes of an enhanced multi-frame object (per-frame / shared functional groups)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != n_frames:
        raise ImageError(
            f"multi-frame DICOM objects without per-frame positions ({n_frames} frames, "
            f"modality {ds.get('Modality', '?')}) are not supported yet; send the series as single-frame "
            "files",
            code="unsupported_dicom",
        )
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else Dataset()

    def lookup(frame_groups: Dataset, sequence: str, keyword: str) -> Any:
        for groups in (frame_groups, shared):
            seq = groups.get(sequence)
            if seq and keyword in seq[0]:
                return seq[0].get(keyword)
        return None

    planes = []
    for f, groups in enumerate(per_frame):
        ipp = lookup(groups, "PlanePositionSequence", "ImagePositionPatient")
        iop = lookup(groups, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = lookup(groups, "PixelMeasuresSequence", "PixelSpacing")
        if ipp is None or iop is None or spacing is None:
            raise ImageError(
                f"frame {f + 1} of the multi-frame object lacks its position, orientation or pixel spacing; "
                "this multi-frame layout is not supported yet",
                code="unsupported_dicom",
            )
        planes.append(
            Plane(
                obj=0,
                frame=f,
                ipp=floats_of(ipp, 3, "ImagePositionPatient", label),
                iop=floats_of(iop, 6, "ImageOrientationPatient", label),
                pixel_spacing=spacing_of(spacing, label),
                rows=int(ds.Rows),
                cols=int(ds.Columns),
                slope=as_float(lookup(groups, "PixelValueTransformationSequence", "RescaleSlope"), 1.0),
                intercept=as_float(
                    lookup(groups, "PixelValueTransformationSequence", "RescaleIntercept"), 0.0
                ),
            )
        )
    return planes


def assemble_geometry(planes: list[Plane]) -> Geometry:
    """Check that `planes` form one regular stack and build its LPS affine (see `read_dicom_series`)."""
    sizes = sorted({(p.cols, p.rows) for p in planes})
    if len(sizes) > 1:
        listed = ", ".join(f"{c}x{r}" for c, r in sizes)
        raise InvalidSeries(f"the slices have different sizes ({listed}); they cannot form one volume")
    iops = np.stack([p.iop for p in planes])
    if np.max(np.abs(iops - iops[0])) > ORIENTATION_ATOL:
        n_orient = len({tuple(np.round(v, 3)) for v in iops})
        raise InvalidSeries(
            f"the slices have {n_orient} different orientations (the series may mix a localizer or several "
            "stacks); send a series of parallel slices",
            code="mixed_orientation",
        )
    spacings = np.array([p.pixel_spacing for p in planes])
    if not np.allclose(spacings, spacings[0], rtol=PIXEL_SPACING_RTOL, atol=1e-6):
        raise InvalidSeries(
            f"the slices have different pixel spacings (from {fmt_pair(spacings.min(axis=0))} "
            f"to {fmt_pair(spacings.max(axis=0))} mm)"
        )
    row_cos, col_cos = iops[0][:3], iops[0][3:]
    row_norm, col_norm = float(np.linalg.norm(row_cos)), float(np.linalg.norm(col_cos))
    if not (0.99 < row_norm < 1.01 and 0.99 < col_norm < 1.01) or abs(float(row_cos @ col_cos)) > 1e-2:
        raise InvalidSeries("ImageOrientationPatient does not hold two orthogonal unit vectors")
    row_cos, col_cos = row_cos / row_norm, col_cos / col_norm
    normal = np.cross(row_cos, col_cos)

    positions = np.stack([p.ipp for p in planes])
    along = positions @ normal
    order = [int(i) for i in np.argsort(along, kind="stable")]
    along_sorted = along[order]
    steps = np.diff(along_sorted)

    duplicates = int(np.sum(steps < DUPLICATE_TOL_MM))
    if duplicates:
        first = int(np.argmax(steps < DUPLICATE_TOL_MM))
        raise InvalidSeries(
            f"duplicate slice positions: {duplicates} of {len(planes)} slices repeat the position of another "
            f"slice (e.g. {along_sorted[first]:.2f} mm along the slice normal); the series may hold several "
            "echoes, phases or time points, or the same slice twice",
            code="duplicate_slices",
        )
    median = float(np.median(steps))
    gaps = np.nonzero(steps > GAP_FACTOR * median)[0]
    if gaps.size:
        g = int(gaps[0])
        missing = max(1, round(float(steps[g]) / median) - 1)
        raise InvalidSeries(
            f"slices are missing: a gap of {steps[g]:.2f} mm between slices {g + 1} and {g + 2} (of "
            f"{len(planes)}, at {along_sorted[g]:.2f} and {along_sorted[g + 1]:.2f} mm along the normal) "
            f"where the slice spacing is {median:.2f} mm: about {missing} "
            f"slice{'s' if missing != 1 else ''} missing",
            code="missing_slices",
        )
    tolerance = max(SPACING_RTOL * median, SPACING_ATOL_MM)
    deviation = np.abs(steps - median)
    if float(deviation.max()) > tolerance:
        worst = int(np.argmax(deviation))
        raise InvalidSeries(
            f"the slice spacing is not uniform: steps range from {steps.min():.3f} to {steps.max():.3f} mm "
            f"(e.g. {steps[worst]:.3f} mm between slices {worst + 1} and {worst + 2}, "
            f"median {median:.3f} mm)",
            code="non_uniform_spacing",
        )

    sorted_positions = positions[order]
    total = sorted_positions[-1] - sorted_positions[0]
    normal_part = float(total @ normal)
    in_plane = float(np.linalg.norm(total - normal_part * normal))
    tilt = math.degrees(math.atan2(in_plane, abs(normal_part)))
    if tilt > TILT_TOL_DEG:
        raise InvalidSeries(
            f"the series has a gantry tilt of {tilt:.1f} degrees (the slice positions step at an angle to "
            "the slice normal); resample it to an untilted grid (e.g. with dcm2niix) before uploading",
            code="gantry_tilt",
        )
    step = total / (len(planes) - 1)
    expected = sorted_positions[0] + np.arange(len(planes))[:, None] * step
    off_line = float(np.max(np.linalg.norm(sorted_positions - expected, axis=1)))
    if off_line > max(0.5 * float(spacings[0].min()), tolerance):
        raise InvalidSeries(
            f"the slice positions do not lie on a straight line (off by up to {off_line:.2f} mm)",
            code="irregular_positions",
        )

    row_spacing, col_spacing = planes[0].pixel_spacing
    affine = np.eye(4)
    affine[:3, 0] = row_cos * col_spacing  # I: along a row = next column, spaced PixelSpacing[1]
    affine[:3, 1] = col_cos * row_spacing  # J: down a column = next row, spaced PixelSpacing[0]
    affine[:3, 2] = step
    affine[:3, 3] = sorted_positions[0]
    return Geometry(order=order, affine_lps=affine, slice_step_mm=float(np.linalg.norm(step)))


def as_int(value: Any, default: int) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def as_float(value: Any, default: float) -> float:
    try:
        result = float(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default
    return result if math.isfinite(result) else default


def floats_of(value: Any, n: int, keyword: str, label: str) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidSeries(f"{label} has an unreadable {keyword}") from exc
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise InvalidSeries(f"{label} has an invalid {keyword} (expected {n} numbers)")
    return arr


def spacing_of(value: Any, label: str) -> tuple[float, float]:
    arr = floats_of(value, 2, "PixelSpacing", label)
    if np.any(arr <= 0):
        raise InvalidSeries(f"{label} has a non-positive PixelSpacing")
    return float(arr[0]), float(arr[1])


def fmt_pair(values: np.ndarray) -> str:
    return "x".join(f"{float(v):.4g}" for v in values)
