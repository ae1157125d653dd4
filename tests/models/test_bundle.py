"""Reading MONAI bundles (Zoo layout): configs, references, refused targets, weights layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.bundle.config import BundleError, read_bundle
from models.bundle.network import load_network
from models.testing.make_bundle import write_unet_bundle


def _edit_inference(bundle: Path, **changes: object) -> None:
    path = bundle / "configs" / "inference.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_good_bundle_is_read(tmp_path: Path) -> None:
    bundle = write_unet_bundle(
        tmp_path / "spleen_unet", roi_size=(32, 32, 16), overlap=0.5, sw_batch_size=2, largest_component=[1]
    )
    spec = read_bundle(bundle)
    assert spec.labels == {0: "background", 1: "spleen"} and spec.num_classes == 2
    assert spec.network_target == "UNet" and spec.network_kwargs["channels"] == [8, 16, 32]
    assert spec.weights == "models/model.pt" and spec.version == "0.1.0" and spec.modality == "CT"
    assert spec.axcodes == "RAS" and spec.pixdim == (1.5, 1.5, 2.0)  # pixdim came through "@pixdim"
    assert spec.intensity is not None and spec.intensity.kind == "range" and spec.intensity.clip
    assert (spec.intensity.a_min, spec.intensity.a_max) == (-57.0, 164.0)
    assert spec.roi_size == (32, 32, 16) and spec.overlap == 0.5 and spec.sw_batch_size == 2
    assert spec.blend == "gaussian" and spec.largest_component == (1,)
    network = load_network(spec)
    out = network(torch.zeros(1, 1, 32, 32, 16))
    assert out.shape == (1, 2, 32, 32, 16)


def test_wrapped_state_dict_loads(tmp_path: Path) -> None:
    bundle = write_unet_bundle(tmp_path / "wrapped", wrap_state=True)
    plain = write_unet_bundle(tmp_path / "plain")
    a, b = load_network(read_bundle(bundle)), load_network(read_bundle(plain))
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_missing_files_are_named(tmp_path: Path) -> None:
    bundle = write_unet_bundle(tmp_path / "b")
    (bundle / "models" / "model.pt").unlink()
    with pytest.raises(BundleError, match=r"model\.pt"):
        read_bundle(bundle)
    (bundle / "configs" / "metadata.json").unlink()
    with pytest.raises(BundleError, match=r"metadata\.json is missing"):
        read_bundle(bundle)
    with pytest.raises(BundleError, match="does not exist"):
        read_bundle(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("target", "match"),
    [
        ("os.system", "'os.system' is refused"),
        ("monai.transforms.Compose", "'monai.transforms.Compose' is refused"),
        ("torch.nn.Module", "is refused"),
        ("$__import__('os').system('touch /tmp/pwned')", "expression"),
    ],
)
def test_target_outside_monai_nets_is_refused(tmp_path: Path, target: str, match: str) -> None:
    bundle = write_unet_bundle(tmp_path / "b")
    _edit_inference(bundle, network_def={"_target_": target, "spatial_dims": 3})
    with pytest.raises(BundleError, match=match):
        read_bundle(bundle)


def test_name_not_a_network_class_is_refused_at_load(tmp_path: Path) -> None:
    bundle = write_unet_bundle(tmp_path / "b")
    _edit_inference(bundle, network_def={"_target_": "Compose"})
    spec = read_bundle(bundle)
    with pytest.raises(BundleError, match=r"'Compose' is not a network class of monai\.networks\.nets"):
        load_network(spec)


def test_expressions_and_private_keys_in_network_def_are_refused(tmp_path: Path) -> None:
    bundle = write_unet_bundle(tmp_path / "b")
    _edit_inference(bundle, network_def={"_target_": "UNet", "spatial_dims": "$1+2"})
    with pytest.raises(BundleError, match=r"network_def\.spatial_dims is an expression"):
        read_bundle(bundle)
    _edit_inference(bundle, network_def={"_target_": "UNet", "_mode_": "debug"})
    with pytest.raises(BundleError, match="'_mode_' is not supported"):
        read_bundle(bundle)
    _edit_inference(bundle, network_def={"_target_": "UNet", "act": {"_target_": "os.system"}})
    with pytest.raises(BundleError, match="nested _target_"):
        read_bundle(bundle)


def test_bad_values_are_reported(tmp_path: Path) -> None:
    bundle = write_unet_bundle(tmp_path / "b")
    _edit_inference(
        bundle, inferer={"_target_": "SlidingWindowInferer", "roi_size": [32, 32], "overlap": 0.5}
    )
    with pytest.raises(BundleError, match=r"roi_size must be 3 numbers, got \[32, 32\]"):
        read_bundle(bundle)
    _edit_inference(bundle, inferer={"roi_size": [32, 32, 32], "overlap": 1.5})
    with pytest.raises(BundleError, match=r"overlap must be in \[0, 1\), got 1.5"):
        read_bundle(bundle)
    _edit_inference(bundle, inferer={"roi_size": [32, 32, 32]}, pixdim="@nowhere")
    with pytest.raises(BundleError, match="@nowhere does not resolve"):
        read_bundle(bundle)


def test_weights_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    bundle = write_unet_bundle(tmp_path / "b", channels=(8, 16, 32))
    _edit_inference(
        bundle,
        network_def={
            "_target_": "UNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 2,
            "channels": [4, 8, 16],
            "strides": [2, 2],
        },
    )
    with pytest.raises(BundleError, match="does not fit UNet"):
        load_network(read_bundle(bundle))
