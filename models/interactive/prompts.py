"""The prompts a reviewer gives, in voxel indices of the image array (axis order as the array, I, J, K).

A prompt set is an ordered tuple: undo drops the last one and the engine segments again from the rest, so
a mask is always a function of the prompts alone (no hidden state between clicks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Index3 = tuple[int, int, int]


@dataclass(frozen=True)
class Click:
    """One click at voxel ``point``: inside the structure (``foreground``) or outside it."""

    point: Index3
    foreground: bool = True


@dataclass(frozen=True)
class Box:
    """A box drawn on one slice: inclusive voxel corners ``lo`` <= ``hi``. Along the plane's normal axis
    lo == hi (the slice it was drawn on); the structure is taken to lie inside the box in the other two."""

    lo: Index3
    hi: Index3


@dataclass(frozen=True)
class SliceMask:
    """A structure painted on slice ``index`` along ``axis`` (0, 1 or 2): ``mask`` is a 2D bool array of
    the image's shape without that axis. Several of them are filled between (3D Slicer's "Fill between
    slices")."""

    axis: int
    index: int
    mask: np.ndarray


Prompt = Click | Box | SliceMask


class PromptError(ValueError):
    """A prompt that cannot apply to the image (outside it, wrong shape, empty box); the message names it."""


def check_prompts(prompts: Sequence[Prompt], shape: Index3) -> None:
    """Raise :class:`PromptError` naming the first prompt that does not fit an image of ``shape``."""
    for n, prompt in enumerate(prompts):
        if isinstance(prompt, Click):
            _check_index(prompt.point, shape, f"prompt {n} (click)")
        elif isinstance(prompt, Box):
            _check_index(prompt.lo, shape, f"prompt {n} (box lo)")
            _check_index(prompt.hi, shape, f"prompt {n} (box hi)")
            if any(lo > hi for lo, hi in zip(prompt.lo, prompt.hi, strict=True)):
                raise PromptError(f"prompt {n} (box): lo {prompt.lo} must be <= hi {prompt.hi} on every axis")
        elif isinstance(prompt, SliceMask):
            if prompt.axis not in (0, 1, 2):
                raise PromptError(f"prompt {n} (slice mask): axis must be 0, 1 or 2, got {prompt.axis}")
            if not 0 <= prompt.index < shape[prompt.axis]:
                raise PromptError(
                    f"prompt {n} (slice mask): slice {prompt.index} is outside 0..{shape[prompt.axis] - 1}"
                )
            plane = tuple(s for a, s in enumerate(shape) if a != prompt.axis)
            if prompt.mask.shape != plane:
                raise PromptError(f"prompt {n} (slice mask): mask shape {prompt.mask.shape} != slice {plane}")
        else:
            raise PromptError(f"prompt {n}: unknown prompt type {type(prompt).__name__}")


def _check_index(point: Index3, shape: Index3, what: str) -> None:
    if len(point) != 3 or any(not 0 <= p < s for p, s in zip(point, shape, strict=True)):
        raise PromptError(f"{what}: voxel {tuple(point)} is outside the image of shape {shape}")
