"""Sigmoid regions to one label map: the smallest region holding a voxel wins (models.regions)."""

from __future__ import annotations

import numpy as np
import pytest

from models.regions import paint_order, region_bits_dtype, region_volumes, regions_to_labels


def _bits(shape: tuple[int, ...], regions: list[tuple[slice, ...]]) -> np.ndarray:
    bits = np.zeros(shape, region_bits_dtype(len(regions)))
    for c, box in enumerate(regions):
        bits[box] |= np.array(1 << c, dtype=bits.dtype)
    return bits


def test_brats_nesting_gives_core_oedema_enhancing() -> None:
    # Channel order as in the Zoo bundle: 0 tumour core, 1 whole tumour, 2 enhancing tumour.
    core, whole, enhancing = np.s_[2:8, 2:8, 2:8], np.s_[1:9, 1:9, 1:9], np.s_[4:6, 4:6, 4:6]
    bits = _bits((10, 10, 10), [core, whole, enhancing])
    labels = regions_to_labels(bits, 3)
    expected = np.zeros((10, 10, 10), np.uint8)
    expected[whole], expected[core], expected[enhancing] = 2, 1, 3
    assert labels.dtype == np.uint8 and np.array_equal(labels, expected)
    assert region_volumes(bits, 3) == [216, 512, 8]
    assert paint_order([216, 512, 8]) == [1, 0, 2]


@pytest.mark.parametrize(
    ("volumes", "order"),
    [
        ([5, 5], [0, 1]),  # a tie: the later channel paints last and wins
        ([3, 9, 1], [1, 0, 2]),
        ([0, 7], [1, 0]),
    ],
)
def test_paint_order_is_largest_first(volumes: list[int], order: list[int]) -> None:
    assert paint_order(volumes) == order


def test_partial_overlap_goes_to_the_smaller_region_whatever_the_channel_order() -> None:
    big, small = np.s_[0:6, 0:4, 0:4], np.s_[4:8, 0:4, 0:4]  # 96 and 64 voxels, 32 shared
    for regions, big_label, small_label in (([big, small], 1, 2), ([small, big], 2, 1)):
        labels = regions_to_labels(_bits((8, 4, 4), regions), 2)
        assert np.all(labels[4:6] == small_label) and np.all(labels[6:8] == small_label)
        assert np.all(labels[0:4] == big_label)


def test_more_than_eight_regions_use_sixteen_bits() -> None:
    regions = [np.s_[c : c + 1, :, :] for c in range(12)]
    bits = _bits((12, 2, 2), regions)
    assert bits.dtype == np.uint16
    labels = regions_to_labels(bits, 12)
    assert [int(v) for v in labels[:, 0, 0]] == list(range(1, 13))
    with pytest.raises(ValueError, match=r"num_regions must be in 1\.\.16, got 17"):
        region_bits_dtype(17)
