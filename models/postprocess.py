"""Label post-processing: keep the largest connected component of chosen structures (in place)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

# 26-connectivity, as MONAI's KeepLargestConnectedComponent with connectivity=None in 3D.
_FULL = ndimage.generate_binary_structure(3, 3)


def keep_largest_component(labels: np.ndarray, values: Iterable[int]) -> np.ndarray:
    """For each label value in ``values``, set every voxel outside its largest 26-connected component to 0.

    Args:
        labels: integer labels (X, Y, Z); modified in place and returned.
        values: label values to clean (absent values are skipped).
    """
    wanted = sorted({int(v) for v in values if int(v) > 0})
    if not wanted or labels.size == 0:
        return labels
    boxes = ndimage.find_objects(labels.astype(np.int32, copy=False) if labels.dtype.kind == "i" else labels)
    for value in wanted:
        if value > len(boxes) or boxes[value - 1] is None:
            continue
        box = boxes[value - 1]
        region = labels[box]
        mask = region == value
        components, count = ndimage.label(mask, structure=_FULL)
        if count <= 1:
            continue
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        region[(components != 0) & (components != int(np.argmax(sizes)))] = 0
    return labels
