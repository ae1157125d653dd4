"""nnU-Net's preprocessing of one case, plane by plane: the same array, without full-resolution float copies.

nnU-Net's ``DefaultPreprocessor.run_case_npy`` on a (C, z, y, x) image: a float32 copy, transpose_forward,
crop to the bounding box of the non-zero mask (``binary_fill_holes`` of ``any(channel != 0)``), normalisation,
resampling to the configuration's spacing (``resample_data_or_seg_to_shape``: skimage's resize of a float64
copy, order 3, see models.nnunet.resample). For a 512x512x400 int16 CT that is about 32 bytes per input voxel
at its peak. :func:`preprocess` gives the same float32 array and properties from views of the caller's
volumes (no copy of the scan):

- the box: filling holes adds only voxels enclosed by the mask, inside its bounding box, so the box of the
  filled mask is the box of the mask itself, found here plane by plane (``acvl_utils``' half-open box);
- normalisation: nnU-Net's own normaliser objects, run on each float32 plane, for the schemes that work
  voxel by voxel with no statistics of the case (``CTNormalization``, ``NoNormalization``; both ignore
  ``use_mask_for_norm``); ``RescaleTo01Normalization`` and ``RGBTo01Normalization`` with the crop's float32
  minimum and maximum (order-free; ``max(x - min)`` is ``max - min`` since a float32 subtraction of a
  constant is monotone), then nnU-Net's own in-place operations per plane; ``ZScoreNormalization`` with
  the case's mean and std computed from planes in numpy's order of summation, so bit for bit nnU-Net's
  (:mod:`models.nnunet.zscore`), with or without ``use_mask_for_norm``. With it the filled non-zero mask
  of the crop is held (bool, 1 byte per cropped voxel; scipy's ``binary_fill_holes`` as nnU-Net calls it,
  about 3 bytes more per voxel while it runs);
- resampling: :func:`models.nnunet.resample.zoom_cubic_planes`, then skimage's clip to the channel's range
  and the float32 assignment nnU-Net makes; for anisotropic spacings (nnU-Net's separate-z resampling, with
  nearest neighbour across the slices) each slice's in-plane resize, as each output slice needs it; without
  resampling (same shape), the normalised planes.

Anything else (another preprocessor class or scheme, another order, an all-zero image, NaN voxels) returns
None and the caller runs nnU-Net's own preprocessing. The segmentation nnU-Net derives from the mask is not
made: prediction never reads it (no cascade here).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from models.nnunet import zscore
from models.nnunet.resample import zoom_cubic_planes, zoom_shape
from models.nnunet.zscore import ZScore
from segserve.imaging.volume import Volume


def _box(planes: Sequence[np.ndarray], dtype: np.dtype) -> list[list[int]] | None:
    """``get_bbox_from_mask`` of the channels' non-zero mask ((z, y, x) views), or None: empty, or NaN."""
    depth, rows, cols = planes[0].shape
    along_z = np.zeros(depth, dtype=bool)
    along_y = np.zeros(rows, dtype=bool)
    along_x = np.zeros(cols, dtype=bool)
    for i in range(depth):
        mask = np.zeros((rows, cols), dtype=bool)
        for channel in planes:
            values = np.asarray(channel[i], dtype=dtype).astype(np.float32)
            if np.isnan(values).any():
                return None
            mask |= values != 0
        if mask.any():
            along_z[i] = True
            along_y |= mask.any(axis=1)
            along_x |= mask.any(axis=0)
    if not along_z.any():
        return None
    box = []
    for hits in (along_z, along_y, along_x):
        where = np.flatnonzero(hits)
        box.append([int(where[0]), int(where[-1]) + 1])
    return box


_RANGE_SCHEMES = {"RescaleTo01Normalization": "rescale01", "RGBTo01Normalization": "rgb01"}


def _normalizers(configuration_manager: Any, intensity_properties: dict, channels: int) -> list[Any] | None:
    """Per channel nnU-Net's normaliser (as its _normalize makes it) for the voxel-by-voxel schemes, which
    ignore the mask, or ``"zscore"`` / ``"zscore-masked"`` (ZScoreNormalization without / with
    use_mask_for_norm, see models.nnunet.zscore), or ``"rescale01"`` / ``"rgb01"`` (RescaleTo01Normalization,
    RGBTo01Normalization: they ignore the mask too); None: another scheme."""
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import (
        CTNormalization,
        NoNormalization,
    )

    classes = {"CTNormalization": CTNormalization, "NoNormalization": NoNormalization}
    out: list[Any] = []
    for c in range(channels):
        scheme = configuration_manager.normalization_schemes[c]
        use_mask = configuration_manager.use_mask_for_norm[c]
        if scheme == "ZScoreNormalization":
            if not zscore.numpy_order_holds():
                return None
            out.append("zscore-masked" if use_mask else "zscore")
            continue
        if scheme in _RANGE_SCHEMES:  # the crop's min and max (order-free), then voxel by voxel
            out.append(_RANGE_SCHEMES[scheme])
            continue
        if scheme not in classes:
            return None
        out.append(
            classes[scheme](use_mask_for_norm=use_mask, intensityproperties=intensity_properties.get(str(c)))
        )
    return out


