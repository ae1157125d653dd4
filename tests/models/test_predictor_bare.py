"""The Predictor's labels on a conformed scan equal a bare MeshNet forward (its own forward pass)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.meshnet.network import MeshNet
from models.meshnet.tfjs import load_tfjs_model
from segserve.imaging.volume import Volume


def test_predictor_equals_bare_forward(
    shared_models_dir: Path,
    subject_a: tuple[Volume, np.ndarray],
    subject_a_prediction: tuple[np.ndarray, list[float]],
) -> None:
    """The known-figure recipe: min-max to [0, 1], crop to non-zero box + 4, data[i, j, k] as (D, H, W)."""
    net = MeshNet.from_tfjs(load_tfjs_model(shared_models_dir / "brainchop" / "model30chan18cls"))
    image = np.asarray(subject_a[0].array, dtype=np.float32)
    image = (image - image.min()) / (image.max() - image.min())
    nonzero = np.nonzero(image)
    box = tuple(slice(max(int(n.min()) - 4, 0), int(n.max()) + 5) for n in nonzero)
    with torch.inference_mode():
        logits = net(torch.from_numpy(np.ascontiguousarray(image[box]))[None, None])
    bare = np.zeros(image.shape, np.uint8)
    bare[box] = logits[0].argmax(0).numpy()
    labels, _ = subject_a_prediction
    assert np.mean(labels == bare) >= 0.999
