"""nnU-Net's sliding window with its logits finished a slab of planes at a time, where the export allows it.

nnU-Net's ``predict_sliding_window_return_logits`` accumulates Gaussian-weighted window predictions into a
float16 array of every output channel on the whole (padded) model grid, divides by the summed weights once
every window is done, and only then exports labels. For a 25-class model (TotalSegmentator's parts) on a
whole-body CT resampled to 1.5 mm that array is 2 bytes x 25 channels a voxel, about 3.8 x an int16 input
at 0.8 mm. Here the same numbers are made with only the planes that windows still reach held:

- the windows run in nnU-Net's order (``_internal_get_sliding_window_slicers``: first axis outermost), so
  once the windows starting at plane ``s`` begin, no later window touches a plane before ``s``: those planes
  are final; they are divided by their summed weights, checked for inf as nnU-Net does, labelled and dropped;
- each voxel gets the same float16 additions in the same order as in nnU-Net (``prediction *= gaussian``,
  ``logits[window] += prediction``, ``n_predictions[window] += gaussian``; the Gaussian is nnU-Net's own
  ``compute_gaussian``), then the same ``torch.div``; several folds keep one buffer each and are summed and
  divided as ``predict_logits_from_preprocessed_data`` does (the fold's weights are loaded per group of
  windows, windows within a fold in nnU-Net's order), so every finished logit equals nnU-Net's bit for bit;
- the finished planes go to the export's own labelling (:class:`models.nnunet.export.SameGridExport`),
  which is what the export does for a model grid equal to the original one (no resampling), or to its slab
  resampling (:class:`models.nnunet.export.StreamedExport`).

Used where that holds: CPU results, a 3D patch on a 3D image, and an export without resampling (the
model's grid equals the cropped input's, e.g. a scan already at the plans' spacing, as TotalSegmentator
resamples it before nnU-Net) or one that resamples the probabilities in slabs with order 0 or 1 (nnU-Net's
default; :class:`models.nnunet.export.StreamedExport`). Peak besides the image: per fold a buffer of one
window's extent along the first axis (C x patch[0] x the padded plane, float16; planes still reached are
moved to its front in place) and the label map (and for "resampled", the model planes an output slab reads).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from acvl_utils.cropping_and_padding.padding import pad_nd_image
from nnunetv2.configuration import default_num_processes
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from torch._dynamo import OptimizedModule

_INF = (
    "Encountered inf in predicted array. Aborting... If this problem persists, reduce value_scaling_factor "
    "in compute_gaussian or increase the dtype of predicted_logits to fp32"
)


class _Accumulator:
    """One fold's float16 logits and summed weights on planes ``[base, base + span)`` of the padded grid."""

    def __init__(self, heads: int, plane_shape: tuple[int, ...], span: int) -> None:
        self.heads, self.plane_shape, self.span = heads, plane_shape, span
        self.base = 0
        self.logits = torch.zeros((heads, span, *plane_shape), dtype=torch.half)
        self.weights = torch.zeros((span, *plane_shape), dtype=torch.half)

    def finished(self, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Planes ``[base, start)`` (logits, weights) so far (views: final once no window reaches them)."""
        cut = start - self.base
        return self.logits[:, :cut], self.weights[:cut]

    def shift(self, start: int) -> None:
        """Move the buffer to begin at ``start``, once the planes before it are used: planes already reached
        by earlier windows keep their partial sums (copied to the front), the rest is zeroed."""
        cut = start - self.base
        keep = self.span - cut
        if keep > 0:
            self.logits[:, :keep] = self.logits[:, cut:].clone()
            self.weights[:keep] = self.weights[cut:].clone()
        self.logits[:, max(keep, 0) :] = 0
        self.weights[max(keep, 0) :] = 0
        self.base = start

    def add(self, window: tuple[Any, ...], prediction: torch.Tensor, gaussian: torch.Tensor) -> None:
        """nnU-Net's two additions for one window (``window``: its slicer on the padded (C, ...) grid)."""
        first = window[1]
        local = (slice(first.start - self.base, first.stop - self.base), *window[2:])
        self.logits[(slice(None), *local)] += prediction
        self.weights[local] += gaussian


def stream_kind(predictor: Any, data: Any, target_shape: tuple[int, ...], order: Any) -> str | None:
    """How :func:`stream_labels` can feed the export, or None (nnU-Net's whole-grid logits): "same" where
    the model grid is the cropped input's (no resampling), "resampled" where the export resamples the
    probabilities in slabs with order 0 or 1 (``order``: the export's slab order, None where it takes
    nnU-Net's own resampling function). Needs CPU results and a 3D patch on a 3D image (the logits are
    float16, as in nnU-Net's accumulator, which the "resampled" export relies on)."""
    from models.nnunet.resample import zoom_shape

    shape = tuple(int(n) for n in data.shape[1:])
    if (
        (predictor.perform_everything_on_device and predictor.device.type != "cpu")
        or len(data.shape) != 4
        or len(predictor.configuration_manager.patch_size) != 3
        or order is None
    ):
        return None
    if shape == tuple(target_shape):
        return "same"
    if order <= 1 and zoom_shape(shape, target_shape)[0] == tuple(target_shape):
        return "resampled"
    return None


def stream_labels(
    predictor: Any,
    data: torch.Tensor,
    on_planes: Callable[[slice, np.ndarray], None],
    stopped: Callable[[], bool] = lambda: False,
) -> None:
    """Run every fold's windows over ``data`` (C, d0, d1, d2) float32 and hand each run of finished planes
    to ``on_planes(planes, logits)``: ``planes`` a slice of d0, ``logits`` (heads, n, d1, d2) float16, the
    values of nnU-Net's ``predict_logits_from_preprocessed_data(data)[:, planes]``, in increasing order. Once
    ``stopped()`` says so, no further window runs (the planes still handed over are then not final).

    Raises:
        RuntimeError: a finished logit is inf (nnU-Net's own check and message).
    """
    patch = tuple(int(p) for p in predictor.configuration_manager.patch_size)
    heads = int(predictor.label_manager.num_segmentation_heads)
    folds = predictor.list_of_parameters
    threads = torch.get_num_threads()
    torch.set_num_threads(min(default_num_processes, threads))
    try:
        with torch.inference_mode():
            network = predictor.network.to(predictor.device)
            network.eval()
            padded, revert = pad_nd_image(data, patch, "constant", {"value": 0}, True, None)
            slicers = predictor._internal_get_sliding_window_slicers(padded.shape[1:])
            gaussian = compute_gaussian(patch, sigma_scale=1.0 / 8, value_scaling_factor=10, device="cpu")
            groups: dict[int, list[Any]] = {}
            for window in slicers:
                groups.setdefault(int(window[1].start), []).append(window)
            plane_shape = tuple(int(n) for n in padded.shape[2:])
            accumulators = [_Accumulator(heads, plane_shape, patch[0]) for _ in folds]
            keep = (slice(None), *revert[1:])
            loaded: int | None = None
            for start in [*sorted(groups), int(padded.shape[1])]:
                _finish([acc.finished(start) for acc in accumulators], start, keep, on_planes)
                for acc in accumulators:
                    acc.shift(start)
                if start not in groups or stopped():
                    continue
                for index, (fold, acc) in enumerate(zip(folds, accumulators, strict=True)):
                    if loaded != index:  # predict_logits_from_preprocessed_data loads each fold's weights
                        target = network._orig_mod if isinstance(network, OptimizedModule) else network
                        target.load_state_dict(fold)
                        loaded = index
                    for window in groups[start]:
                        workon = torch.clone(padded[window][None], memory_format=torch.contiguous_format)
                        prediction = predictor._internal_maybe_mirror_and_predict(workon)[0].to("cpu")
                        prediction *= gaussian
                        acc.add(window, prediction, gaussian)
    finally:
        torch.set_num_threads(threads)


def _finish(
    done: list[tuple[torch.Tensor, torch.Tensor]],
    stop: int,
    keep: tuple[slice, ...],
    on_planes: Callable[[slice, np.ndarray], None],
) -> None:
    """Finished planes of every fold: nnU-Net's division, inf check and fold average, padding removed."""
    n = int(done[0][1].shape[0])
    if n == 0:
        return
    combined: torch.Tensor | None = None
    for logits, weights in done:
        torch.div(logits, weights, out=logits)
        if torch.any(torch.isinf(logits)):
            raise RuntimeError(_INF)
        combined = logits if combined is None else combined.add_(logits)
    assert combined is not None
    if len(done) > 1:
        combined /= len(done)
    first = keep[1]
    lo, hi = max(stop - n, first.start or 0), min(stop, first.stop)
    if hi <= lo:
        return
    local = slice(lo - (stop - n), hi - (stop - n))
    offset = first.start or 0
    on_planes(slice(lo - offset, hi - offset), combined[(slice(None), local, *keep[2:])].numpy())
