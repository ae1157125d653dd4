"""nnU-Net's export of logits to a label map on the original grid, in slabs of output planes.

nnU-Net's ``convert_predicted_logits_to_segmentation_with_correct_shape`` resamples the logits of every
channel to the original (cropped) shape at once: a float64 copy of all channels on the model's grid plus a
(channels x original voxels) float16 array, then an int64 argmax; for a 512x512x400 CT and a 25-class model
that is over 6 GB. This module gives the same labels:

- each channel's values on the original grid are those of the configuration's
  ``resampling_fn_probabilities`` (nnU-Net's ``resample_data_or_seg_to_shape``: skimage's resize, i.e.
  ``ndimage.zoom`` in grid mode with mode "nearest", clipped to the channel's range, cast to the logits'
  dtype). Where that resampling is not split by axis (``separate_z``), they are computed a slab of output
  planes at a time (:func:`models.nnunet.resample.zoom_slab`, scipy's own interpolation with the slab's
  offset), for all channels, so only the label map is whole; otherwise (anisotropic spacings, another
  resampling function) one whole channel at a time with nnU-Net's function;
- softmax models: a running maximum in the resampled dtype and its argmax, replaced only where a later
  channel is strictly greater, which is numpy's ``argmax`` rule (first maximum wins);
- region models: ``sigmoid(float32(channel)) > 0.5`` writes ``regions_class_order[i]``, regions in order,
  as nnU-Net's ``LabelManager.convert_probabilities_to_segmentation`` does;
- then nnU-Net's ``insert_crop_into_image`` into the uncropped shape and its ``transpose_backward``.

Peak besides the logits, slab path: the label map (1 byte a voxel), a slab of planes of two channels, and for
a spline order above 1 the channels' coefficients on the model's grid (float64). Whole-channel path: one
channel as float64 on the model's grid, two original-grid arrays of the resampled dtype and the label map.
Tests check the labels against ``nnUNetv2_predict`` (all voxels equal).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from models.nnunet.resample import prefilter, zoom_shape, zoom_slab

SLAB_VOXELS = 1 << 20  # output voxels per slab (4 planes of 512 x 512)


def _slab_order(configuration_manager: Any, target_shape: Any, current: Any, transposed: Any) -> int | None:
    """The spline order when the probabilities' resampling can run in slabs, else None."""
    from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis

    config = configuration_manager.configuration
    if config.get("resampling_fn_probabilities") != "resample_data_or_seg_to_shape":
        return None
    kwargs = dict(config.get("resampling_fn_probabilities_kwargs", {}))
    if kwargs.get("is_seg", False):
        return None
    threshold = (
        [kwargs["separate_z_anisotropy_threshold"]] if "separate_z_anisotropy_threshold" in kwargs else []
    )
    separate_z, _axis = determine_do_sep_z_and_axis(
        kwargs.get("force_separate_z", False), current, transposed, *threshold
    )
    if separate_z:
        return None
    return int(kwargs.get("order", 3))


