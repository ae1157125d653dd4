"""Sigmoid multi-label outputs (e.g. BraTS) to one label map: the innermost region wins.

A sigmoid bundle's channels are regions that may overlap or nest (BraTS: 0 tumour core TC, 1 whole tumour
WT, 2 enhancing tumour ET, with ET inside TC inside WT). Region ``c`` gets label value ``c + 1``. Where
regions overlap, the voxel takes the label of the SMALLEST region (fewest voxels in this prediction)
containing it, i.e. regions are painted largest first and smaller ones overwrite them; ties go to the
later channel. For nested regions this keeps every region's rim visible; for BraTS it gives the usual
sub-regions:

    1  TC and not ET   necrotic / non-enhancing tumour core
    2  WT and not TC   peritumoral oedema
    3  ET              enhancing tumour

(The Zoo bundle's own Lambdad writes 4 for ET, the BraTS 2018 convention; its code is never run here.)

Regions arrive as bits of one unsigned integer per voxel (bit c set: region c's blended logit > 0, i.e.
its sigmoid > 0.5), so memory is 1 or 2 bytes per voxel however many regions there are.
"""

from __future__ import annotations

import numpy as np


def region_bits_dtype(num_regions: int) -> type[np.unsignedinteger]:
    """uint8 for up to 8 regions, uint16 for up to 16."""
    if not 1 <= num_regions <= 16:
        raise ValueError(f"num_regions must be in 1..16, got {num_regions}")
    return np.uint8 if num_regions <= 8 else np.uint16


def region_volumes(bits: np.ndarray, num_regions: int) -> list[int]:
    """Voxel count of each region, from the bit masks (X, Y, Z); one slab at a time, no full-size copy."""
    patterns = np.zeros(1 << num_regions, dtype=np.int64)
    for plane in bits:
        patterns += np.bincount(plane.ravel(), minlength=patterns.size)[: patterns.size]
    codes = np.arange(patterns.size)
    return [int(patterns[(codes >> c) & 1 == 1].sum()) for c in range(num_regions)]


def paint_order(volumes: list[int]) -> list[int]:
    """Region indices in painting order: largest first, ties by channel index (later paints later)."""
    return sorted(range(len(volumes)), key=lambda c: (-volumes[c], c))


def regions_to_labels(bits: np.ndarray, num_regions: int) -> np.ndarray:
    """The label map of region bit masks: value c + 1 for the smallest region c holding the voxel.

    Args:
        bits: (X, Y, Z) uint8/uint16, bit c set where region c is present.
        num_regions: number of regions (bits used), 1..16.
    Returns:
        uint8 labels (X, Y, Z), 0 where no region is present.
    """
    order = paint_order(region_volumes(bits, num_regions))
    # One label per bit pattern, applied as a lookup table: the last painted region present wins.
    table = np.zeros(1 << num_regions, dtype=np.uint8)
    codes = np.arange(table.size)
    for c in order:
        table[(codes >> c) & 1 == 1] = c + 1
    labels = np.empty(bits.shape, dtype=np.uint8)
    for index, plane in enumerate(bits):
        labels[index] = table[plane]
    return labels
