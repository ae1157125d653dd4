"""The nnInteractive engine against nnInteractive's own inference session, driven directly.

Model: a tiny model folder in the published layout with seeded random weights
(models.testing.make_nninteractive: patch 64^3, a 3-stage PlainConvUNet of 4..16 features, 1 + 7 input
channels), made in a temporary folder. Image: a real CT crop (../shared/data/ct/spleen). Reference: a fresh
``nnInteractiveInferenceSession`` on the same loaded network and image, given the same interactions
(``add_point_interaction``, ``add_bbox_interaction`` with half-open boxes, ``add_lasso_interaction``), one
prediction per interaction, numpy seeded per interaction as the engine seeds it.

Cost: with the session's auto-zoom off one prompt is one 64^3 forward pass (about a second on the loaded
2-core machine). With auto-zoom on (the package's default) random weights reach the patch border at once,
so the session zooms out 4x and refines with one pass per 16^3 cell it changed (93 s for one click on an
80x80x26 crop here); that path runs once, on a 40x40x12 crop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from models.card import ModelUnavailable
from models.interactive.model_engines import available_model_engines, model_engine
from models.interactive.nninteractive import (
    FOLDER,
    NNInteractiveEngine,
    PreparedNNInteractive,
    _new_session,
    seeded_numpy,
)
from models.interactive.prompts import Box, Click, Prompt, PromptError, SliceMask
from models.testing.make_nninteractive import NAME, write_model_folder
from tests.support.paths import DATA

pytest.importorskip("nnInteractive.inference.inference_session")

SPACING = (0.79, 0.79, 5.0)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_model_folder(root / FOLDER, seed=0)
    return root


@pytest.fixture(scope="module")
def engine(models_dir: Path) -> NNInteractiveEngine:
    return NNInteractiveEngine(models_dir / FOLDER / NAME, autozoom=False)


@pytest.fixture(scope="module")
def ct() -> np.ndarray:
    source: Any = nib.load(str(DATA / "ct" / "spleen" / "sub-spleen2_ct.nii.gz"))
    return np.asarray(source.dataobj[30:130, 40:140, 0:26], dtype=np.int16)


def session_mask(engine: NNInteractiveEngine, image: np.ndarray, prompts: list[Prompt]) -> np.ndarray:
    """The package's session, driven directly with the interactions the prompts stand for."""
    session = _new_session(torch.device("cpu"), engine.autozoom)
    session.initialize_from_loaded_artifacts(engine.artifacts)
    session.set_image(image[None], {})
    target = np.zeros(image.shape, np.uint8)
    session.set_target_buffer(target)
    for n, prompt in enumerate(prompts):
        with seeded_numpy(n):
            if isinstance(prompt, Click):
                session.add_point_interaction(prompt.point, include_interaction=prompt.foreground)
            elif isinstance(prompt, Box):
                bbox = [[lo, hi + 1] for lo, hi in zip(prompt.lo, prompt.hi, strict=True)]
                session.add_bbox_interaction(bbox, include_interaction=True)
            else:
                assert isinstance(prompt, SliceMask) and prompt.axis == 2
                lasso = np.zeros(image.shape, np.uint8)
                lasso[:, :, prompt.index] = prompt.mask
                session.add_lasso_interaction(lasso, include_interaction=True)
    return target > 0


def _prompts(shape: tuple[int, ...]) -> list[Prompt]:
    painted = np.zeros(shape[:2], bool)
    painted[45:60, 50:70] = True
    return [
        Click((50, 50, 13)),
        Click((70, 40, 13), foreground=False),
        Box((30, 35, 10), (60, 75, 10)),
        SliceMask(axis=2, index=15, mask=painted),
    ]


def test_engine_gives_the_sessions_masks_for_the_same_interactions(
    engine: NNInteractiveEngine, ct: np.ndarray
) -> None:
    prompts = _prompts(ct.shape)
    prepared = engine.prepare(ct, SPACING)
    assert isinstance(prepared, PreparedNNInteractive)
    assert prepared.nbytes == ct.size * (4 + 2 * 7 + 1)
    masks = [engine.segment(prepared, prompts[: k + 1]).copy() for k in range(len(prompts))]
    for k, mask in enumerate(masks):
        assert mask.shape == ct.shape and mask.dtype == bool
        assert 0 < mask.sum() < mask.size, f"after prompt {k}: a trivial mask ({int(mask.sum())} voxels)"
    np.testing.assert_array_equal(masks[-1], session_mask(engine, ct, prompts))
    np.testing.assert_array_equal(masks[1], session_mask(engine, ct, prompts[:2]))
    assert not np.array_equal(masks[0], masks[1]), "the background click must change the mask"


def test_prepare_once_segment_many_replays_after_undo(engine: NNInteractiveEngine, ct: np.ndarray) -> None:
    prompts = _prompts(ct.shape)
    prepared = engine.prepare(ct, SPACING)
    full = engine.segment(prepared, prompts).copy()  # one call, all prompts
    undone = engine.segment(prepared, prompts[:2]).copy()  # undo: reset and replay two
    redone = engine.segment(prepared, prompts).copy()  # extends: adds the last two only
    np.testing.assert_array_equal(redone, full)
    np.testing.assert_array_equal(undone, engine.segment(engine.prepare(ct, SPACING), prompts[:2]))
    edited = [prompts[0], Click((20, 80, 13), foreground=False)]
    np.testing.assert_array_equal(engine.segment(prepared, edited), session_mask(engine, ct, edited))


def test_refusals(engine: NNInteractiveEngine, ct: np.ndarray, tmp_path: Path) -> None:
    prepared = engine.prepare(ct[:20, :20, :10], SPACING)
    with pytest.raises(PromptError, match="outside the image"):
        engine.segment(prepared, [Click((20, 0, 0))])
    with pytest.raises(PromptError, match="3D bounding box"):  # the published model has 2D boxes only
        engine.segment(prepared, [Box((2, 2, 2), (8, 8, 6))])
    with pytest.raises(ModelUnavailable, match="no nnInteractive model under"):
        NNInteractiveEngine.from_models_dir(tmp_path)
    broken = tmp_path / FOLDER / "nnInteractive_v1.0"
    broken.mkdir(parents=True)
    (broken / "plans.json").write_text("{}")
    with pytest.raises(ModelUnavailable, match=r"missing dataset\.json"):
        NNInteractiveEngine(broken)


def test_registry_lists_and_loads_the_engine(models_dir: Path, tmp_path: Path) -> None:
    assert available_model_engines(tmp_path) == []
    assert available_model_engines(models_dir) == ["nninteractive"]
    loaded = model_engine("nninteractive", models_dir)
    assert isinstance(loaded, NNInteractiveEngine) and loaded.license == "CC0-1.0"
    with pytest.raises(KeyError, match="unknown model engine"):
        model_engine("sam", models_dir)
    with pytest.raises(ModelUnavailable, match="no available DeepEdit bundle"):
        model_engine("deepedit:spleen_deepedit_annotation", models_dir)
