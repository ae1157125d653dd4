"""TotalSegmentator's ``resampling.change_spacing`` calls, same values, without its float64 copies.

TotalSegmentator (``nnunet.nnUNet_predict_image``) resamples the canonical scan with
``change_spacing(img, spacing, order=1, dtype=np.int32)`` and the merged labels back with
``change_spacing(img, spacing, target_shape, order=0, dtype=np.uint8, force_affine=...)``. Both take
``img.get_fdata()`` (a float64 copy of the whole array: 4 x an int16 scan, 8 x a uint8 label map), run
``ndimage.zoom(data, zoom, mode="nearest", order=order)`` into float64 and cast the result.

scipy's zoom converts every input value to double itself, so the input's own dtype gives the same
interpolated doubles. Here:

- forward (order 1): the doubles are computed slab by slab of output planes along the first axis with
  scipy's ``zoom_shift`` (the routine ``ndimage.zoom`` calls: each output index ``o`` of a slab starting
  at ``o0`` maps to the input coordinate ``(o + o0) * zoom`` exactly as the whole call maps ``o + o0``),
  each slab cast to int32 as ``.astype(np.int32)`` casts (truncation); only the int32 result is held at
  full size;
- backward (order 0): ``ndimage.zoom`` on the uint8 labels into uint8 (nearest neighbour copies values, so
  the values are exact).

The zoom factors are computed as ``change_spacing`` computes them: the image's ``header.get_zooms()``
(float32 pixdim) over the target spacing, or the target shape over the shape. Tests compare both with
``change_spacing`` itself on the real CT.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.ndimage import _nd_image, _ni_support

# Output planes (first axis) per float64 slab of the forward resampling.
SLAB_PLANES = 16


def forward_zoom(img_spacing: np.ndarray, new_spacing: Sequence[float]) -> np.ndarray | None:
    """``change_spacing``'s zoom (``img_spacing / new_spacing``, float64) or None where it returns the image
    unchanged (the spacings are equal). ``img_spacing``: the header's zooms (float32), first three."""
    spacing = np.array(new_spacing)
    if np.array_equal(img_spacing, spacing):
        return None
    zoom: np.ndarray = img_spacing / spacing
    return zoom


def resampled_affine(affine: np.ndarray, zoom: np.ndarray) -> np.ndarray:
    """``change_spacing``'s new affine: each of the first three columns divided by its zoom."""
    new_affine = np.copy(affine)
    for axis in range(3):
        new_affine[:3, axis] = new_affine[:3, axis] / zoom[axis]
    return new_affine


def zoom_linear_int32(
    data: np.ndarray, zoom: Sequence[float] | np.ndarray, slab: int = SLAB_PLANES
) -> np.ndarray:
    """``ndimage.zoom(data.astype(float64), zoom, mode="nearest", order=1).astype(np.int32)``, the same
    values, with float64 only for ``slab`` output planes at a time. ``data``: 3D, any real dtype, any strides
    (a reoriented view is fine). Returns a C-contiguous int32 array of ndimage.zoom's output shape."""
    array = np.asarray(data)
    if array.ndim != 3 or np.iscomplexobj(array):
        raise ValueError(f"a real 3D array is needed, got {array.dtype} {array.shape}")
    factors = _ni_support._normalize_sequence(zoom, array.ndim)
    # ndimage.zoom's output shape, computed as it computes it
    shape = tuple(int(round(n * z)) for n, z in zip(array.shape, factors, strict=True))  # noqa: RUF046
    out = np.empty(shape, dtype=np.int32)
    if all(z == 1 for z in factors):  # ndimage.zoom returns the input's values unchanged
        out[...] = array
        return out
    # as ndimage.zoom (grid_mode=False): the coordinate scale per axis is (n_in - 1) / (n_out - 1)
    div = np.array(shape) - 1
    nominator = np.array(array.shape) - 1
    scale = np.divide(nominator, div, out=np.ones_like(array.shape, dtype=np.float64), where=div != 0)
    scale = np.ascontiguousarray(scale)
    mode = _ni_support._extend_mode_to_code("nearest")
    buffer = np.empty((min(slab, shape[0]), *shape[1:]), dtype=np.float64)
    for start in range(0, shape[0], slab):
        stop = min(shape[0], start + slab)
        part = buffer[: stop - start]
        shift = np.array([float(start), 0.0, 0.0])
        _nd_image.zoom_shift(array, scale, shift, part, 1, mode, 0.0, 0, False)
        out[start:stop] = part.astype(np.int32)
    return out


def back_zoom(old_shape: Sequence[int], target_shape: Sequence[int], img_spacing: np.ndarray) -> Any:
    """``change_spacing``'s zoom with a target shape (``target_shape / old_shape``), or None where it
    returns the image unchanged (``img_spacing / zoom`` equals ``img_spacing``)."""
    zoom = np.array(target_shape) / np.array(old_shape)
    if np.array_equal(img_spacing, img_spacing / zoom):
        return None
    return zoom


def zoom_nearest_uint8(labels: np.ndarray, zoom: Sequence[float] | np.ndarray) -> np.ndarray:
    """``ndimage.zoom(labels.astype(float64), zoom, mode="nearest", order=0).astype(np.uint8)`` for uint8
    ``labels``, computed into uint8 directly (nearest neighbour: the same values)."""
    if labels.dtype != np.uint8:
        raise ValueError(f"uint8 labels are needed, got {labels.dtype}")
    out: np.ndarray = ndimage.zoom(labels, zoom, output=np.uint8, mode="nearest", order=0)
    return out
