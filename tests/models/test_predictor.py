"""Predictor on the real subject-a scan (one forward pass for the session) and on cheap synthetic inputs."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from models.card import ModelCard, ModelUnavailable
from models.catalog import Catalog
from models.meshnet.conform import LIA_DIRECTIONS
from models.meshnet.predictor import MeshNetPredictor
from models.predictor import Cancelled, get_predictor
from segserve.imaging.volume import Volume

STRUCTURES = "brain-mri-structures"


def dice_per_label(pred: np.ndarray, ref: np.ndarray, labels: range) -> dict[int, float]:
    """Dice for each label (1.0 when both are empty), from one bincount of pred * K + ref."""
    k = max(int(pred.max()), int(ref.max()), max(labels)) + 1
    pairs = pred.astype(np.int64).ravel() * k + ref.astype(np.int64).ravel()
    counts = np.bincount(pairs, minlength=k * k).reshape(k, k)
    out = {}
    for c in labels:
        denom = counts[c, :].sum() + counts[:, c].sum()
        out[c] = 1.0 if denom == 0 else float(2 * counts[c, c] / denom)
    return out


@pytest.fixture(scope="module")
def structures_card(shared_models_dir: Path) -> ModelCard:
    return Catalog(shared_models_dir).card(STRUCTURES)


@pytest.fixture(scope="module")
def predictor(structures_card: ModelCard, shared_models_dir: Path) -> MeshNetPredictor:
    return get_predictor(structures_card, shared_models_dir)


def _small_head(affine: np.ndarray, shape: tuple[int, int, int]) -> Volume:
    """A bright ellipsoid in a dark field: a cheap input (small crop) for pipeline tests."""
    grid = np.indices(shape, dtype=np.float32)
    centre = (np.array(shape) - 1) / 2
    dist = sum(((grid[a] - centre[a]) / 8.0) ** 2 for a in range(3))
    return Volume(array=np.where(dist <= 1, 100, 0).astype(np.int16), affine=affine, source_format="nifti")


def test_subject_a_dice_matches_known_figure(
    subject_a_prediction: tuple[np.ndarray, list[float]], subject_a: tuple[Volume, np.ndarray]
) -> None:
    labels, _ = subject_a_prediction
    volume, reference = subject_a
    assert labels.shape == volume.shape and labels.dtype == np.uint8
    dice = dice_per_label(labels, reference, range(1, 18))
    assert np.mean(list(dice.values())) >= 0.78
    # Known figures (data README): white matter 0.893, cortex 0.808, thalamus 0.899, brain stem 0.920.
    assert dice[1] >= 0.88 and dice[2] >= 0.79 and dice[7] >= 0.88 and dice[13] >= 0.90


def test_progress_is_monotone_and_reaches_one(subject_a_prediction: tuple[np.ndarray, list[float]]) -> None:
    _, progress = subject_a_prediction
    assert len(progress) >= 10  # at least one report per layer
    assert all(0.0 <= p <= 1.0 for p in progress)
    assert all(b >= a for a, b in itertools.pairwise(progress))
    assert progress[-1] == 1.0


def test_get_predictor_is_cached(
    structures_card: ModelCard, shared_models_dir: Path, predictor: MeshNetPredictor
) -> None:
    assert get_predictor(structures_card, shared_models_dir) is predictor


def test_cancel_between_layers(predictor: MeshNetPredictor) -> None:
    volume = _small_head(np.diag([1.0, 1.0, 1.0, 1.0]), (40, 40, 40))
    checks = []

    def cancel_after_three() -> bool:
        checks.append(1)
        return len(checks) > 3

    progress: list[float] = []
    with pytest.raises(Cancelled):
        predictor.predict(volume, on_progress=progress.append, is_cancelled=cancel_after_three)
    assert 0 < len(progress) < predictor.network.num_steps and max(progress) < 1.0


def test_non_conformed_input_comes_back_on_its_own_grid(predictor: MeshNetPredictor) -> None:
    affine = np.diag([0.9, 0.9, 1.3, 1.0])
    volume = _small_head(affine, (50, 44, 36))
    labels = predictor.predict(volume)
    assert labels.shape == (50, 44, 36) and labels.dtype == np.uint8
    assert labels.max() < 18
    # Outside the crop (non-zero box + 4 conformed voxels) nothing can be labelled.
    grid = np.indices(volume.shape) - ((np.array(volume.shape) - 1) / 2)[:, None, None, None]
    offset_mm = np.abs(grid * np.diag(affine)[:3, None, None, None])
    far = (offset_mm > (8 * np.diag(affine)[:3] + 6)[:, None, None, None]).any(axis=0)
    assert far.any() and not labels[far].any()


def test_empty_volume_gives_background(predictor: MeshNetPredictor) -> None:
    affine = np.eye(4)
    affine[:3, :3] = LIA_DIRECTIONS
    progress: list[float] = []
    labels = predictor.predict(
        Volume(array=np.zeros((256, 256, 256), np.uint8), affine=affine, source_format="mgz"),
        on_progress=progress.append,
    )
    assert labels.shape == (256, 256, 256) and not labels.any() and progress == [1.0]


def test_load_refuses_missing_weights(structures_card: ModelCard, tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match=r"model30chan18cls/model\.(json|bin) is missing"):
        MeshNetPredictor.load(structures_card, tmp_path)
