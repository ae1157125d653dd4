"""The simulated user's clicks (models.interactive.simulated_user) on small masks whose answers are known."""

from __future__ import annotations

import numpy as np

from models.interactive.prompts import Click
from models.interactive.simulated_user import dice, next_click


def test_first_click_at_the_centre_of_the_structure() -> None:
    reference = np.zeros((20, 20, 20), dtype=bool)
    reference[4:9, 6:13, 2:11] = True  # 5 x 7 x 9 voxels: its centre is (6, 9, 6)
    assert next_click(np.zeros_like(reference), reference, (1.0, 1.0, 1.0)) == Click((6, 9, 6), True)


def test_largest_error_wins_and_a_false_positive_gets_a_background_click() -> None:
    reference = np.zeros((20, 20, 20), dtype=bool)
    reference[2:5, 2:5, 2:5] = True  # 27 voxels, all missed
    mask = np.zeros_like(reference)
    mask[10:15, 10:15, 10:15] = True  # 125 voxels, all wrong
    assert next_click(mask, reference, (1.0, 1.0, 1.0)) == Click((12, 12, 12), False)
    mask[10:15, 10:15, 10:15] = False
    mask[10:12, 10:12, 10:12] = True  # 8 voxels wrong now: the missed cube is larger
    assert next_click(mask, reference, (1.0, 1.0, 1.0)) == Click((3, 3, 3), True)


def test_the_image_edge_is_boundary_and_spacing_counts() -> None:
    """A slab along the image's edge: the centre is in its middle, not at the edge. With 5 mm along the
    last axis and 1 mm in plane, the distance to the boundary is measured in mm."""
    reference = np.zeros((9, 9, 9), dtype=bool)
    reference[:, :, 0:3] = True
    click = next_click(np.zeros_like(reference), reference, (1.0, 1.0, 1.0))
    assert click is not None and click.point == (4, 4, 1)
    reference = np.zeros((21, 21, 5), dtype=bool)
    reference[3:18, 3:18, 1:4] = True  # 15 x 15 x 3 voxels = 15 x 15 x 15 mm
    click = next_click(np.zeros_like(reference), reference, (1.0, 1.0, 5.0))
    assert click is not None and click.point == (10, 10, 2)


def test_agreement_gives_no_click() -> None:
    reference = np.zeros((5, 5, 5), dtype=bool)
    reference[1:3, 1:3, 1:3] = True
    assert next_click(reference.copy(), reference, (1.0, 1.0, 1.0)) is None


def test_dice() -> None:
    a = np.zeros((4, 4, 4), dtype=bool)
    b = np.zeros_like(a)
    assert dice(a, b) == 1.0
    a[0, 0, :] = True  # 4 voxels
    b[0, 0, :2] = True  # 2 voxels, both in a
    assert dice(a, b) == 2 * 2 / 6
