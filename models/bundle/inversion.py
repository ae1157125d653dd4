"""Invertd followed by AsDiscreted(argmax), run as one step: the argmax taken slab by slab in the inverse
resampling, so the C-channel probabilities are never made on the input's grid.

The Zoo's spleen_ct_segmentation post-processes with softmax -> Invertd (bilinear, back through Orientationd
and Spacingd) -> argmax. MONAI inverts the 2-channel probabilities onto the whole input grid (float32, 8
bytes per input voxel, after float64 and its grids) and the argmax makes an int64 map (8 bytes per voxel)
before its float32 copy. The values are the same when the argmax is taken in the inverse Spacingd, per slab
of output planes, on the float32 samples MONAI would have made there:

- argmax over channels is per voxel (torch's: the first of equal maxima), so slabs change nothing;
- the steps Invertd runs after that resampling move voxels without computing with them (Orientationd's
  flips and axis permutations), so argmax commutes with them; this is the only kind of step allowed
  besides the one Spacingd (any other invertible pre-processing step: not fused);
- AsDiscreted(argmax) without one-hot, threshold or rounding, on ``dim=0`` with ``keepdim``, gives that
  index as float32, which is what the resampler writes.

The metadata is MONAI's own: Invertd runs as configured (models.bundle.slab_resample records the inverse
Spacingd as MONAI does) and only the number of channels of its output differs. Where the slab path does
not apply (MONAI's own function ran, e.g. an unchanged grid), the AsDiscreted step runs as usual.
"""

from __future__ import annotations

from typing import Any

from models.bundle.slab_resample import SlabSpatialResample
from models.bundle.stitching import PRED, is_argmax

_INDEX_ONLY = ("Orientationd",)  # invertible steps whose inverse only moves voxels


def _resampler(invert: Any) -> SlabSpatialResample | None:
    """The one slab resampler of the Compose ``invert`` inverts, when every other invertible step in it only
    moves voxels; else None."""
    from monai.transforms import Compose, InvertibleTransform, Spacingd

    transform = getattr(invert, "transform", None)
    if not isinstance(transform, Compose):
        return None
    found = []
    for step in transform.flatten().transforms:
        if not isinstance(step, InvertibleTransform):
            continue
        if type(step) is Spacingd and isinstance(step.spacing_transform.sp_resample, SlabSpatialResample):
            found.append(step.spacing_transform.sp_resample)
        elif type(step).__name__ not in _INDEX_ONLY or type(step).__module__.split(".")[0] != "monai":
            return None
    return found[0] if len(found) == 1 else None


def _fusable(invert: Any, discrete: Any) -> SlabSpatialResample | None:
    import torch

    if type(invert).__name__ != "Invertd" or tuple(invert.keys) != (PRED,) or not is_argmax(discrete):
        return None
    kwargs = getattr(getattr(discrete, "converter", None), "kwargs", {})
    if any(f is not None for f in invert.post_func) or kwargs.get("dtype", torch.float) != torch.float32:
        return None
    return _resampler(invert)


class InvertArgmax:
    """``discrete(invert(data))`` with the argmax taken inside the inverse resampling (module docstring)."""

    def __init__(self, invert: Any, discrete: Any, resampler: SlabSpatialResample) -> None:
        self.invert, self.discrete, self.resampler = invert, discrete, resampler

    def __call__(self, data: Any) -> Any:
        self.resampler.argmax, self.resampler.argmax_taken = True, 0
        try:
            out = self.invert(data)
        finally:
            self.resampler.argmax = False
        return out if self.resampler.argmax_taken == 1 else self.discrete(out)


def fuse_invert_argmax(steps: list[Any]) -> list[Any]:
    """``steps`` with each Invertd + AsDiscreted(argmax) pair that :class:`InvertArgmax` computes exactly
    replaced by one InvertArgmax (the list unchanged where there is none)."""
    out: list[Any] = []
    index = 0
    while index < len(steps):
        step = steps[index]
        resampler = _fusable(step, steps[index + 1]) if index + 1 < len(steps) else None
        if resampler is not None:
            out.append(InvertArgmax(step, steps[index + 1], resampler))
            index += 2
        else:
            out.append(step)
            index += 1
    return out
