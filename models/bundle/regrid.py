"""A bundle's label map put onto the input's grid in slabs: MONAI's nearest-neighbour values, bounded memory.

When a bundle's post-processing does not invert its spatial pre-processing, its ``pred`` is on the model's
grid and :func:`onto_grid` maps it onto the input's grid with MONAI's
``SpatialResample(mode="nearest", padding_mode="zeros", dtype=float64)``. MONAI does that in one call on the
whole output: torch's ``affine_grid`` builds a (X, Y, Z, 4) float64 base grid and a (X, Y, Z, 3) float64
grid (56 bytes per output voxel, 5.6 GB for a 512x512x400 CT), then ``grid_sample`` and a float32 copy.
:func:`labels_on_grid` gives the same labels a slab of output planes (first axis) at a time:

- the normalised transform ``theta`` is MONAI's (``np.linalg.solve(src, dst)``, ``to_norm_affine`` with the
  whole grids' sizes, the reversed axes of its ``AffineTransform(reverse_indexing=True)``);
- the grid of a slab is torch's for those planes: ``affine_grid``'s base grid (its ``linspace`` per axis,
  scaled by ``(n - 1) / n`` without ``align_corners``, the first axis's values taken at the slab's planes)
  times ``theta`` by the same ``bmm``, one plane's rows at a time into a grid kept for every slab
  (:class:`GridBuffers`); each grid point is one row of that product. That a row's product does not depend
  on how many rows are multiplied together is checked by the tests (every slab of several grids equal to
  ``affine_grid`` of the whole), not proven;
- ``grid_sample`` (nearest, zeros) on each slab, float32 as MONAI returns it, then the service's
  ``to_label_map`` rules (``rint``, 0..65535, uint8 below 256 else uint16).

Not taken (MONAI's own call on the whole output) when MONAI would not resample (same grid) or uses its
compiled resampler (``USE_COMPILED``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from segserve.imaging.volume import Volume

SLAB_VOXELS = 1 << 20  # output voxels per slab (4 planes of 512 x 512: about 70 MiB of grids and values)


def grid_linspace(n: int, dtype: torch.dtype) -> torch.Tensor:
    """ATen's ``linspace_from_neg_one`` without align_corners."""
    if n <= 1:
        return torch.zeros(1, dtype=dtype)
    values = torch.linspace(-1, 1, n, dtype=dtype)
    return values * (n - 1) / n


class GridBuffers:
    """Reusable storage for :func:`slab_grid` over the slabs of one output grid ``size`` (D, H, W) of up to
    ``planes`` planes each: the (1, planes, H, W, 3) grid (``dtype``, 24 bytes per voxel of a slab in
    float64) and the base grid of one plane (1, H * W, 4), whose x, y and constant columns are written once.
    Allocated once instead of per slab, and the base of one plane instead of the slab's: fresh grids for
    slab after slab left glibc's heap holding more each time (on a 256^3 output the process's resident
    memory grew by 150 MiB over the 16 slabs), and no slab-sized base grid lives beside the sampling."""

    def __init__(self, size: tuple[int, int, int], planes: int, dtype: torch.dtype) -> None:
        depth, height, width = size
        self.size, self.dtype = tuple(size), dtype
        self.planes = max(1, min(planes, depth))
        base = torch.empty((1, 1, height, width, 4), dtype=dtype)
        base[..., 0].copy_(grid_linspace(width, dtype))
        base[..., 1].copy_(grid_linspace(height, dtype).unsqueeze(-1))
        base[..., 3].fill_(1)
        self.base = base.view(1, height * width, 4)
        self.grid = torch.empty((1, self.planes, height, width, 3), dtype=dtype)
        self.depth = grid_linspace(depth, dtype)


def slab_grid(
    theta: torch.Tensor,
    size: tuple[int, int, int],
    start: int,
    stop: int,
    buffers: GridBuffers | None = None,
) -> torch.Tensor:
    """``F.affine_grid(theta, [1, 1, *size], align_corners=False)[:, start:stop]``, built for those planes,
    one plane's rows of torch's ``base.bmm(theta^T)`` at a time. With ``buffers`` (made for ``size`` and
    ``theta``'s dtype, at least ``stop - start`` planes) the grid is a view of ``buffers.grid``, valid until
    the next call with the same buffers."""
    if buffers is None:
        buffers = GridBuffers(size, stop - start, theta.dtype)
    if buffers.size != tuple(size) or buffers.dtype != theta.dtype or stop - start > buffers.planes:
        raise ValueError(f"grid buffers {buffers.size} x {buffers.planes} do not fit {size}[{start}:{stop}]")
    grid = buffers.grid[:, : stop - start]
    rows = grid.view(1, stop - start, -1, 3)
    matrix = theta.transpose(1, 2)
    for plane in range(start, stop):
        buffers.base[..., 2].copy_(buffers.depth[plane])
        torch.bmm(buffers.base, matrix, out=rows[:, plane - start])
    return grid


