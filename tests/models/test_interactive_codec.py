"""Prompts as the JSON documents sessions store: each kind read back to the engine's prompt type, and
documents that cannot be a prompt refused with a PromptError naming them."""

from __future__ import annotations

import pytest

from models.interactive.codec import prompt_from_json, prompts_from_json
from models.interactive.prompts import Box, Click, PromptError, SliceMask, check_prompts

SHAPE = (10, 20, 30)


def test_each_kind_reads_back() -> None:
    click, box, painted = prompts_from_json(
        [
            {"type": "click", "point": [1, 2, 3], "foreground": False},
            {"type": "box", "lo": [0, 1, 2], "hi": [0, 5, 9]},
            {"type": "slice", "axis": 1, "index": 4, "pixels": [[2, 3], [9, 29]]},
        ],
        SHAPE,
    )
    assert click == Click((1, 2, 3), foreground=False)
    assert box == Box((0, 1, 2), (0, 5, 9))
    assert isinstance(painted, SliceMask) and painted.axis == 1 and painted.index == 4
    assert painted.mask.shape == (10, 30) and painted.mask.sum() == 2 and painted.mask[9, 29]
    check_prompts([click, box, painted], SHAPE)
    assert prompt_from_json({"type": "click", "point": [1, 2, 3]}, SHAPE) == Click((1, 2, 3), True)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"type": "click", "point": [1, 2]}, "three voxel indices"),
        ({"type": "click", "point": [1.5, 2, 3]}, "integer"),
        ({"type": "box", "lo": [0, 0, 0]}, "box hi"),
        ({"type": "slice", "axis": 3, "index": 0, "pixels": []}, "axis must be 0, 1 or 2"),
        (
            {"type": "slice", "axis": 0, "index": 0, "pixels": [[20, 0]]},
            "outside the slice of shape (20, 30)",
        ),
        ({"type": "lasso"}, "unknown prompt type 'lasso'"),
    ],
)
def test_bad_documents_are_named(doc: dict[str, object], message: str) -> None:
    with pytest.raises(PromptError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prompt_from_json(doc, SHAPE)


def test_bounds_are_checked_by_check_prompts() -> None:
    with pytest.raises(PromptError, match=r"voxel \(10, 0, 0\) is outside the image of shape \(10, 20, 30\)"):
        check_prompts([prompt_from_json({"type": "click", "point": [10, 0, 0]}, SHAPE)], SHAPE)
