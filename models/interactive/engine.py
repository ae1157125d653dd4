"""The one interface every interactive engine follows (classical region growing, DeepEdit, nnInteractive).

Lifecycle: ``prepare(image, spacing_mm)`` once per image (normalisation, any model-grid conversion), kept
by the caller between clicks of one session; then ``segment(prepared, prompts)`` for every prompt set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from models.interactive.prompts import Prompt


class InteractiveEngine(Protocol):
    """name: a short id ("classical", "deepedit:<model id>", "nninteractive")."""

    name: str

    def prepare(
        self, image: np.ndarray, spacing_mm: tuple[float, float, float], affine: np.ndarray | None = None
    ) -> Any:
        """What the engine needs of the image (shape (I, J, K), any numeric dtype; spacing in mm along
        I, J, K; ``affine``: the (4, 4) voxel-to-RAS+ matrix, for engines that orient the image, e.g.
        DeepEdit's bundle transforms), computed once. The result is opaque to callers but must report
        ``nbytes`` (int) so a session cache can bound its memory."""
        ...

    def segment(self, prepared: Any, prompts: Sequence[Prompt]) -> np.ndarray:
        """The 3D mask (bool, shape (I, J, K)) that the prompts ask for. Raises
        :class:`models.interactive.prompts.PromptError` for a prompt that does not fit."""
        ...