def _theta(pred: Any, volume: Volume) -> torch.Tensor | None:
    """MONAI's normalised (1, 3, 4) transform for this resampling, or None: MONAI would not resample here,
    or would use its compiled resampler."""
    from monai.config import USE_COMPILED
    from monai.data.utils import AFFINE_TOL, to_affine_nd
    from monai.networks.utils import to_norm_affine
    from monai.transforms.utils_pytorch_numpy_unification import allclose
    from monai.utils import convert_to_numpy

    if USE_COMPILED:
        return None
    src_affine = to_affine_nd(3, pred.peek_pending_affine()).to(torch.float64)
    dst_affine = torch.as_tensor(volume.affine, dtype=torch.float64)
    xform = np.linalg.solve(convert_to_numpy(src_affine), convert_to_numpy(dst_affine))
    xform_t = torch.as_tensor(to_affine_nd(3, xform), dtype=torch.float64)
    in_size = tuple(int(n) for n in pred.peek_pending_shape())
    sizes = (torch.tensor(tuple(volume.shape)), torch.tensor(in_size))
    # MONAI's test for returning the input unresampled (functional.spatial_resample)
    if (allclose(src_affine, dst_affine, atol=AFFINE_TOL) and allclose(*sizes)) or (
        allclose(xform_t, np.eye(4), atol=AFFINE_TOL) and allclose(*sizes)
    ):
        return None
    theta = to_norm_affine(xform_t[None].clone(), in_size, tuple(volume.shape), False, False)
    reverse = torch.as_tensor([2, 1, 0])
    theta[:, :3] = theta[:, reverse]
    theta[:, :, :3] = theta[:, :, reverse]
    return theta[:, :3]


def labels_on_grid(pred: Any, volume: Volume, model_id: str) -> np.ndarray:
    """``to_label_map(onto_grid(pred, volume), volume.shape, model_id)``, in slabs where onto_grid
    resamples."""
    from monai.data import MetaTensor

    theta = None
    if isinstance(pred, MetaTensor) and pred.ndim == 4:
        same_affine = np.allclose(np.asarray(pred.affine, dtype=np.float64), volume.affine, atol=1e-4)
        if not (tuple(pred.shape[1:]) == tuple(volume.shape) and same_affine):
            theta = _theta(pred, volume)
    if theta is None or pred.shape[0] != 1:
        return to_label_map(onto_grid(pred, volume), volume.shape, model_id)
    source = pred.as_tensor().detach().to(torch.float64).unsqueeze(0).contiguous()
    values = source[torch.isfinite(source)]
    wide = bool(values.numel()) and float(values.max()) >= 255.5
    size = tuple(int(n) for n in volume.shape)
    out = np.empty(size, dtype=np.uint16 if wide else np.uint8)
    step = max(1, SLAB_VOXELS // max(1, size[1] * size[2]))
    buffers = GridBuffers(size, step, theta.dtype)  # type: ignore[arg-type]
    rounded = np.empty((min(step, size[0]), size[1], size[2]), dtype=np.float32)
    for start in range(0, size[0], step):
        stop = min(start + step, size[0])
        grid = slab_grid(theta, size, start, stop, buffers)  # type: ignore[arg-type]
        part = F.grid_sample(source, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        labels = rounded[: stop - start]
        torch.from_numpy(labels).copy_(part[0, 0])  # float32, as MONAI returns it
        del part
        np.rint(labels, out=labels)
        if labels.size and (labels.min() < 0 or labels.max() > 65535):
            raise ValueError(f"model {model_id} returned label values outside 0..65535")
        out[start:stop] = labels
    if wide and (out.size == 0 or out.max() < 256):
        return out.astype(np.uint8)
    return out


def onto_grid(pred: torch.Tensor, volume: Volume) -> torch.Tensor:
    """``pred`` (1, X, Y, Z) on the input's grid. A bundle whose postprocessing inverts its spatial
    pre-processing (Invertd) already gives that and is returned unchanged; otherwise MONAI's runner would
    write it on the model grid, and the service maps it by nearest neighbour with MONAI's SpatialResample
    from the MetaTensor's affine to the input's (labels are never interpolated)."""
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    if not isinstance(pred, MetaTensor) or pred.ndim != 4:
        return pred
    same_affine = np.allclose(np.asarray(pred.affine, dtype=np.float64), volume.affine, atol=1e-4)
    if tuple(pred.shape[1:]) == tuple(volume.shape) and same_affine:
        return pred
    resample = SpatialResample(mode="nearest", padding_mode="zeros", dtype=np.float64)
    moved = resample(
        pred, dst_affine=torch.as_tensor(volume.affine, dtype=torch.float64), spatial_size=volume.shape
    )
    return torch.as_tensor(moved)


def to_label_map(pred: torch.Tensor, shape: Sequence[int], model_id: str) -> np.ndarray:
    """``pred`` (1, I, J, K) or (I, J, K) as uint8/uint16 labels of ``shape``; ValueError otherwise."""
    array = pred.as_tensor().numpy() if hasattr(pred, "as_tensor") else pred.numpy()
    if array.ndim == len(shape) + 1 and array.shape[0] == 1:
        array = array[0]
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"model {model_id} returned a {array.shape} label map for a {tuple(shape)} input")
    # rint is monotonic, so these are the extremes of the rounded values (NaN included, as np.min gives it)
    low, high = (np.rint(array.min()), np.rint(array.max())) if array.size else (0.0, 0.0)
    if array.size and (low < 0 or high > 65535):
        raise ValueError(f"model {model_id} returned label values outside 0..65535")
    out = np.empty(array.shape, dtype=np.uint8 if array.size == 0 or high < 256 else np.uint16)
    step = max(1, SLAB_VOXELS // max(1, int(np.prod(array.shape[1:]))))
    for start in range(0, array.shape[0], step):  # rounded a slab at a time: no float copy of the whole
        out[start : start + step] = np.rint(array[start : start + step])
    return out
