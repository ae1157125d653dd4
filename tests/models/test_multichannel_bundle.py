"""Multi-channel, sigmoid (BraTS-like) bundles: reading, channel order, the bundle's own Lambdad values,
sigmoid stitching (models.sliding)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import SegResNet, UNet

from models.bundle.build import build
from models.bundle.config import BundleError, read_bundle
from models.bundle.install import card_from_bundle, check_bundle
from models.bundle.predictor import BundlePredictor
from models.card import input_channels
from models.sliding import sliding_window_labels
from models.testing.make_multichannel_bundle import brats_like_case, write_brats_like_bundle
from segserve.imaging.volume import Volume

AFFINE = np.diag([1.2, 1.0, 1.5, 1.0])


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> BundlePredictor:
    bundle = write_brats_like_bundle(tmp_path_factory.mktemp("bundles") / "brats_like")
    return BundlePredictor(card_from_bundle(read_bundle(bundle), bundle.parent), build(bundle, trusted=True))


def test_brats_like_bundle_is_read(predictor: BundlePredictor) -> None:
    info, card = predictor.pipeline.info, predictor.card
    assert info.input_channels == ("t1c", "t1", "t2", "flair")
    assert predictor.pipeline.weights == "models/model.ts"
    assert input_channels(card) == ("t1c", "t1", "t2", "flair")
    checked = check_bundle(info.directory, trust_code=True)
    # the values the bundle's own Lambdad writes, named after the channel each one comes from
    assert checked["labels"] == {
        "0": "background",
        "1": "Tumor core",
        "2": "Whole tumor",
        "4": "Enhancing tumor",
    }
    assert checked["executes_code"] and "postprocessing#transforms#2#func" in checked["first_code_element"]


def test_case_gives_the_exact_label_map(predictor: BundlePredictor) -> None:
    channels, expected = brats_like_case()
    labels = predictor.predict([Volume(c, AFFINE, "nifti") for c in channels])
    assert labels.dtype == np.uint8 and np.array_equal(labels, expected)
    assert set(np.unique(labels)) == {0, 1, 2, 4}


@pytest.mark.parametrize("order", [p for p in itertools.permutations(range(4)) if p != (0, 1, 2, 3)][::4])
def test_any_channel_swap_changes_the_result(predictor: BundlePredictor, order: tuple[int, ...]) -> None:
    channels, expected = brats_like_case()
    labels = predictor.predict([Volume(channels[i], AFFINE, "nifti") for i in order])
    assert not np.array_equal(labels, expected)


def test_wrong_number_of_channels_is_refused(predictor: BundlePredictor) -> None:
    channels, _ = brats_like_case()
    with pytest.raises(ValueError, match=r"takes 4 input channels \(t1c, t1, t2, flair\), got 3"):
        predictor.predict([Volume(c, AFFINE, "nifti") for c in channels[:3]])


def test_sigmoid_stitching_agrees_with_monai() -> None:
    torch.manual_seed(3)
    net = UNet(spatial_dims=3, in_channels=2, out_channels=3, channels=(8, 16), strides=(2,)).eval()
    rng = np.random.default_rng(1)
    from scipy import ndimage

    image = np.stack([ndimage.gaussian_filter(rng.normal(size=(50, 40, 36)), 2) * 10 for _ in range(2)])
    image = image.astype(np.float32)
    roi = (24, 24, 24)
    bits = sliding_window_labels(
        list(image), net, num_classes=3, roi_size=roi, overlap=0.5, activation="sigmoid", sw_batch_size=2
    )
    with torch.inference_mode():
        blended = sliding_window_inference(
            torch.from_numpy(image)[None], roi, 2, net, overlap=0.5, mode="gaussian"
        )
    regions = (torch.sigmoid(blended[0]) > 0.5).numpy()
    assert bits.dtype == np.uint8 and bits.shape == image.shape[1:]
    for c in range(3):
        ours = (bits >> c) & 1 == 1
        assert 0.05 < ours.mean() < 0.95  # a real test: each region is neither empty nor everything
        assert float((ours == regions[c]).mean()) >= 0.999


def test_segresnet_bundle_with_four_channels_loads_and_runs(tmp_path: Path) -> None:
    bundle = write_brats_like_bundle(tmp_path / "brats_segresnet", roi_size=(16, 16, 16))
    kwargs = {"blocks_down": [1, 1], "blocks_up": [1], "init_filters": 8, "in_channels": 4, "out_channels": 3}
    (bundle / "models" / "model.ts").unlink()
    torch.save(SegResNet(**kwargs).state_dict(), bundle / "models" / "model.pt")
    path = bundle / "configs" / "inference.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "network_def": {"_target_": "SegResNet", **kwargs}}))
    labels = BundlePredictor(
        card_from_bundle(read_bundle(bundle), tmp_path), build(bundle, trusted=True)
    ).predict([Volume(c, AFFINE, "nifti") for c in brats_like_case((20, 18, 16))[0]])
    assert labels.shape == (20, 18, 16) and set(np.unique(labels)) <= {0, 1, 2, 4}

    path.write_text(
        json.dumps({**config, "network_def": {"_target_": "SegResNet", **kwargs, "in_channels": 2}})
    )
    with pytest.raises(BundleError, match=r"inputs\.image has 4 channels but network_def\.in_channels is 2"):
        read_bundle(bundle)
