"""BundlePredictor end to end on synthetic CTs: input grid kept, reorientation/resampling, LCC, cancel."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.bundle.build import build
from models.bundle.config import read_bundle
from models.bundle.install import card_from_bundle
from models.bundle.predictor import BundlePredictor
from models.card import Cancelled
from models.catalog import Catalog
from models.testing.make_bundle import write_unet_bundle
from segserve.imaging.volume import Volume
from tests.support.stack import run_cli


class Threshold(torch.nn.Module):
    """Logits (0, x - 0.5): label 1 where the windowed intensity is above 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), x - 0.5], dim=1)


def _predictor(tmp_path: Path, largest: list[int] | None = None, **bundle_args: object) -> BundlePredictor:
    """The bundle's own MONAI pipeline (built from its config) with the Threshold network swapped in."""
    bundle = write_unet_bundle(
        tmp_path / "threshold",
        window=(0.0, 100.0),
        largest_component=largest,
        **bundle_args,  # type: ignore[arg-type]
    )
    pipeline = build(bundle)
    pipeline.network = Threshold()
    return BundlePredictor(card_from_bundle(read_bundle(bundle), tmp_path), pipeline)


def _spheres(
    affine: np.ndarray, shape: tuple[int, int, int], spheres: list[tuple[np.ndarray, float]]
) -> Volume:
    """int16 volume: 100 HU inside the given (world centre mm, radius mm) spheres, 0 outside (so the
    windowed threshold sits half-way, unbiased by interpolation)."""
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    world = (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape(3, *shape)
    inside = np.zeros(shape, bool)
    for centre, radius in spheres:
        inside |= sum((world[a] - centre[a]) ** 2 for a in range(3)) <= radius**2
    return Volume(np.where(inside, 100, 0).astype(np.int16), affine, "nifti")


def _lps_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """An LPS grid with a permuted axis order: i -> S, j -> L, k -> P (unlike the model's RAS)."""
    affine = np.zeros((4, 4))
    affine[2, 0], affine[0, 1], affine[1, 2] = spacing[0], -spacing[1], -spacing[2]
    affine[:, 3] = [40.0, 30.0, -20.0, 1.0]
    return affine


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_output_on_input_grid_for_other_orientation_and_spacing(tmp_path: Path) -> None:
    predictor = _predictor(tmp_path, roi_size=(32, 32, 32), pixdim=(1.5, 1.5, 2.0))
    affine = _lps_affine((3.0, 0.8, 0.9))
    volume = _spheres(affine, (30, 70, 60), [(np.array([10.0, 5.0, 20.0]), 14.0)])
    progress: list[float] = []
    labels = predictor.predict(volume, on_progress=progress.append)
    assert labels.shape == volume.shape and labels.dtype == np.uint8
    assert _dice(labels == 1, volume.array == 100) > 0.9
    assert all(b >= a for a, b in itertools.pairwise(progress)) and progress[-1] == 1.0
    assert len(progress) > 5  # per window


def test_reorientation_alone_is_exact(tmp_path: Path) -> None:
    predictor = _predictor(tmp_path, roi_size=(32, 32, 32), pixdim=(0.8, 0.9, 3.0))  # = the input's, in RAS
    affine = np.diag([-0.8, -0.9, 3.0, 1.0])  # LPS: only flips to reach RAS
    volume = _spheres(affine, (50, 40, 20), [(np.array([-15.0, -20.0, 30.0]), 9.0)])
    labels = predictor.predict(volume)
    assert np.array_equal(labels, (volume.array == 100).astype(np.uint8))


def test_largest_component_removes_a_detached_blob(tmp_path: Path) -> None:
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    spheres = [(np.array([20.0, 20.0, 20.0]), 9.0), (np.array([60.0, 60.0, 40.0]), 4.0)]
    volume = _spheres(affine, (60, 60, 35), spheres)
    both = _predictor(tmp_path / "a", roi_size=(32, 32, 32)).predict(volume)
    cleaned = _predictor(tmp_path / "b", largest=[1], roi_size=(32, 32, 32)).predict(volume)
    big = _spheres(affine, (60, 60, 35), spheres[:1]).array == 100
    assert np.array_equal(both == 1, volume.array == 100)
    assert np.array_equal(cleaned == 1, big)


def test_a_label_that_only_load_imaged_reads_changes_nothing(tmp_path: Path) -> None:
    """A config whose LoadImaged also loads a 'label' (renalStructures_CECT_segmentation does, to save it
    beside the prediction) installs and predicts exactly as the same config without it."""
    volume = _spheres(np.diag([1.5, 1.5, 2.0, 1.0]), (40, 40, 20), [(np.array([30.0, 30.0, 20.0]), 9.0)])
    plain = _predictor(tmp_path / "plain", roi_size=(32, 32, 32))
    with_label = write_unet_bundle(tmp_path / "with_label", roi_size=(32, 32, 32), window=(0.0, 100.0))
    config = json.loads((with_label / "configs" / "inference.json").read_text())
    config["preprocessing"]["transforms"][0]["keys"] = ["image", "label"]
    (with_label / "configs" / "inference.json").write_text(json.dumps(config))
    assert read_bundle(with_label).input_channels == ("image",)
    pipeline = build(with_label)
    pipeline.network = Threshold()
    labelled = BundlePredictor(card_from_bundle(read_bundle(with_label), tmp_path), pipeline)
    expected = plain.predict(volume)
    assert expected.any()
    assert np.array_equal(labelled.predict(volume), expected)


def test_cancel_between_windows(tmp_path: Path) -> None:
    predictor = _predictor(tmp_path, roi_size=(16, 16, 16), pixdim=None)
    volume = _spheres(np.eye(4), (64, 64, 32), [(np.array([30.0, 30.0, 16.0]), 10.0)])
    checks: list[int] = []

    def cancel_after_two() -> bool:
        checks.append(1)
        return len(checks) > 2

    with pytest.raises(Cancelled):
        predictor.predict(volume, is_cancelled=cancel_after_two)
    assert len(checks) == 3


def test_cli_installs_a_zoo_bundle_and_the_worker_path_uses_it(tmp_path: Path) -> None:
    """`segserve models install PATH` takes a bundle directory; get_predictor then runs it unchanged."""
    from models.predictor import get_predictor

    source = write_unet_bundle(tmp_path / "src" / "spleen_ct_unet", roi_size=(32, 32, 16))
    models_dir = tmp_path / "models"
    result = run_cli(
        "models", "install", str(source), models_dir=models_dir, data_dir=tmp_path / "data", timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "installed bundles/spleen_ct_unet/models/model.pt" in result.stdout
    assert "spleen_ct_unet\t0.1.0\tok" in result.stdout
    card = Catalog(models_dir).card("spleen_ct_unet")
    volume = _spheres(np.diag([0.8, 0.8, 5.0, 1.0]), (40, 40, 8), [(np.array([16.0, 16.0, 20.0]), 8.0)])
    labels = get_predictor(card, models_dir).predict(volume)
    assert labels.shape == volume.shape and labels.dtype == np.uint8
