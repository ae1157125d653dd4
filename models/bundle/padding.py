"""MONAI's sliding-window inference on an image smaller than its roi, without a second copy of the image.

``monai.inferers.sliding_window_inference`` pads an image that is smaller than ``roi_size`` along some axis
(symmetric ``F.pad`` with the inferer's ``padding_mode`` and ``cval``), runs its windows on the padded copy
and crops the padding off its output. While the network runs, the caller's unpadded image and MONAI's
padded copy are both alive: for BraTS (4 x 240 x 240 x 155 float32 padded to the 240 x 240 x 160 roi) that
is 143 MB on top of about 3 GB of activations.

:func:`infer_prepadded` makes the same padded tensor first (MONAI's own arithmetic and ``F.pad`` call),
keeps only that tensor, and hands it to the very same inferer, which then finds nothing to pad: the same
windows, importance map and blending on the same values. The output is cropped exactly as MONAI crops it
and carries the unpadded image's metadata, as MONAI's output does; the unpadded image comes back as a view
of the padded tensor's interior (the same values), with its own metadata, for the post-processing
(``Invertd`` reads its applied operations).

Only taken for exactly ``SlidingWindowInferer`` with no ``with_coord``, no ``cpu_thresh`` (it looks at the
unpadded size) and no extra inferer arguments, on an image that needs padding; anything else runs MONAI's
inferer unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F


def pad_sizes(spatial: tuple[int, ...], roi: tuple[int, ...]) -> list[int]:
    """``F.pad``'s ``pad`` argument as sliding_window_inference computes it (last axis first; the smaller
    half before the image)."""
    pad: list[int] = []
    for k in range(len(spatial) - 1, -1, -1):
        diff = max(int(roi[k]) - int(spatial[k]), 0)
        pad.extend([diff // 2, diff - diff // 2])
    return pad


def _applies(inferer: Any, image: Any) -> tuple[list[int], str, tuple[int, ...]] | None:
    from monai.inferers import SlidingWindowInferer
    from monai.utils import PytorchPadMode, fall_back_tuple, look_up_option

    if type(inferer) is not SlidingWindowInferer or inferer.with_coord or inferer.cpu_thresh is not None:
        return None
    if not isinstance(image, torch.Tensor) or image.ndim < 3:
        return None
    spatial = tuple(int(s) for s in image.shape[2:])
    roi = tuple(int(r) for r in fall_back_tuple(inferer.roi_size, spatial))
    pad = pad_sizes(spatial, roi)
    if not any(pad):
        return None
    return pad, str(look_up_option(inferer.padding_mode, PytorchPadMode)), roi


def _unpad(output: torch.Tensor, pad: list[int], spatial: tuple[int, ...], roi: tuple[int, ...]) -> Any:
    """The crop sliding_window_inference applies to each output (its zoom for outputs on another grid)."""
    n = len(spatial)
    zoom = [int(o) / int(r) for o, r in zip(output.shape[2:], roi, strict=True)]
    crop: list[slice] = []
    for sp in range(n):
        si = n - sp - 1
        crop.insert(0, slice(round(pad[sp * 2] * zoom[si]), round((pad[sp * 2] + spatial[si]) * zoom[si])))
    return output[(slice(None), slice(None), *crop)]


def infer_prepadded(inferer: Any, batch: dict[str, Any], key: str, network: Callable[..., Any]) -> Any | None:
    """``inferer(batch[key], network)`` as MONAI computes it, holding one copy of the image, or None (nothing
    run) where the inferer would not pad or is not plain MONAI (see the module docstring).

    ``batch[key]`` (B, C, *spatial) must be referenced only by ``batch``: it is replaced, for the time of the
    forward pass, by the padded tensor and afterwards by a view of that tensor's interior with the original
    metadata."""
    from monai.data import MetaTensor
    from monai.utils import convert_data_type, convert_to_dst_type

    image = batch[key]
    found = _applies(inferer, image)
    if found is None:
        return None
    pad, mode, roi = found
    spatial = tuple(int(s) for s in image.shape[2:])
    # what MONAI keeps of the input for its output (temp_meta), and the image's own metadata
    meta = MetaTensor([]).copy_meta_from(image, copy_attr=False) if isinstance(image, MetaTensor) else None
    plain = convert_data_type(image, torch.Tensor, wrap_sequence=True)[0]
    padded = F.pad(plain, pad=pad, mode=mode, value=inferer.cval)
    batch[key] = padded
    del image, plain
    output = inferer(padded, network)
    # MONAI packs several outputs as a tuple or a dict and converts the pack to the input's type at the end
    if isinstance(output, dict):
        packed: Any = {k: _unpad(v, pad, spatial, roi) for k, v in output.items()}
    elif isinstance(output, tuple | list):
        packed = tuple(_unpad(v, pad, spatial, roi) for v in output)
    else:
        packed = _unpad(output, pad, spatial, roi)
    restored = _unpad(padded, pad, spatial, tuple(padded.shape[2:]))
    if meta is None:
        batch[key] = restored
        return packed
    batch[key] = MetaTensor(restored).copy_meta_from(meta, copy_attr=False)
    return convert_to_dst_type(packed, meta, device=inferer.device or padded.device)[0]
