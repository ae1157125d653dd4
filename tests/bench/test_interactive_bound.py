"""bench.interactive's oracle bound for intensity rules (``band_bound``) on a synthetic volume: a missed
part of its own intensity is found by a band; a missed part that looks like its surroundings is not (the
bound is then only the better of adding nothing and adding everything within reach); the bound is never
below the mask's own Dice.

The grid is 4 mm, so the bound's 1 mm smoothing (a quarter voxel) carries no trace of the mask's edge
into its neighbours: what a band finds there is the missed part's intensity, not the blur of the core.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from bench.interactive import BOUND_REACH_MM, band_bound, bound_intensity
from models.interactive.simulated_user import dice

SPACING = (4.0, 4.0, 4.0)


def _spheres(shell_value: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 24³ image: a core (radius 5 voxels, intensity 1.0) inside a shell (to 6 voxels, ``shell_value``)
    on background 0.2, with seeded noise; the reference is core and shell, the mask the core alone."""
    grid = np.indices((24, 24, 24)) - 12
    radius = np.sqrt((grid**2).sum(axis=0))
    core, reference = radius < 5, radius < 6
    image = np.where(core, 1.0, np.where(reference, shell_value, 0.2))
    image = image + np.random.default_rng(0).normal(0, 0.05, image.shape)
    return image.astype(np.float32), reference, core


def _within_reach(mask: np.ndarray) -> np.ndarray:
    return np.asarray(ndimage.distance_transform_edt(~mask, sampling=SPACING) <= BOUND_REACH_MM)


def test_a_missed_part_of_its_own_intensity_is_added_by_a_band() -> None:
    image, reference, mask = _spheres(0.6)
    found, _, (low, high) = band_bound(mask, reference, bound_intensity(image, SPACING), SPACING)
    assert dice(_within_reach(mask), reference) < 0.9
    assert found > 0.99
    assert 0.2 < low < 0.5 < high  # scaled: background 0, core 1 (about the 1st and 99th percentiles)


def test_a_missed_part_that_looks_like_its_surroundings_is_not() -> None:
    image, reference, mask = _spheres(0.2)
    found, _, _ = band_bound(mask, reference, bound_intensity(image, SPACING), SPACING)
    geometric = max(dice(mask, reference), dice(_within_reach(mask), reference))
    assert geometric <= found < geometric + 0.02


def test_the_bound_is_at_least_the_masks_dice() -> None:
    image, reference, _ = _spheres(0.6)
    mask = np.random.default_rng(1).random(reference.shape) < 0.1
    assert band_bound(mask, reference, bound_intensity(image, SPACING), SPACING)[0] >= dice(mask, reference)
