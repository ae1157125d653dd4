"""A torch-free stand-in for :class:`models.predictor.Predictor`, for service and worker tests.

It has the same ``predict`` signature and behaviour contract (progress in [0, 1] ending at 1.0, ``Cancelled``
between steps, labels with the input's shape) but answers in milliseconds: it labels the non-zero voxels
of the input with ``label``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from models.card import Cancelled, ModelCard
from segserve.imaging.volume import Volume


class FakePredictor:
    """Labels every non-zero input voxel with ``label`` in ``steps`` progress steps.

    ``error``, when given, is raised halfway (e.g. ``ModelUnavailable("...")`` to test failure paths).
    """

    def __init__(
        self,
        card: ModelCard,
        *,
        label: int = 1,
        steps: int = 5,
        error: Exception | None = None,
    ) -> None:
        self.card = card
        self.label = label
        self.steps = steps
        self.error = error
        self.calls = 0

    def predict(
        self,
        volume: Volume,
        *,
        on_progress: Callable[[float], None] | None = None,
        is_cancelled: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """uint8 labels with ``volume.shape``: ``label`` where the input is non-zero, else 0."""
        self.calls += 1
        for step in range(self.steps):
            if is_cancelled is not None and is_cancelled():
                raise Cancelled()
            if self.error is not None and step == self.steps // 2:
                raise self.error
            if on_progress is not None:
                on_progress((step + 1) / (self.steps + 1))
        array = np.asanyarray(volume.array)
        labels = np.where(array.reshape(volume.shape) != 0, self.label, 0).astype(np.uint8)
        if on_progress is not None:
            on_progress(1.0)
        return labels
