"""NRRD (.nrrd, attached header) reading with pynrrd, with the NRRD space converted to RAS+."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import nrrd as pynrrd
import numpy as np

from segserve.imaging._common import check_voxel_count, native_byte_order, spatial_shape
from segserve.imaging.errors import CorruptImage, ImageError, UnsupportedFormat
from segserve.imaging.volume import Volume

# NRRD "space" values -> signs that turn that space's first three axes into RAS.
_SPACE_TO_RAS_SIGNS: dict[str, tuple[float, float, float]] = {
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0),
    "lps": (-1.0, -1.0, 1.0),
}

# "space units" -> factor to mm.
_UNIT_TO_MM = {
    "mm": 1.0,
    "millimeter": 1.0,
    "millimeters": 1.0,
    "cm": 10.0,
    "m": 1000.0,
    "um": 1e-3,
    "µm": 1e-3,
}


def read_nrrd(path: Path) -> Volume:
    """Read an attached-header NRRD file into a Volume.

    Returns array shape (I, J, K) in the file's axis order (fastest axis first), affine mapping (i, j, k)
    to RAS+ mm: columns = the "space directions" vectors, translation = "space origin", with LPS/LAS rows
    sign-flipped to RAS. Without space information the affine is diag(spacings) (1 mm when absent) at the
    origin. Raises CorruptImage for truncated or damaged data, UnsupportedFormat for a detached header,
    NotVolumetric for 2D/4D.
    """
    try:
        header = pynrrd.read_header(str(path))
    except (pynrrd.NRRDError, ValueError, UnicodeDecodeError) as exc:
        raise CorruptImage(f"the NRRD header is invalid or truncated ({_clean(exc)})") from exc
    if "data file" in header or "datafile" in header:
        raise UnsupportedFormat(
            "a detached NRRD header (.nhdr) that points to a separate data file is not supported; "
            "send a single .nrrd file with the data attached"
        )
    sizes = tuple(int(s) for s in header.get("sizes", ()))
    check_voxel_count(sizes)
    shape = spatial_shape(sizes)
    try:
        data, header = pynrrd.read(str(path), index_order="F")
    except (pynrrd.NRRDError, ValueError, EOFError, zlib.error, OSError) as exc:
        raise CorruptImage(
            "the file is truncated or damaged: its voxel data does not match the size in its header"
        ) from exc
    array = native_byte_order(np.asarray(data))
    if array.ndim > 3:
        array = array.reshape(shape)

    affine = nrrd_affine(header)
    meta: dict[str, Any] = {
        "dtype": str(array.dtype),
        "shape": list(shape),
        "spacing_mm": [float(x) for x in np.linalg.norm(affine[:3, :3], axis=0)],
        "orientation": "".join(nib.aff2axcodes(affine)),
        "nrrd_space": str(header.get("space", "")),
        "encoding": str(header.get("encoding", "")),
    }
    return Volume(array=array, affine=affine, source_format="nrrd", meta=meta, header=None)


def nrrd_affine(header: dict[str, Any]) -> np.ndarray:
    """The (4, 4) voxel -> RAS+ mm affine of a pynrrd header (see `read_nrrd`)."""
    dimension = int(header.get("dimension", len(header.get("sizes", ()))))
    space = str(header.get("space", "")).strip().lower()
    affine = np.eye(4)
    directions = header.get("space directions")
    if directions is not None and space == "" and "space dimension" not in header:
        raise ImageError("the NRRD header has 'space directions' but no 'space'", code="invalid_nrrd")
    if directions is not None:
        if space not in _SPACE_TO_RAS_SIGNS:
            raise ImageError(
                f"NRRD space '{space}' is not supported; use left-posterior-superior (LPS) or "
                "right-anterior-superior (RAS)",
                code="unsupported_space",
            )
        rows = np.asarray(directions, dtype=np.float64)
        # Non-spatial axes ("none") come back as rows of NaN; keep the spatial ones, in order.
        spatial = [r for r in rows if np.all(np.isfinite(r))]
        if len(spatial) < 3 or rows.shape[-1] != 3:
            raise ImageError("the NRRD file does not describe a 3D space (needs 3 space directions)")
        affine[:3, :3] = np.stack(spatial[:3], axis=1)
        origin = header.get("space origin")
        if origin is not None:
            origin_arr = np.asarray(origin, dtype=np.float64)
            if origin_arr.shape != (3,) or not np.all(np.isfinite(origin_arr)):
                raise ImageError("the NRRD 'space origin' is not a 3D point")
            affine[:3, 3] = origin_arr
        signs = np.array([*_SPACE_TO_RAS_SIGNS[space], 1.0])
        affine = signs[:, None] * affine
        units = header.get("space units")
        if units is not None:
            factors = {_UNIT_TO_MM.get(str(u).strip().lower()) for u in units}
            if None in factors or len(factors) != 1:
                raise ImageError(f"NRRD space units {list(units)} are not supported; use mm")
            factor = factors.pop()
            assert factor is not None
            affine[:3, :] *= factor
    else:
        spacings = header.get("spacings")
        sp = np.ones(3) if spacings is None else np.asarray(spacings, dtype=np.float64)[:3]
        if dimension < 3 or sp.shape != (3,):
            raise ImageError("the NRRD header does not describe 3 spatial axes")
        sp = np.where(np.isfinite(sp) & (sp != 0), sp, 1.0)
        affine[:3, :3] = np.diag(sp)
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise CorruptImage("the NRRD space directions are degenerate (the voxel axes are not independent)")
    return affine


def _clean(exc: Exception) -> str:
    """An exception's message cut to one short line (pynrrd messages never hold patient data)."""
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
