"""The simulated user of interactive-segmentation papers, shared by the tests and ``bench.interactive``.

Protocol: each click goes to the centre of the largest error region of the current mask against the
reference (3D components, face connectivity, largest by voxel count); a false-negative region gets a
foreground click, a false-positive region a background click. The first click, on an empty mask, is thus
at the centre of the structure's largest component. The centre is the voxel farthest from the region's
boundary (Euclidean distance transform in mm, with the image's edge counting as boundary); among equally
far voxels, the one nearest their centroid, then the first in scan order, so the protocol is deterministic.

Conventions: masks are bool arrays (I, J, K); spacing in mm along I, J, K.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from models.interactive.engine import InteractiveEngine
from models.interactive.prompts import Click, Prompt


def dice(mask: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two bool masks of one shape; 1.0 when both are empty."""
    both = int(np.count_nonzero(mask & reference))
    total = int(np.count_nonzero(mask)) + int(np.count_nonzero(reference))
    return 1.0 if total == 0 else 2.0 * both / total


def next_click(mask: np.ndarray, reference: np.ndarray, spacing_mm: Sequence[float]) -> Click | None:
    """The protocol's next click for ``mask`` against ``reference``; None when they agree."""
    if mask.shape != reference.shape:
        raise ValueError(f"mask shape {mask.shape} != reference shape {reference.shape}")
    best: tuple[int, bool, np.ndarray] | None = None
    for foreground, error in ((True, reference & ~mask), (False, mask & ~reference)):
        labels, count = ndimage.label(error)
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        largest = int(np.argmax(sizes))
        # A false negative wins a tie in size: the structure is what the user is after.
        if best is None or sizes[largest] > best[0]:
            best = (int(sizes[largest]), foreground, labels == largest + 1)
    if best is None:
        return None
    _, foreground, region = best
    # Padding puts background around the image, so the image's edge is boundary too.
    distance = ndimage.distance_transform_edt(np.pad(region, 1), sampling=tuple(spacing_mm))[1:-1, 1:-1, 1:-1]
    # The farthest voxels form a plateau in a box-like region: take the one nearest the plateau's centroid.
    plateau = np.argwhere(distance == distance.max())
    offsets = (plateau - plateau.mean(axis=0)) * np.asarray(spacing_mm)
    i, j, k = plateau[int(np.argmin((offsets * offsets).sum(axis=1)))]
    return Click((int(i), int(j), int(k)), foreground=foreground)


@dataclass(frozen=True)
class Step:
    """After click number ``clicks`` (1-based): its prompt, the Dice of the mask, the seconds ``segment``
    took, and the mask."""

    clicks: int
    prompt: Prompt
    dice: float
    seconds: float
    mask: np.ndarray


def simulate(
    engine: InteractiveEngine,
    prepared: Any,
    reference: np.ndarray,
    spacing_mm: Sequence[float],
    n_clicks: int,
) -> list[Step]:
    """Up to ``n_clicks`` clicks of the protocol (fewer when the mask matches the reference exactly)."""
    reference = np.asarray(reference, dtype=bool)
    mask = np.zeros(reference.shape, dtype=bool)
    prompts: list[Prompt] = []
    steps: list[Step] = []
    for n in range(1, n_clicks + 1):
        click = next_click(mask, reference, spacing_mm)
        if click is None:
            break
        prompts.append(click)
        start = time.perf_counter()
        mask = np.asarray(engine.segment(prepared, tuple(prompts)), dtype=bool)
        seconds = time.perf_counter() - start
        steps.append(Step(n, click, dice(mask, reference), seconds, mask))
    return steps
