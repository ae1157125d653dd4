"""Helpers shared by the readers: shape checks, dtype normalisation, size caps."""

from __future__ import annotations

import numpy as np

from segserve.imaging.errors import ImageError, NotVolumetric

#: Refuse volumes with more voxels than this (a 2048 x 2048 x 512 volume); guards memory against a header that
#: declares an absurd size.
MAX_VOXELS = 2048 * 2048 * 512


def fmt_shape(shape: tuple[int, ...]) -> str:
    """ "256x256x1" for (256, 256, 1)."""
    return "x".join(str(int(n)) for n in shape)


def check_voxel_count(shape: tuple[int, ...]) -> None:
    """Raise ImageError when `shape` holds more than MAX_VOXELS voxels."""
    n = 1
    for d in shape:
        n *= int(d)
    if n > MAX_VOXELS:
        raise ImageError(
            f"the image is too large: {fmt_shape(shape)} voxels (at most {MAX_VOXELS:,} are accepted)",
            code="image_too_large",
        )


def spatial_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Reduce a stored shape to a 3D one, or raise NotVolumetric.

    Trailing singleton dimensions beyond the third (a 4D file holding one volume) are dropped. A 2D image,
    a volume with a spatial dimension of 1 (one slice), or several volumes (a 4D time series, a vector
    field) are refused with a message naming the shape.
    """
    dims = tuple(int(d) for d in shape)
    if len(dims) < 3:
        raise NotVolumetric(
            f"the file holds a 2D image ({fmt_shape(dims)}); segmentation needs a 3D volume",
        )
    extra = dims[3:]
    if any(d != 1 for d in extra):
        n_volumes = int(np.prod(extra))
        raise NotVolumetric(
            f"the file holds {n_volumes} volumes ({fmt_shape(dims)}, e.g. a 4D time series); "
            "segmentation needs a single 3D volume"
        )
    i, j, k = dims[:3]
    if min(i, j, k) <= 1:
        raise NotVolumetric(
            f"the file holds a 2D image ({fmt_shape(dims)}: one voxel thick); segmentation needs a 3D volume",
        )
    return i, j, k


def native_byte_order(array: np.ndarray) -> np.ndarray:
    """Return `array` in the machine's byte order (MGH and some NIfTI files are big-endian)."""
    if array.dtype.byteorder not in ("=", "|") and not array.dtype.isnative:
        return array.astype(array.dtype.newbyteorder("="))
    return array


#: Voxels are checked for NaN / infinity in slabs of this many voxels (a bool mask of one slab at a time).
_FINITE_SLAB_VOXELS = 1 << 24


def check_voxels(array: np.ndarray) -> None:
    """Raise ImageError unless `array` holds one finite real number per voxel.

    Accepted: bool, signed and unsigned integers, floats. Refused with code ``unsupported_voxel_type``:
    RGB / RGBA and other structured voxels (NIfTI datatypes RGB24, RGBA32), complex numbers, anything else;
    the message names the type. Refused with code ``non_finite_voxels``: NaN or infinite values (the policy:
    what a model does with them is undefined, so they are never passed on); the message gives their counts.
    The finiteness check reads the volume in slabs, so it needs no full-size mask.
    """
    dtype = array.dtype
    if dtype.names is not None:
        channels = "".join(dtype.names)
        kind = "RGB" if channels.upper() in ("RGB", "RGBA") else f"structured ({', '.join(dtype.names)})"
        raise ImageError(
            f"the image holds {kind} voxels ({len(dtype.names)} values per voxel); segmentation needs one "
            "grayscale intensity per voxel (convert the scan to a single channel)",
            code="unsupported_voxel_type",
        )
    if dtype.kind not in "biuf":
        name = "complex" if dtype.kind == "c" else dtype.kind
        raise ImageError(
            f"the image holds {name} voxels ({dtype}); segmentation needs real-valued intensities "
            "(for complex MR data, send the magnitude image)",
            code="unsupported_voxel_type",
        )
    if dtype.kind != "f" or array.size == 0:
        return
    flat = array.reshape(-1, order="A") if array.flags.forc else array.ravel()
    nan = inf = 0
    for start in range(0, flat.size, _FINITE_SLAB_VOXELS):
        slab = flat[start : start + _FINITE_SLAB_VOXELS]
        nan += int(np.count_nonzero(np.isnan(slab)))
        inf += int(np.count_nonzero(np.isinf(slab)))
    if nan or inf:
        raise ImageError(
            f"the image holds {nan:,} NaN and {inf:,} infinite voxels (of {array.size:,}); every voxel "
            "must be a finite number (mask or fill them before sending the scan)",
            code="non_finite_voxels",
        )
