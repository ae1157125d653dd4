"""Fixtures for the models tests: the shared weights/data folder and the subject-a scan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segserve.imaging.volume import Volume
from tests.support.paths import DATA, WEIGHTS

SUBJECT_A_DIR = DATA / "mri-brain" / "subject-a"


@pytest.fixture(scope="session")
def shared_models_dir() -> Path:
    """<repo>/../shared/models, or $SEGSERVE_SHARED_DIR/models (skip when the weights are not there)."""
    if not (WEIGHTS / "brainchop" / "model30chan18cls" / "model.bin").is_file():
        pytest.skip(f"shared model weights not found under {WEIGHTS} (set SEGSERVE_SHARED_DIR)")
    return WEIGHTS


@pytest.fixture(scope="session")
def subject_a() -> tuple[Volume, np.ndarray]:
    """subject-a norm.mgz as a Volume, and its 18-class reference labels (256³ uint8)."""
    nibabel = pytest.importorskip("nibabel")
    norm, ref = SUBJECT_A_DIR / "norm.mgz", SUBJECT_A_DIR / "ref18.nii.gz"
    if not (norm.is_file() and ref.is_file()):
        pytest.skip(f"subject-a test scan not found under {SUBJECT_A_DIR} (set SEGSERVE_SHARED_DIR)")
    img = nibabel.load(norm)
    volume = Volume(array=np.asanyarray(img.dataobj), affine=img.affine, source_format="mgz")
    return volume, np.asanyarray(nibabel.load(ref).dataobj)


@pytest.fixture(scope="session")
def subject_a_prediction(
    shared_models_dir: Path, subject_a: tuple[Volume, np.ndarray]
) -> tuple[np.ndarray, list[float]]:
    """brain-mri-structures on subject-a through the Predictor (one forward pass per session).

    Returns the labels and every progress fraction reported.
    """
    from models.catalog import Catalog
    from models.predictor import get_predictor

    card = Catalog(shared_models_dir).card("brain-mri-structures")
    progress: list[float] = []
    labels = get_predictor(card, shared_models_dir).predict(subject_a[0], on_progress=progress.append)
    return labels, progress
