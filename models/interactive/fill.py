"""Fill between slices: a 3D mask from a structure painted on a few slices, as 3D Slicer's effect does.

ITK's MorphologicalContourInterpolator (Albu, Beare, Fernandez-Perez: "A morphology-based approach for
interslice interpolation of anatomical slices from volumetric images", IEEE TBME 2008), the algorithm
Slicer's "Fill between slices" runs, from the ``itk-morphologicalcontourinterpolation`` module for ITK's
Python wheels. (SimpleITK 2.5 does not wrap it.)

Conventions: voxel indices in the array's axis order (I, J, K), as in :mod:`models.interactive.prompts`.
A painted slice with nothing on it is not an annotation (the interpolator takes a slice as annotated when
it holds the label), so it neither stops nor starts the structure. Two slices painted at the same
(axis, index): the later prompt wins, so undo (dropping it) brings the earlier back. Slices between the
first and the last painted slice along an axis are filled; nothing is extrapolated beyond them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from models.interactive.prompts import SliceMask


def fill_between_slices(slices: Sequence[SliceMask], shape: tuple[int, int, int]) -> np.ndarray:
    """The 3D mask (bool, ``shape``) interpolated between the painted ``slices`` (already checked against
    ``shape`` by :func:`models.interactive.prompts.check_prompts`). Slices on one axis interpolate along it;
    slices on several axes interpolate along each of them (the interpolator's "all axes" mode)."""
    painted: dict[tuple[int, int], np.ndarray] = {}
    for s in slices:
        painted[(s.axis, s.index)] = np.asarray(s.mask, dtype=bool)
    volume = np.zeros(shape, dtype=np.uint8)
    for (axis, index), mask in painted.items():
        where: list[Any] = [slice(None)] * 3
        where[axis] = index
        volume[tuple(where)] = mask
    axes = {axis for (axis, _), mask in painted.items() if mask.any()}
    if len(painted) < 2 or not axes:
        return volume.astype(bool)
    # Imported here: loading ITK's wrappers takes seconds, and only painted slices need them.
    import itk

    image = itk.image_from_array(np.ascontiguousarray(volume))
    interpolator = itk.MorphologicalContourInterpolator.New(image)
    # ITK orders axes fastest first, the reverse of the array: array axis a is ITK axis 2 - a.
    interpolator.SetAxis(2 - axes.pop() if len(axes) == 1 else -1)
    interpolator.SetLabel(1)
    interpolator.Update()
    filled = itk.array_from_image(interpolator.GetOutput()) > 0
    return np.asarray(filled | (volume > 0), dtype=bool)
