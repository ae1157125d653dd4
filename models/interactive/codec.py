"""Prompts as JSON documents, the form in which sessions store them (segserve.interactions) and the API
takes them, all in voxel indices of the image array (I, J, K):

- ``{"type": "click", "point": [i, j, k], "foreground": true}``
- ``{"type": "box", "lo": [i, j, k], "hi": [i, j, k]}`` (inclusive corners)
- ``{"type": "slice", "axis": a, "index": n, "pixels": [[u, v], ...]}``: the painted pixels of slice ``n``
  along axis ``a``, (u, v) indices of the slice plane (the image's other two axes, in order). A list of
  pixels rather than a dense 2D mask keeps a brush stroke small in the session's JSON.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.interactive.prompts import Box, Click, Index3, Prompt, PromptError, SliceMask


def _index3(value: Any, what: str) -> Index3:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise PromptError(f"{what} must be three voxel indices, got {value!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise PromptError(f"{what} must be integer voxel indices, got {value!r}")
    return int(value[0]), int(value[1]), int(value[2])


def prompt_from_json(doc: dict[str, Any], shape: Index3) -> Prompt:
    """The prompt a document describes, for an image of ``shape`` (needed to size a painted slice).
    Raises PromptError naming what is wrong; bounds are checked by ``check_prompts``."""
    kind = doc.get("type")
    if kind == "click":
        return Click(
            point=_index3(doc.get("point"), "click point"), foreground=bool(doc.get("foreground", True))
        )
    if kind == "box":
        return Box(lo=_index3(doc.get("lo"), "box lo"), hi=_index3(doc.get("hi"), "box hi"))
    if kind == "slice":
        axis, index = doc.get("axis"), doc.get("index")
        if axis not in (0, 1, 2) or not isinstance(index, int):
            raise PromptError(f"slice: axis must be 0, 1 or 2 and index an integer, got {axis!r}, {index!r}")
        plane = tuple(s for a, s in enumerate(shape) if a != axis)
        pixels = np.asarray(doc.get("pixels") or [], dtype=np.int64).reshape(-1, 2)
        outside = (pixels < 0) | (pixels >= np.array(plane))
        if outside.any():
            bad = pixels[outside.any(axis=1)][0]
            raise PromptError(
                f"slice: pixel {tuple(int(v) for v in bad)} is outside the slice of shape {plane}"
            )
        mask = np.zeros(plane, dtype=bool)
        mask[pixels[:, 0], pixels[:, 1]] = True
        return SliceMask(axis=int(axis), index=int(index), mask=mask)
    raise PromptError(f"unknown prompt type {kind!r} (click, box or slice)")


def prompts_from_json(docs: list[dict[str, Any]], shape: Index3) -> list[Prompt]:
    return [prompt_from_json(doc, shape) for doc in docs]
