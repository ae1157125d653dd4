"""nnU-Net's export of logits to a label map on the original grid, one output channel at a time.

nnU-Net's ``convert_predicted_logits_to_segmentation_with_correct_shape`` resamples the logits of every
channel to the original (cropped) shape at once: a float64 copy of all channels on the model's grid plus a
(channels x original voxels) float16 array, then an int64 argmax; for a 512x512x400 CT and a 25-class model
that is over 6 GB. This module gives the same labels holding one channel at a time:

- each channel is resampled by the configuration's own ``resampling_fn_probabilities`` on its own (nnU-Net's
  resampling loops over channels independently, so a channel's values are the same either way);
- softmax models: a running maximum in the resampled dtype and its argmax, replaced only where a later
  channel is strictly greater, which is numpy's ``argmax`` rule (first maximum wins);
- region models: ``sigmoid(float32(channel)) > 0.5`` writes ``regions_class_order[i]``, regions in order,
  as nnU-Net's ``LabelManager.convert_probabilities_to_segmentation`` does;
- then nnU-Net's ``insert_crop_into_image`` into the uncropped shape and its ``transpose_backward``.

Peak besides the logits: one channel as float64 on the model's grid, two original-grid arrays of the
resampled dtype and the label map. Tests check the labels against ``nnUNetv2_predict`` (all voxels equal).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def logits_to_labels(
    logits: torch.Tensor, plans_manager: Any, configuration_manager: Any, label_manager: Any, properties: dict
) -> np.ndarray:
    """Labels on the original grid (nnU-Net's (z, y, x) order) from (C, *model grid) logits.

    Same arguments and result as nnU-Net's
    ``convert_predicted_logits_to_segmentation_with_correct_shape(..., return_probabilities=False)``.
    """
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

    transposed = [properties["spacing"][i] for i in plans_manager.transpose_forward]
    target_shape = properties["shape_after_cropping_and_before_resampling"]
    spacing = configuration_manager.spacing
    current = spacing if len(spacing) == len(target_shape) else [transposed[0], *spacing]
    data = logits.numpy() if isinstance(logits, torch.Tensor) else logits
    dtype = np.uint8 if len(label_manager.foreground_labels) < 255 else np.uint16
    segmentation: np.ndarray | None = None
    best: np.ndarray | None = None
    for channel in range(data.shape[0]):
        resampled = np.asarray(
            configuration_manager.resampling_fn_probabilities(
                data[channel : channel + 1], target_shape, current, transposed
            )[0]
        )
        if segmentation is None:
            segmentation = np.zeros(resampled.shape, dtype=np.uint16 if label_manager.has_regions else dtype)
        if label_manager.has_regions:
            probability = torch.sigmoid(torch.from_numpy(np.ascontiguousarray(resampled)).float())
            segmentation[(probability > 0.5).numpy()] = label_manager.regions_class_order[channel]
        elif best is None:
            best = resampled.copy()
        else:
            better = resampled > best
            segmentation[better] = channel
            np.copyto(best, resampled, where=better)
        del resampled
    assert segmentation is not None
    out = np.zeros(properties["shape_before_cropping"], dtype=dtype)
    out = insert_crop_into_image(out, segmentation, properties["bbox_used_for_cropping"])
    if isinstance(out, torch.Tensor):
        out = out.cpu().numpy()
    return np.asarray(out).transpose(plans_manager.transpose_backward)
