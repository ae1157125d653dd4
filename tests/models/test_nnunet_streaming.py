"""Logits finished a slab at a time (models.nnunet.streaming) give nnU-Net's whole-grid labels, every voxel.

Real (made) nnU-Net models at 6 mm on the real abdominal CT given a 6 mm grid, so the export needs no
resampling and the streamed path is taken: against the same runner with streaming turned off (nnU-Net's own
``predict_logits_from_preprocessed_data`` and the export, which ``test_nnunet`` checks against
``nnUNetv2_predict``), with 2 folds and test-time mirroring, 2 input channels, a region model, an input
smaller than the patch (padding) and a cropped one; the finished logits themselves against nnU-Net's; and
cancellation between windows.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from models.card import Cancelled
from segserve.imaging.volume import Volume
from segserve.scans.readers import read_channels
from tests.support.nnunet import images_dir, model_folder, nnunet_models

pytest.importorskip("nnunetv2")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return nnunet_models(tmp_path_factory)


def _at_model_spacing(
    root: Path, kind: str, crop: tuple[slice, ...] | None = None, spacing: float = 6.0
) -> list[Volume]:
    """The abdominal CT's channels of ``kind`` on a grid of ``spacing`` mm (6: the made models' spacing, so
    nothing is resampled; else nnU-Net resamples to 6 mm and the export back)."""
    channels = sorted(images_dir(root, kind).glob("abdomen_*.nii.gz"))
    volumes = read_channels([(p.name, [p]) for p in channels])
    affine = np.diag([spacing, spacing, spacing, 1.0])
    out = []
    for volume in volumes:
        array = np.ascontiguousarray(volume.array[crop] if crop is not None else volume.array)
        out.append(dataclasses.replace(volume, array=array, affine=affine, header=None, source_format="nrrd"))
    return out


def _both(
    runner, volumes: list[Volume], monkeypatch: pytest.MonkeyPatch, kind: str = "same"
) -> tuple[np.ndarray, np.ndarray]:
    from models.nnunet import predictor

    got = runner.predict(volumes)
    assert runner.last_logits == f"slabs-{kind}"
    with monkeypatch.context() as patch:
        patch.setattr(predictor, "stream_kind", lambda *_args: None)
        expected = runner.predict(volumes)
    assert runner.last_logits == "whole"
    return got, expected


@pytest.mark.parametrize(
    ("kind", "folds", "mirror", "crop"),
    [
        ("single", [0, 1], True, (slice(3, 29), slice(0, 20), slice(2, 12))),  # smaller than the patch
        ("multi", [0], False, (slice(10, 70), slice(25, 90), slice(0, 30))),
        ("regions", [0, 1], False, (slice(20, 80), slice(10, 60), slice(0, 30))),
    ],
)
def test_streamed_labels_equal_whole_logits(
    root: Path, kind: str, folds: list[int], mirror: bool, crop: tuple | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models.nnunet.predictor import NnunetRunner

    runner = NnunetRunner(model_folder(root, kind), folds, use_mirroring=mirror)
    volumes = _at_model_spacing(root, kind, crop)
    got, expected = _both(runner, volumes, monkeypatch)
    assert got.dtype == expected.dtype and got.shape == volumes[0].shape
    assert np.array_equal(got, expected)
    assert len(np.unique(expected)) >= 2


@pytest.mark.parametrize(
    ("kind", "folds", "spacing", "crop"),
    [
        ("single", [0, 1], 3.0, None),  # the export upsamples 2x (order 1)
        ("single", [0], 4.5, (slice(0, 100), slice(10, 90), slice(0, 30))),  # a zoom of 0.75
        ("regions", [0], 7.3, None),  # the export downsamples
        ("multi", [0], 2.0, (slice(20, 100), slice(0, 70), slice(0, 30))),
    ],
)
def test_streamed_resampled_export_equals_whole_logits(
    root: Path,
    kind: str,
    folds: list[int],
    spacing: float,
    crop: tuple | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Order-1 probabilities resampled to the input grid slab by slab from the finished model planes
    (models.nnunet.export.StreamedExport) give the whole-grid export's labels, every voxel."""
    from models.nnunet import export
    from models.nnunet.predictor import NnunetRunner

    runner = NnunetRunner(model_folder(root, kind), folds, use_mirroring=False)
    volumes = _at_model_spacing(root, kind, crop, spacing)
    monkeypatch.setattr(export, "SLAB_VOXELS", 4096)  # many output slabs, pages given back between them
    got, expected = _both(runner, volumes, monkeypatch, "resampled")
    assert got.dtype == expected.dtype and got.shape == volumes[0].shape
    assert np.array_equal(got, expected)
    assert len(np.unique(expected)) >= 2


def test_finished_logits_equal_nnunets(root: Path) -> None:
    """Every plane handed over equals nnU-Net's logits there (float16, bit for bit), once each, in order."""
    from models.nnunet.predictor import NnunetRunner
    from models.nnunet.streaming import stream_labels

    runner = NnunetRunner(model_folder(root, "single"), [0, 1], use_mirroring=False)
    case = runner._preprocess(_at_model_spacing(root, "single", (slice(0, 50), slice(30, 70), slice(0, 30))))
    data = case["data"]
    expected = runner.predictor.predict_logits_from_preprocessed_data(data).cpu()
    seen: list[int] = []

    def check(planes: slice, logits: np.ndarray) -> None:
        assert logits.dtype == np.float16
        assert np.array_equal(logits, expected[:, planes].numpy())
        seen.extend(range(planes.start, planes.stop))

    stream_labels(runner.predictor, data, check)
    assert seen == list(range(data.shape[1]))


def test_cancel_stops_between_windows(root: Path) -> None:
    from models.nnunet.predictor import NnunetRunner

    runner = NnunetRunner(model_folder(root, "single"), [0], use_mirroring=False)
    volumes = _at_model_spacing(root, "single", (slice(0, 60), slice(20, 80), slice(0, 30)))
    steps: list[float] = []
    with pytest.raises(Cancelled):
        runner.predict(volumes, on_progress=steps.append, is_cancelled=lambda: len(steps) > 3)
    assert runner.last_logits == "slabs-same"
    assert 0 < steps[-1] < 0.5
    threads = torch.get_num_threads()
    again = runner.predict(volumes)
    assert torch.get_num_threads() == threads
    assert again.shape == volumes[0].shape and len(np.unique(again)) >= 2