def _channels_in_slabs(data: np.ndarray, target_shape: tuple[int, ...], order: int) -> Iterator[Any]:
    """Per slab of output planes: (slice, an iterator of each channel's resampled planes as nnU-Net's
    function gives them, made one channel at a time)."""
    shape = tuple(int(n) for n in data.shape[1:])
    resample = shape != tuple(target_shape)
    # scipy's interpolation reads float32/float64 (nnU-Net's CPU logits are float16: widened, same values)
    readable = data if data.dtype in (np.float32, np.float64) else None
    filtered = [
        prefilter(data[c], order)
        if resample and order > 1
        else (readable[c] if readable is not None else data[c].astype(np.float32))
        for c in range(len(data))
    ]
    ranges = [(float(data[c].min()), float(data[c].max())) for c in range(len(data))] if resample else []

    def planes(start: int, stop: int) -> Iterator[np.ndarray]:
        for c in range(len(data)):
            if not resample:
                yield data[c, start:stop]
                continue
            slab = zoom_slab(filtered[c], target_shape, order, start, stop, order > 1)
            np.clip(slab, ranges[c][0], ranges[c][1], out=slab)  # skimage's clip to the input's range
            yield slab.astype(data.dtype)

    step = max(1, SLAB_VOXELS // max(1, int(np.prod(target_shape[1:]))))
    for start in range(0, target_shape[0], step):
        stop = min(start + step, target_shape[0])
        yield slice(start, stop), planes(start, stop)


def _whole_channels(
    data: np.ndarray, target_shape: Any, configuration_manager: Any, current: Any, spacing: Any
) -> Iterator[Any]:
    """One slab of all planes per channel, by nnU-Net's own resampling function."""
    for channel in range(data.shape[0]):
        resampled = configuration_manager.resampling_fn_probabilities(
            data[channel : channel + 1], target_shape, current, spacing
        )[0]
        yield channel, np.asarray(resampled)


def logits_to_labels(
    logits: torch.Tensor, plans_manager: Any, configuration_manager: Any, label_manager: Any, properties: dict
) -> np.ndarray:
    """Labels on the original grid (nnU-Net's (z, y, x) order) from (C, *model grid) logits.

    Same arguments and result as nnU-Net's
    ``convert_predicted_logits_to_segmentation_with_correct_shape(..., return_probabilities=False)``.
    """
    target_shape, current, transposed = _grids(configuration_manager, plans_manager, properties)
    data = logits.numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    segmentation = empty_labels(label_manager, target_shape)
    order = _slab_order(configuration_manager, target_shape, current, transposed)
    if (
        order is not None
        and len(target_shape) == 3
        and (
            tuple(data.shape[1:]) == target_shape
            or zoom_shape(data.shape[1:], target_shape)[0] == target_shape
        )
    ):
        for where, planes in _channels_in_slabs(data, target_shape, order):
            _label(segmentation[where], planes, label_manager)
    else:
        best: np.ndarray | None = None
        for channel, resampled in _whole_channels(
            data, target_shape, configuration_manager, current, transposed
        ):
            best = _label_channel(segmentation, best, channel, resampled, label_manager)
    return uncrop(segmentation, plans_manager, label_manager, properties)


def _grids(
    configuration_manager: Any, plans_manager: Any, properties: dict
) -> tuple[tuple[int, ...], Any, Any]:
    """(the cropped original shape the export writes, the model grid's spacing, the original spacing), both
    spacings in transposed axes, as nnU-Net's export computes them."""
    transposed = [properties["spacing"][i] for i in plans_manager.transpose_forward]
    target_shape = tuple(int(n) for n in properties["shape_after_cropping_and_before_resampling"])
    spacing = configuration_manager.spacing
    current = spacing if len(spacing) == len(target_shape) else [transposed[0], *spacing]
    return target_shape, current, transposed


def export_order(configuration_manager: Any, plans_manager: Any, properties: dict) -> int | None:
    """The spline order of the probabilities' resampling where the export can run in slabs, else None."""
    return _slab_order(configuration_manager, *_grids(configuration_manager, plans_manager, properties))


def empty_labels(label_manager: Any, shape: tuple[int, ...]) -> np.ndarray:
    """The export's label map on the cropped grid before any slab is labelled (uint16 for region models)."""
    return np.zeros(shape, dtype=np.uint16 if label_manager.has_regions else _labels_dtype(label_manager))


class SameGridExport:
    """The export fed by finished planes (:mod:`models.nnunet.streaming`) where the model grid is the cropped
    original one: each run of planes is labelled as the export labels it without resampling."""

    def __init__(self, label_manager: Any, target: Any) -> None:
        self.label_manager = label_manager
        self.segmentation = empty_labels(label_manager, tuple(int(n) for n in target))

    def feed(self, planes: slice, logits: np.ndarray) -> None:
        """Finished planes ``planes`` (C, n, ...) float16 of the original grid, labelled now."""
        _label(self.segmentation[planes], (logits[c] for c in range(len(logits))), self.label_manager)

    def close(self) -> None:
        """Nothing held beyond the label map."""


def streamed_export(
    kind: str, label_manager: Any, model_shape: tuple[int, ...], target: Any, order: int
) -> SameGridExport | StreamedExport:
    """The export for ``models.nnunet.streaming.stream_kind``'s ``kind`` ("same" or "resampled")."""
    if kind == "same":
        return SameGridExport(label_manager, target)
    heads = int(label_manager.num_segmentation_heads)
    return StreamedExport(label_manager, heads, model_shape, target, order)


def uncrop(segmentation: np.ndarray, plans_manager: Any, label_manager: Any, properties: dict) -> np.ndarray:
    """nnU-Net's ``insert_crop_into_image`` into the uncropped shape, then its ``transpose_backward``."""
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

    out = np.zeros(properties["shape_before_cropping"], dtype=_labels_dtype(label_manager))
    out = insert_crop_into_image(out, segmentation, properties["bbox_used_for_cropping"])
    if isinstance(out, torch.Tensor):
        out = out.cpu().numpy()
    return np.asarray(out).transpose(plans_manager.transpose_backward)


def _labels_dtype(label_manager: Any) -> type:
    return np.uint8 if len(label_manager.foreground_labels) < 255 else np.uint16


def _label(segmentation: np.ndarray, planes: Iterator[np.ndarray], label_manager: Any) -> None:
    """Labels of one slab (written into ``segmentation``, a view) from every channel's resampled planes."""
    best: np.ndarray | None = None
    for channel, resampled in enumerate(planes):
        best = _label_channel(segmentation, best, channel, resampled, label_manager)


def _label_channel(
    segmentation: np.ndarray, best: np.ndarray | None, channel: int, resampled: np.ndarray, label_manager: Any
) -> np.ndarray | None:
    """One channel into the labels: its region (region models) or the running argmax; returns the running
    maximum (None for region models)."""
    if label_manager.has_regions:
        probability = torch.sigmoid(torch.from_numpy(np.ascontiguousarray(resampled)).float())
        segmentation[(probability > 0.5).numpy()] = label_manager.regions_class_order[channel]
        return None
    if best is None:
        return resampled.copy()
    better = resampled > best
    segmentation[better] = channel
    np.copyto(best, resampled, where=better)
    return best


class StreamedExport:
    """The export's slab path fed by finished planes of the model grid (:mod:`models.nnunet.streaming`), for
    probabilities resampled with order 0 or 1 (nnU-Net's default for them is 1).

    Each channel's planes go into a float32 array of the whole model grid backed by an anonymous memory map:
    scipy's ``zoom_shift`` reads it exactly as it reads the export's whole channel, but only the pages of
    planes written and not yet given back (``madvise(MADV_DONTNEED)`` once no later output plane needs them)
    take memory. An output slab is made once every model plane it reads is finished. Without skimage's clip
    to the channel's range (the range is only known at the end): for order <= 1 the interpolated double is a
    convex combination of float16 logits to within a few double ulps, and the cast to float16 (the logits'
    dtype) rounds it back into the range exactly as the clip would; the tests compare the labels with the
    whole-grid export's.
    """

    def __init__(
        self, label_manager: Any, heads: int, model_shape: tuple[int, ...], target: Any, order: int
    ) -> None:
        if order > 1:
            raise ValueError(f"order {order}: the spline prefilter needs the whole channel")
        self.label_manager, self.order = label_manager, order
        self.model_shape, self.target = model_shape, tuple(int(n) for n in target)
        self.segmentation = empty_labels(label_manager, self.target)
        self.zoom = zoom_shape(model_shape, self.target)[1]
        self.plane_bytes = int(np.prod(model_shape[1:])) * 4
        self.channel_bytes = self.plane_bytes * int(model_shape[0])
        self.memory = mmap.mmap(-1, max(1, heads * self.channel_bytes))
        self.data = np.frombuffer(self.memory, dtype=np.float32).reshape(heads, *model_shape)
        self.finished = 0  # model planes written so far
        self.released = 0  # model planes given back
        self.done = 0  # output planes labelled so far
        self.step = max(1, SLAB_VOXELS // max(1, int(np.prod(self.target[1:]))))

    def _reads(self, output_plane: int) -> tuple[int, int]:
        """Model planes [lo, hi) that output plane ``output_plane`` interpolates from (grid mode)."""
        coordinate = (output_plane + 0.5) * float(self.zoom[0]) - 0.5
        lo = int(np.floor(coordinate))
        n = int(self.model_shape[0])
        return min(max(lo, 0), n - 1), min(max(lo + 2, 1), n)

    def feed(self, planes: slice, logits: np.ndarray) -> None:
        """Finished model planes ``planes`` (C, n, ...) float16; labels every output slab they complete."""
        self.data[:, planes] = logits
        self.finished = int(planes.stop)
        self._emit(final=self.finished == self.model_shape[0])

    def _emit(self, final: bool) -> None:
        while self.done < self.target[0]:
            stop = min(self.done + self.step, self.target[0])
            if not final and self._reads(stop - 1)[1] > self.finished:
                return
            heads = len(self.data)
            slabs = (
                zoom_slab(self.data[c], self.target, self.order, self.done, stop, False).astype(np.float16)
                for c in range(heads)
            )
            _label(self.segmentation[self.done : stop], slabs, self.label_manager)
            self.done = stop
            if self.done < self.target[0]:
                self._release(self._reads(self.done)[0])

    def _release(self, below: int) -> None:
        """Give back the pages of model planes before ``below`` (whole pages only)."""
        if below <= self.released:
            return
        page = mmap.PAGESIZE
        for c in range(len(self.data)):
            start = c * self.channel_bytes + self.released * self.plane_bytes
            stop = c * self.channel_bytes + below * self.plane_bytes
            start, stop = -(-start // page) * page, stop // page * page
            if stop > start:
                self.memory.madvise(mmap.MADV_DONTNEED, start, stop - start)
        self.released = below

    def close(self) -> None:
        del self.data
        self.memory.close()
