"""The memory-bounded label path: where it computes exactly what MONAI computes, and running it.

MONAI's SlidingWindowInferer keeps the blended logits of every class for the whole image (wholeBody: 105
classes x 300 x 300 x 400 voxels x 4 bytes = 15 GB). When the bundle's post-processing starts with
``Activationsd(softmax)`` (optional) and then ``AsDiscreted(argmax)`` on ``pred``, only the argmax of the
blended logits matters before the rest of the chain (Invertd with nearest interpolation, connected
components, ...), and models.sliding.sliding_window_labels gives that argmax slab by slab: the same windows
(dense_patch_slices, MONAI's scan interval), the same importance map (compute_importance_map with the
inferer's mode and sigma_scale) and the same symmetric zero padding, keeping the weighted logits of one slab
only. softmax is monotonic per voxel, so argmax(softmax(x)) = argmax(x); the division by the summed window
weights is the same positive number for every class of a voxel, so it changes no argmax either. The labels
then go, as a MetaTensor carrying the pre-processed image's metadata (what MONAI's inferer copies onto its
output), through the remaining post-processing steps.

Not taken (MONAI's own inferer and full logits instead, which is exact by definition) when:
  * the inferer is not exactly SlidingWindowInferer, or sets with_coord, another mode than gaussian/constant,
    or padding other than zeros on an image smaller than its roi;
  * the chain applies anything before the argmax (spleen: softmax -> Invertd bilinear on probabilities ->
    argmax interpolates probabilities, so labels are not enough; brats: sigmoid -> Invertd -> threshold);
  * the number of output channels is unknown (not in the manifest).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from models.bundle.build import Pipeline, post_transforms
from models.sliding import sliding_window_labels

PRED = "pred"
# The slab buffer stays float32 (bit-for-bit MONAI's sums, up to summation order) up to this size; beyond
# it float16 halves the memory and can change the argmax only at near-ties (documented in models.sliding).
FLOAT32_BUDGET_BYTES = 1536 << 20


def _is_softmax(step: Any) -> bool:
    return (
        type(step).__name__ == "Activationsd"
        and tuple(step.keys) == (PRED,)
        and tuple(step.softmax) == (True,)
        and not any(step.sigmoid)
        and all(o is None for o in step.other)
    )


def is_argmax(step: Any) -> bool:
    kwargs = getattr(step.converter, "kwargs", {}) if hasattr(step, "converter") else {}
    return (
        type(step).__name__ == "AsDiscreted"
        and tuple(step.keys) == (PRED,)
        and tuple(step.argmax) == (True,)
        and all(v is None for v in step.to_onehot)
        and all(v is None for v in step.threshold)
        and all(v is None for v in step.rounding)
        and kwargs.get("dim", 0) == 0
        and kwargs.get("keepdim", True) is True
    )


def label_steps(pipeline: Pipeline) -> int | None:
    """How many leading post-processing steps the label path replaces (1 or 2), or None: not exact here."""
    from monai.inferers import SlidingWindowInferer

    inferer: Any = pipeline.inferer
    if type(inferer) is not SlidingWindowInferer or inferer.with_coord:
        return None
    if str(inferer.mode) not in ("gaussian", "constant"):
        return None
    steps = post_transforms(pipeline)
    start = 1 if steps and _is_softmax(steps[0]) else 0
    if len(steps) > start and is_argmax(steps[start]):
        return start + 1
    return None


def _overlap(inferer: Any) -> float | None:
    overlap = inferer.overlap
    values = list(overlap) if isinstance(overlap, list | tuple) else [overlap]
    return float(values[0]) if len(set(values)) == 1 else None


def stitched_pred(
    pipeline: Pipeline,
    image: Any,
    out_channels: int,
    device: torch.device,
    on_window: Callable[[int, int], None],
    is_cancelled: Callable[[], bool] | None,
) -> Any | None:
    """The argmax labels (1, 1, X, Y, Z) of one pre-processed batch ``image`` (1, C, X, Y, Z), as a MetaTensor
    with the image's metadata, or None when this image needs MONAI's own path (padding not by zeros,
    per-axis overlaps)."""
    from monai.data import MetaTensor
    from monai.utils import fall_back_tuple

    inferer: Any = pipeline.inferer
    spatial = tuple(int(s) for s in image.shape[2:])
    roi = fall_back_tuple(inferer.roi_size, spatial)
    overlap = _overlap(inferer)
    sigma = inferer.sigma_scale
    sigmas = list(sigma) if isinstance(sigma, list | tuple) else [sigma]
    if len(set(sigmas)) != 1:
        return None
    padded = any(s < r for s, r in zip(spatial, roi, strict=True))
    if overlap is None or len(spatial) != 3:
        return None
    if padded and (str(inferer.padding_mode) != "constant" or float(inferer.cval) != 0.0):
        return None
    array = image[0].detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else image[0]
    labels = sliding_window_labels(
        array,
        pipeline.network,
        num_classes=out_channels,
        roi_size=roi,
        overlap=overlap,
        sw_batch_size=int(inferer.sw_batch_size),
        blend=str(inferer.mode),
        sigma_scale=float(sigmas[0]),
        device=device,
        float32_budget_bytes=FLOAT32_BUDGET_BYTES,
        on_window=on_window,
        is_cancelled=is_cancelled,
    )
    pred = torch.from_numpy(labels.astype("float32"))[None, None]
    if isinstance(image, MetaTensor):
        return MetaTensor(pred, meta=image.meta, applied_operations=image.applied_operations)
    return pred