def _filled_mask(planes: Sequence[np.ndarray], dtype: np.dtype) -> np.ndarray:
    """nnU-Net's non-zero mask of the cropped channels ((d0, d1, d2) views): ``binary_fill_holes`` of
    ``any(channel != 0)`` (its create_nonzero_mask; filling in the crop is filling in the whole image: the
    crop's faces border background or the image's faces), bool (d0, d1, d2)."""
    from scipy.ndimage import binary_fill_holes

    mask = np.zeros(planes[0].shape, dtype=bool)
    for i in range(int(planes[0].shape[0])):
        for channel in planes:
            mask[i] |= np.asarray(channel[i], dtype=dtype).astype(np.float32) != 0
    if mask.all():
        return mask
    filled: np.ndarray = binary_fill_holes(mask)
    return filled


def _resampling(configuration_manager: Any) -> dict[str, Any] | None:
    """The data resampling's keyword arguments, when it is nnU-Net's resample_data_or_seg_to_shape."""
    if configuration_manager.configuration.get("resampling_fn_data") != "resample_data_or_seg_to_shape":
        return None
    kwargs = dict(configuration_manager.configuration.get("resampling_fn_data_kwargs", {}))
    if kwargs.get("is_seg", False) or kwargs.get("order", 3) != 3:
        return None
    return kwargs


def _separate_z(
    plane: Callable[[int], np.ndarray],
    shape: Sequence[int],
    new_shape: Sequence[int],
    axis: int,
    order: int,
    out: np.ndarray,
) -> None:
    """nnU-Net's separate-z resampling (``resample_data_or_seg`` with ``do_separate_z`` and ``order_z`` 0)
    of one channel into ``out``: each slice across ``axis`` resized in its plane by skimage's resize
    (nnU-Net's call), then along ``axis`` the nearest slice of ``map_coordinates``' order 0 (the other axes'
    coordinates are whole numbers there: ``1.0 * (r + 0.5) - 0.5``), computed as each output slice needs
    it."""
    from skimage.transform import resize

    in_plane = [int(n) for a, n in enumerate(new_shape) if a != axis]
    scale = float(shape[axis]) / int(new_shape[axis])
    cached: tuple[int, np.ndarray] | None = None
    for j in range(int(new_shape[axis])):
        if shape[axis] == new_shape[axis]:
            source = j
        else:
            coordinate = scale * (j + 0.5) - 0.5
            source = min(max(math.floor(coordinate + 0.5), 0), int(shape[axis]) - 1)
        if cached is None or cached[0] != source:
            values = plane(source).astype(np.float64)
            cached = (source, resize(values, in_plane, order, mode="edge", anti_aliasing=False))
        out[(slice(None),) * axis + (j,)] = cached[1]


def _float_planes(volume: np.ndarray, dtype: np.dtype) -> Callable[[int], np.ndarray]:
    """Plane ``i`` (first axis) of a 3D view as nnU-Net's float32 copy has it: via ``dtype``, then float32."""

    def plane(i: int) -> np.ndarray:
        return np.asarray(volume[i], dtype=dtype).astype(np.float32)

    return plane


def _zscores(
    normalizers: Sequence[Any],
    arrays: Sequence[np.ndarray],
    cropped: Sequence[np.ndarray],
    box: Sequence[Sequence[int]],
    transpose_forward: Sequence[int],
    dtype: np.dtype,
) -> tuple[dict[int, ZScore], np.ndarray | None]:
    """The z-scored channels' statistics (channel -> ZScore, as nnU-Net computes them) and the filled
    non-zero mask (bool, the crop's transposed shape) where one of them uses it, else None.

    ``arrays``: the (I, J, K) scans; ``cropped``: their transposed crops; ``box``: the crop in transposed
    axes. The unmasked statistics follow the memory order of nnU-Net's C-contiguous (z, y, x) copy."""
    mask = _filled_mask(cropped, dtype) if "zscore-masked" in normalizers else None
    reader_box = [box[list(transpose_forward).index(axis)] for axis in range(3)]
    out: dict[int, ZScore] = {}
    for c, kind in enumerate(normalizers):
        if kind == "zscore-masked" and mask is not None:
            out[c] = zscore.masked(_float_planes(cropped[c], dtype), mask)
        elif kind == "zscore":
            zyx = arrays[c].transpose(2, 1, 0)
            crop = zyx[tuple(slice(lo, hi) for lo, hi in reader_box)]
            out[c] = zscore.unmasked(_float_planes(crop, dtype), crop.shape, zyx.shape)
    return out, mask


