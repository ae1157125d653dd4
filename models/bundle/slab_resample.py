"""MONAI's SpatialResample (Spacingd and its inverse in Invertd) computed in slabs of output planes.

MONAI resamples a whole volume in one call (``monai.transforms.spatial.functional.spatial_resample``): the
input is copied to the compute dtype (float64 by default: 8 bytes per input voxel), torch's ``affine_grid``
builds a (X, Y, Z, 4) base grid and a (X, Y, Z, 3) grid for the whole output (56 bytes per output voxel in
float64), ``grid_sample`` gives the output in that dtype, then a float32 copy. A 512x512x400 int16 CT
(200 MiB) costs 800 MiB in Spacingd; Invertd of a 2-channel softmax back onto that grid about 5.6 GiB.

:class:`SlabSpatialResample` is MONAI's ``SpatialResample`` (same parameters, same recorded metadata: the
metadata steps of MONAI 1.6.1's function are kept line for line below and MONAI's own
``track_transform_meta`` records them) whose eager resampling runs one slab of output planes (first spatial
axis) at a time, with the same numbers:

- the normalised transform is MONAI's (``to_norm_affine`` of the same ``xform`` with the whole input and
  output sizes, reversed as ``AffineTransform(reverse_indexing=True)`` reverses it);
- the grid of a slab is ``affine_grid`` of the whole output at those planes
  (:func:`models.bundle.regrid.slab_grid`, checked equal by the tests);
- ``grid_sample`` gets an input of the whole input's shape in the compute dtype, so that it normalises
  coordinates with the same sizes, but only the box of input voxels the slab samples (its corners plus one
  voxel) is written: the buffer is an anonymous memory map, whose pages take memory only once written, and
  they are given back (``MADV_DONTNEED``) after each slab. Every voxel ``grid_sample`` reads is written with
  the input's value converted as MONAI converts it, so each output value is MONAI's, bit for bit;
- each slab is cast to float32 as MONAI casts its output; ``argmax=True`` (set by
  :func:`models.bundle.inversion`'s fused Invertd + AsDiscreted) also takes ``torch.argmax`` over channels of
  the float32 slab, as AsDiscreted(argmax) would of the whole, and returns that one channel as float32.

``load_dtype`` (float32; set by :func:`use_slab_resampling` when it lets LoadImaged keep the file's dtype)
makes the resampler first convert its input to float32, as LoadImaged would have: slab by slab here, whole
where MONAI's own function runs. Not taken (MONAI's own function, on the whole): lazy, an unchanged grid,
spline (integer) modes, reflection padding, ``align_corners=True``, MONAI's compiled resampler, a GPU
tensor, other than 3 spatial dimensions.
"""

from __future__ import annotations

import mmap
from enum import Enum
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import SpatialResample

from models.bundle.regrid import GridBuffers, grid_linspace, slab_grid

SLAB_VOXELS = 1 << 20  # output voxels per slab (about 56 MiB of float64 grids), and input voxels it reads
# dtypes whose every value float32 holds exactly: converting them to float64 directly or through float32
# gives the same numbers
_EXACT_IN_FLOAT32 = (
    torch.int8,
    torch.uint8,
    torch.int16,
    torch.uint16,
    torch.float16,
    torch.bfloat16,
    torch.float32,
)


def _box(
    theta: torch.Tensor,
    out_size: tuple[int, int, int],
    planes: tuple[int, int],
    in_size: tuple[int, int, int],
    border: bool,
) -> tuple[slice, slice, slice]:
    """Input index ranges (first spatial axis first) holding every voxel grid_sample reads for the output
    ``planes`` [start, stop) (bilinear or nearest, align_corners False): the corners ``floor(i)`` and
    ``floor(i) + 1`` of each unnormalised coordinate ``i = ((g + 1) * n - 1) / 2`` (clipped to [0, n - 1]
    for ``border`` padding, as grid_sample clips it), widened by one voxel either side for rounding. The
    grid is affine in the output index, so its extremes over the slab lie at the slab's 8 corners."""
    axes = [grid_linspace(n, torch.float64) for n in reversed(out_size)]  # x (last axis), y, z as affine_grid
    ends = [(a[0], a[-1]) for a in axes[:2]] + [(axes[2][planes[0]], axes[2][planes[1] - 1])]
    corners = torch.tensor([[x, y, z, 1.0] for x in ends[0] for y in ends[1] for z in ends[2]])
    grid = corners @ theta[0].to(torch.float64).T  # (8, 3): x, y, z = reversed input axes
    box = []
    for axis, n in enumerate(in_size):
        coords = grid[:, 2 - axis]
        low = ((float(coords.min()) + 1.0) * n - 1.0) / 2.0
        high = ((float(coords.max()) + 1.0) * n - 1.0) / 2.0
        if border:
            low, high = min(max(low, 0.0), n - 1.0), min(max(high, 0.0), n - 1.0)
        first, last = int(np.floor(low)) - 1, int(np.floor(high)) + 2  # last: inclusive
        box.append(slice(min(max(first, 0), n), min(max(last + 1, 0), n)))
    return box[0], box[1], box[2]


