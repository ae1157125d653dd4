"""The Predictor's labels on a conformed scan equal a bare MeshNet forward (its own forward pass), and its
bf16 twin (the fast CPU path) keeps the agreement rule on the same scan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.calibration import AGREEMENT_MIN, label_agreement
from models.catalog import Catalog
from models.cpu import CpuPath, bf16_isa, cpu_flags
from models.meshnet.network import MeshNet
from models.meshnet.predictor import MeshNetPredictor
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


def test_bf16_twin_agrees_with_fp32_on_subject_a(
    shared_models_dir: Path,
    subject_a: tuple[Volume, np.ndarray],
    subject_a_prediction: tuple[np.ndarray, list[float]],
) -> None:
    """The fast path on a whole real scan (one bf16 pass; the fp32 labels are the session's): labels equal
    on >= 99.9 % of the voxels the network labels (its box, as bench.calibrate counts them). Only on a CPU
    with native bf16 (the only CPUs whose workers take the path): elsewhere torch emulates bf16 and one
    pass takes over ten minutes."""
    if bf16_isa(cpu_flags()) is None:
        pytest.skip("this CPU has no native bf16")
    card = Catalog(shared_models_dir).card("brain-mri-structures")
    fast = MeshNetPredictor.load(card, shared_models_dir, cpu_path=CpuPath("bf16", "avx512_bf16", "test"))
    assert fast.precision == "bf16"  # the recorded calibration lets it (tests/models/test_cpu_path.py)
    _, labels_fast, box = fast.conformed_labels(subject_a[0])
    labels, _ = subject_a_prediction  # subject-a is already on the conformed grid: labels are its labels
    assert box is not None and labels.shape == labels_fast.shape
    assert label_agreement(labels_fast[box], labels[box]) >= AGREEMENT_MIN
    assert np.count_nonzero(labels_fast[box] != labels[box]) > 0  # bf16 did run: not bit-equal to fp32