def _range(plane: Callable[[int], np.ndarray], n: int) -> tuple[np.float32, np.float32]:
    """The float32 minimum and maximum of a crop's planes ``0..n-1`` (what ``image.min()`` / ``.max()``
    give on nnU-Net's float32 copy: min and max do not depend on the order)."""
    low, high = np.float32(np.inf), np.float32(-np.inf)
    for i in range(n):
        values = plane(i)
        low, high = min(low, values.min()), max(high, values.max())
    return np.float32(low), np.float32(high)


def preprocess(
    volumes: Sequence[Volume],
    properties: dict[str, Any],
    plans_manager: Any,
    configuration_manager: Any,
) -> np.ndarray | None:
    """The float32 (C, *model grid) array nnU-Net's preprocessing gives for ``volumes`` (its reader's
    properties ``properties`` are completed as run_case_npy completes them), or None where this path does
    not apply (module docstring)."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.preprocessing.resampling.default_resampling import (
        compute_new_shape,
        determine_do_sep_z_and_axis,
    )

    if configuration_manager.preprocessor_class is not DefaultPreprocessor:
        return None
    if len(configuration_manager.spacing) != 3 or len({v.shape for v in volumes}) != 1:
        return None
    kwargs = _resampling(configuration_manager)
    normalizers = _normalizers(
        configuration_manager, plans_manager.foreground_intensity_properties_per_channel, len(volumes)
    )
    if kwargs is None or normalizers is None:
        return None
    arrays = [np.asarray(v.array) for v in volumes]
    dtype = np.result_type(*arrays)
    # (z, y, x) as nnU-Net's reader gives it, then transpose_forward: views of the caller's arrays
    views = [a.transpose(2, 1, 0).transpose(list(plans_manager.transpose_forward)) for a in arrays]
    box = _box(views, dtype)
    if box is None:
        return None
    spacing = [properties["spacing"][i] for i in plans_manager.transpose_forward]
    shape_before = tuple(int(n) for n in views[0].shape)
    crop = tuple(slice(lo, hi) for lo, hi in box)
    cropped = [v[crop] for v in views]
    shape = tuple(int(n) for n in cropped[0].shape)
    new_shape = [int(n) for n in compute_new_shape(shape, spacing, configuration_manager.spacing)]
    separate_z, _axis = determine_do_sep_z_and_axis(
        kwargs.get("force_separate_z", False),
        spacing,
        configuration_manager.spacing,
        *([kwargs["separate_z_anisotropy_threshold"]] if "separate_z_anisotropy_threshold" in kwargs else []),
    )
    resample = tuple(new_shape) != shape
    if resample and separate_z and (kwargs.get("order_z", 0) != 0 or _axis is None):
        return None
    if resample and not separate_z and zoom_shape(shape, new_shape)[0] != tuple(new_shape):
        return None

    scores, mask = _zscores(normalizers, arrays, cropped, box, plans_manager.transpose_forward, dtype)
    ranges = {
        c: _range(_float_planes(cropped[c], dtype), shape[0])
        for c, k in enumerate(normalizers)
        if k in _RANGE_SCHEMES.values()
    }
    if any(normalizers[c] == "rgb01" and (low < 0 or high > 255) for c, (low, high) in ranges.items()):
        return None  # nnU-Net's own path: its assertion names the problem

    def normalized(channel: int, axis: int = 0) -> Callable[[int], np.ndarray]:
        def plane(i: int) -> np.ndarray:
            where = (slice(None),) * axis + (i,)
            values = np.asarray(cropped[channel][where], dtype=dtype).astype(np.float32)
            if channel in scores:
                inside = mask[where] if mask is not None and normalizers[channel] == "zscore-masked" else None
                return scores[channel].apply(values, inside)
            if normalizers[channel] == "rescale01":  # nnU-Net: image -= image.min(); image /= clip(max)
                low, high = ranges[channel]
                values -= low
                values /= np.clip(high - low, a_min=1e-8, a_max=None)  # max(x - low) == high - low (monotone)
                return values
            if normalizers[channel] == "rgb01":
                values /= 255.0
                return values
            return np.asarray(normalizers[channel].run(values, None), dtype=np.float32)

        return plane

    out = np.zeros((len(volumes), *(new_shape if resample else shape)), dtype=np.float32)
    for c in range(len(volumes)):
        plane = normalized(c)
        if resample and separate_z:
            axis = int(_axis)
            _separate_z(normalized(c, axis), shape, new_shape, axis, int(kwargs.get("order", 3)), out[c])
            continue
        if not resample:
            for i in range(shape[0]):
                out[c, i] = plane(i)
            continue
        low, high = np.inf, -np.inf
        for i in range(shape[0]):
            values = plane(i)
            low, high = min(low, float(values.min())), max(high, float(values.max()))
        for o, resampled in zoom_cubic_planes(plane, shape, new_shape):
            np.clip(resampled, low, high, out=resampled)  # skimage's clip to the input's range
            out[c, o] = resampled
    properties["shape_before_cropping"] = shape_before
    properties["bbox_used_for_cropping"] = box
    properties["shape_after_cropping_and_before_resampling"] = shape
    return out
