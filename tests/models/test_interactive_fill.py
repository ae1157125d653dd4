"""Fill between slices (models.interactive.fill) on the real spleen mask: paint a few of its slices,
interpolate, compare with the slices in between."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.interactive.classical import ClassicalEngine
from models.interactive.fill import fill_between_slices
from models.interactive.prompts import SliceMask
from models.interactive.simulated_user import dice
from segserve.imaging.nifti import read_nifti
from tests.support.paths import DATA

SPLEEN = DATA / "ct/spleen/sub-spleen2_ct_seg-manual.nii.gz"


@pytest.fixture(scope="module")
def spleen_mask() -> np.ndarray:
    """The manual spleen mask (164x166x26, 0.79x0.79x5 mm)."""
    if not SPLEEN.is_file():
        pytest.skip(f"shared data not found: {SPLEEN} (set SEGSERVE_SHARED_DIR)")
    return np.asarray(read_nifti(Path(SPLEEN), "nifti").array) > 0


def _painted(mask: np.ndarray, axis: int, indices: list[int]) -> list[SliceMask]:
    out = []
    for index in indices:
        where: list[Any] = [slice(None)] * 3
        where[axis] = index
        out.append(SliceMask(axis, index, mask[tuple(where)].copy()))
    return out


@pytest.mark.parametrize(("axis", "every", "floor"), [(0, 8, 0.9), (2, 3, 0.8)])
def test_fill_reproduces_the_mask_between_painted_slices(
    spleen_mask: np.ndarray, axis: int, every: int, floor: float
) -> None:
    """Every 8th slice along I (0.79 mm, every 6.4 mm) or every 3rd along K (5 mm slices, every 15 mm):
    between the first and last painted slice the fill matches the manual mask to Dice ``floor``."""
    present = np.nonzero(spleen_mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]
    indices = list(range(int(present.min()) + 1, int(present.max()), every))
    filled = fill_between_slices(_painted(spleen_mask, axis, indices), spleen_mask.shape)
    span: list[Any] = [slice(None)] * 3
    span[axis] = slice(indices[0], indices[-1] + 1)
    assert dice(filled[tuple(span)], spleen_mask[tuple(span)]) > floor
    outside = filled.copy()
    outside[tuple(span)] = False
    assert not outside.any()  # nothing beyond the painted range
    for s in _painted(spleen_mask, axis, indices):  # painted slices are kept as painted
        where: list[Any] = [slice(None)] * 3
        where[axis] = s.index
        assert np.array_equal(filled[tuple(where)], s.mask)


def test_one_slice_is_itself_and_the_later_paint_wins(spleen_mask: np.ndarray) -> None:
    (one,) = _painted(spleen_mask, 2, [13])
    alone = fill_between_slices([one], spleen_mask.shape)
    assert np.array_equal(alone[:, :, 13], one.mask) and alone.sum() == one.mask.sum()
    erased = SliceMask(2, 13, np.zeros_like(one.mask))
    assert not fill_between_slices([one, erased], spleen_mask.shape).any()


def test_the_engine_fills_painted_slices(spleen_mask: np.ndarray) -> None:
    """Through the engine: painted slices alone give the fill; undo (dropping the last) the earlier one."""
    image = np.zeros(spleen_mask.shape, dtype=np.float32)
    engine = ClassicalEngine()
    prepared = engine.prepare(image, (0.79, 0.79, 5.0))
    slices = _painted(spleen_mask, 2, [11, 14, 17])
    assert np.array_equal(engine.segment(prepared, slices), fill_between_slices(slices, spleen_mask.shape))
    assert np.array_equal(
        engine.segment(prepared, slices[:2]), fill_between_slices(slices[:2], spleen_mask.shape)
    )