def resample_slabs(
    source: torch.Tensor,
    theta: torch.Tensor,
    out_size: tuple[int, int, int],
    mode: str,
    padding_mode: str,
    dtype: torch.dtype,
    load_dtype: torch.dtype | None = None,
    argmax: bool = False,
) -> torch.Tensor:
    """``grid_sample`` of ``source`` (C, D, H, W, any dtype) on ``affine_grid(theta)`` of ``out_size``,
    computed in ``dtype``, as float32 (C, *out_size); ``argmax``: its argmax over channels (1, *out_size).

    ``theta``: (1, 3, 4) in ``dtype``, normalised and reversed as MONAI's AffineTransform passes it to
    affine_grid. ``load_dtype``: the source is converted to it before ``dtype`` (see the module docstring).
    """
    channels = int(source.shape[0])
    in_size = (int(source.shape[1]), int(source.shape[2]), int(source.shape[3]))
    out = torch.empty((1 if argmax else channels, *out_size), dtype=torch.float32)
    count = channels * in_size[0] * in_size[1] * in_size[2]
    itemsize = torch.empty((), dtype=dtype).element_size()
    # the source's values convert to ``dtype`` exactly as through load_dtype: one copy, no temporary
    direct = load_dtype is None or source.dtype in _EXACT_IN_FLOAT32
    memory = mmap.mmap(-1, max(count * itemsize, 1))
    try:
        buffer = torch.frombuffer(memory, dtype=dtype, count=count).view(1, channels, *in_size)
        step = max(1, SLAB_VOXELS // max(1, out_size[1] * out_size[2]))
        grids = GridBuffers(out_size, step, theta.dtype)  # one pair of grids for every slab
        start = 0
        while start < out_size[0]:
            stop = min(start + step, out_size[0])
            box = _box(theta, out_size, (start, stop), in_size, padding_mode == "border")
            read = channels * int(np.prod([b.stop - b.start for b in box]))
            if read > SLAB_VOXELS and stop - start > 1:  # a slab reads at most SLAB_VOXELS input voxels
                step = max(1, (stop - start) // 2)
                continue
            grid = slab_grid(theta, out_size, start, stop, grids)
            part = source[(slice(None), *box)]
            buffer[(0, slice(None), *box)].copy_(part if direct else part.to(load_dtype))
            values = F.grid_sample(buffer, grid, mode=mode, padding_mode=padding_mode, align_corners=False)
            slab = values[0].to(torch.float32)
            out[:, start:stop] = torch.argmax(slab, dim=0, keepdim=True) if argmax else slab
            del values, slab, part, grid
            memory.madvise(mmap.MADV_DONTNEED)  # the written pages are given back (zero when read again)
            start = stop
        del buffer, grids
    finally:
        memory.close()
    return out


def _eligible(img: Any, mode: Any, padding_mode: Any, align_corners: Any, lazy: bool) -> bool:
    from monai.config import USE_COMPILED
    from monai.data import MetaTensor

    return (
        not lazy
        and not USE_COMPILED
        and isinstance(img, MetaTensor)
        and img.ndim == 4
        and img.device.type == "cpu"
        and not img.pending_operations
        and _value(mode) in ("bilinear", "nearest")
        and _value(padding_mode) in ("zeros", "border")
        and align_corners is False
    )


def _value(option: Any) -> Any:
    return option.value if isinstance(option, Enum) else option


def spatial_resample(
    img: Any,
    dst_affine: Any,
    spatial_size: Any,
    mode: Any,
    padding_mode: Any,
    align_corners: Any,
    dtype_pt: torch.dtype,
    lazy: bool,
    transform_info: dict[str, Any],
    load_dtype: torch.dtype | None = None,
    argmax: bool = False,
) -> tuple[Any, bool]:
    """MONAI 1.6.1's ``spatial_resample`` (same arguments, same output and metadata), resampling in slabs
    where eligible. Returns the output and whether ``argmax`` was taken (only in the slab path)."""
    from monai.data import MetaTensor
    from monai.data.utils import AFFINE_TOL, compute_shape_offset, to_affine_nd
    from monai.networks.utils import to_norm_affine
    from monai.transforms.inverse import TraceableTransform
    from monai.transforms.spatial import functional
    from monai.transforms.utils_pytorch_numpy_unification import allclose
    from monai.utils import convert_to_dst_type, convert_to_numpy, ensure_tuple, fall_back_tuple

    if not _eligible(img, mode, padding_mode, align_corners, lazy):
        if load_dtype is not None and isinstance(img, torch.Tensor):
            img = img.to(load_dtype)  # what LoadImaged would have given
        out = functional.spatial_resample(
            img, dst_affine, spatial_size, mode, padding_mode, align_corners, dtype_pt, lazy, transform_info
        )
        return out, False
    # MONAI's steps up to the resampling, line for line (spatial rank 3: checked by _eligible)
    original_spatial_shape = img.peek_pending_shape()
    src_affine = to_affine_nd(3, img.peek_pending_affine()).to(torch.float64)
    dst_affine = to_affine_nd(3, dst_affine) if dst_affine is not None else src_affine
    dst_affine = convert_to_dst_type(dst_affine, src_affine)[0]
    in_spatial_size = torch.tensor(original_spatial_shape[:3])
    if isinstance(spatial_size, int) and (spatial_size == -1):
        spatial_size = in_spatial_size
    elif spatial_size is None:
        spatial_size, _ = compute_shape_offset(in_spatial_size, src_affine, dst_affine)  # type: ignore[arg-type]
    sizes = fall_back_tuple(ensure_tuple(spatial_size)[:3], in_spatial_size, lambda x: x >= 0)
    spatial_size = torch.tensor(sizes)
    extra_info = {
        "dtype": str(dtype_pt)[6:],
        "mode": _value(mode),
        "padding_mode": _value(padding_mode),
        "align_corners": align_corners,
        "src_affine": src_affine,
    }
    xform_np = np.linalg.solve(convert_to_numpy(src_affine), convert_to_numpy(dst_affine))
    xform = torch.as_tensor(to_affine_nd(3, xform_np)).to(device=img.device, dtype=torch.float64)
    affine_unchanged = (
        allclose(src_affine, dst_affine, atol=AFFINE_TOL) and allclose(spatial_size, in_spatial_size)
    ) or (allclose(xform, np.eye(len(xform)), atol=AFFINE_TOL) and allclose(spatial_size, in_spatial_size))
    if affine_unchanged:  # MONAI's own function: the float32 input with the metadata, no resampling
        source = img.to(load_dtype) if load_dtype is not None else img
        args = (dst_affine, spatial_size, mode, padding_mode, align_corners, dtype_pt, lazy, transform_info)
        out = functional.spatial_resample(source, *args)
        return out, False
    meta_info = TraceableTransform.track_transform_meta(
        img,
        sp_size=spatial_size,
        affine=xform,
        extra_info=extra_info,
        orig_size=original_spatial_shape,
        transform_info=transform_info,
        lazy=False,
    )
    # AffineTransform(normalized=False, reverse_indexing=True)'s theta, then the grid and samples in slabs
    out_size = (int(spatial_size[0]), int(spatial_size[1]), int(spatial_size[2]))
    theta = to_norm_affine(xform.to(dtype_pt)[None].clone(), tuple(original_spatial_shape), out_size, False)
    reverse = torch.as_tensor([2, 1, 0])
    theta[:, :3] = theta[:, reverse]
    theta[:, :, :3] = theta[:, :, reverse]
    modes = (_value(mode), _value(padding_mode))
    values = resample_slabs(img.as_tensor(), theta[:, :3], out_size, *modes, dtype_pt, load_dtype, argmax)
    out = MetaTensor(values)
    return out.copy_meta_from(meta_info), argmax


class SlabSpatialResample(SpatialResample):
    """MONAI's SpatialResample, resampling in slabs (:func:`spatial_resample`); its inverse too.

    ``load_dtype``: the dtype LoadImaged was to give (its input is converted to it first, forward only).
    ``argmax``: set while a fused Invertd + AsDiscreted(argmax) runs; ``argmax_taken`` counts the calls that
    took it."""

    def __init__(self, original: SpatialResample, load_dtype: torch.dtype | None = None) -> None:
        super().__init__(
            mode=original.mode,
            padding_mode=original.padding_mode,
            align_corners=original.align_corners,
            dtype=original.dtype,
            lazy=original.lazy,
        )
        self.load_dtype = load_dtype
        self.argmax = False
        self.argmax_taken = 0
        self._inverting = False

    def __call__(
        self,
        img: torch.Tensor,
        dst_affine: torch.Tensor | None = None,
        spatial_size: Any = None,
        mode: Any = None,
        padding_mode: Any = None,
        align_corners: bool | None = None,
        dtype: Any = None,
        lazy: bool | None = None,
    ) -> torch.Tensor:
        from monai.utils import get_equivalent_dtype

        load_dtype = None if self._inverting else self.load_dtype
        fallback = load_dtype or img.dtype  # MONAI would see the float32 LoadImaged gave
        dtype_pt = get_equivalent_dtype(dtype or self.dtype or fallback, torch.Tensor)
        out, taken = spatial_resample(
            img,
            dst_affine,
            spatial_size,
            mode if mode is not None else self.mode,
            padding_mode if padding_mode is not None else self.padding_mode,
            align_corners if align_corners is not None else self.align_corners,
            dtype_pt,
            self.lazy if lazy is None else lazy,
            self.get_transform_info(),
            load_dtype,
            self.argmax and self._inverting,
        )
        self.argmax_taken += int(taken)
        return out

    def get_transform_info(self) -> dict[str, Any]:
        """MONAI's record of this transform, under MONAI's class name (what SpatialResample records)."""
        from monai.utils import TraceKeys

        info: dict[str, Any] = super().get_transform_info()
        info[TraceKeys.CLASS_NAME] = SpatialResample.__name__
        return info

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        """MONAI's SpatialResample.inverse, calling this resampler."""
        from monai.utils import TraceKeys, get_torch_dtype_from_string

        transform = self.pop_transform(data)
        kw_args = transform[TraceKeys.EXTRA_INFO]
        kw_args["dtype"] = get_torch_dtype_from_string(kw_args["dtype"])
        kw_args["dst_affine"] = kw_args.pop("src_affine")
        kw_args["spatial_size"] = transform[TraceKeys.ORIG_SIZE]
        if kw_args.get("align_corners") == TraceKeys.NONE:
            kw_args["align_corners"] = False
        self._inverting = True
        try:
            with self.trace_transform(False):
                out: torch.Tensor = self(data, **kw_args)
        finally:
            self._inverting = False
        kw_args["src_affine"] = kw_args.get("dst_affine")
        return out


def _is_float32(dtype: Any) -> bool:
    from monai.utils import get_equivalent_dtype

    try:
        return bool(get_equivalent_dtype(dtype, torch.Tensor) == torch.float32)
    except (TypeError, ValueError, KeyError):
        return False


def _defer_load_dtype(transforms: list[Any], resampler: SlabSpatialResample, keys: set[Any]) -> None:
    """Let the first LoadImaged keep the file's dtype (an int16 CT stays 2 bytes a voxel) when its output
    reaches the Spacingd of ``resampler`` through index-only steps (EnsureChannelFirstd, Orientationd) and
    that Spacingd resamples every key it loads: the resampler then converts to float32 first, as LoadImaged
    would have, so every value downstream is the same."""
    from monai.transforms import EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd

    first = transforms[0] if transforms else None
    if type(first) is not LoadImaged or not _is_float32(first._loader.dtype) or not set(first.keys) <= keys:
        return
    for step in transforms[1:]:
        if type(step) is Spacingd:
            if step.spacing_transform.sp_resample is resampler:
                first._loader.dtype = None
                resampler.load_dtype = torch.float32
            return
        if type(step) not in (EnsureChannelFirstd, Orientationd) or getattr(step, "lazy", False):
            return


def use_slab_resampling(preprocessing: Any) -> list[SlabSpatialResample]:
    """Give each Spacingd of the ``preprocessing`` Compose (not lazy) a :class:`SlabSpatialResample`
    (forward here, inverse wherever an Invertd inverts this Compose), and let LoadImaged keep the file's
    dtype where :func:`_defer_load_dtype` shows that changes no value. Returns the resamplers."""
    from monai.transforms import Compose, Spacingd

    if not isinstance(preprocessing, Compose) or preprocessing.lazy is not False:
        return []
    transforms = list(preprocessing.flatten().transforms)
    resamplers = []
    for step in transforms:
        if type(step) is Spacingd and type(step.spacing_transform.sp_resample) is SpatialResample:
            resampler = SlabSpatialResample(step.spacing_transform.sp_resample)
            step.spacing_transform.sp_resample = resampler
            resamplers.append(resampler)
    if len(resamplers) == 1:
        keys = next(set(s.keys) for s in transforms if type(s) is Spacingd)
        _defer_load_dtype(transforms, resamplers[0], keys)
    return resamplers
