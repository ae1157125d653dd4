"""The TF.js layers-model reader and the MeshNet built from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.meshnet.network import MeshNet
from models.meshnet.tfjs import Conv3DLayer, TfjsFormatError, load_tfjs_model, read_weights

MESHNET_DILATIONS = [1, 2, 4, 8, 16, 8, 4, 2, 1, 1]

# model -> (conv layers, hidden channels, classes, dilations, activation, biases on hidden layers)
EXPECTED = {
    "model30chan18cls": (10, 30, 18, MESHNET_DILATIONS, "elu", True),
    "model20chan3cls": (10, 20, 3, MESHNET_DILATIONS, "elu", True),
    "model30chan50cls": (10, 30, 50, MESHNET_DILATIONS, "elu", True),
    "mindgrab": (26, 15, 2, [16, 8, 4, 2, 1] * 5 + [1], "gelu", False),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_brainchop_models_parse(shared_models_dir: Path, name: str) -> None:
    n_conv, channels, classes, dilations, activation, hidden_bias = EXPECTED[name]
    model = load_tfjs_model(shared_models_dir / "brainchop" / name)
    convs = model.conv_layers
    assert len(convs) == n_conv
    assert model.num_classes == classes and model.input_channels == 1
    assert [c.dilation_rate[0] for c in convs] == dilations
    assert convs[0].kernel.shape == (channels, 1, 3, 3, 3)
    assert all(c.kernel.shape == (channels, channels, 3, 3, 3) for c in convs[1:-1])
    assert convs[-1].kernel.shape == (classes, channels, 1, 1, 1)
    assert convs[-1].bias is not None and convs[-1].bias.shape == (classes,)
    assert all((c.bias is not None) == hidden_bias for c in convs[:-1])
    acts = [layer.activation for layer in model.layers if not isinstance(layer, Conv3DLayer)]
    assert acts == [activation] * (n_conv - 1)
    # brainchop's "_gn" layers (mindgrab) carry an instance normalisation model.json cannot express.
    assert [c.instance_norm for c in convs] == [name == "mindgrab"] * (n_conv - 1) + [False]

    net = MeshNet.from_tfjs(model)
    assert net.num_steps == n_conv
    with torch.inference_mode():
        out = net(torch.rand(1, 1, 9, 10, 11))
    assert out.shape == (1, classes, 9, 10, 11)


def test_kernel_converted_to_torch_order(shared_models_dir: Path) -> None:
    model_dir = shared_models_dir / "brainchop" / "model30chan18cls"
    raw = read_weights(json.loads((model_dir / "model.json").read_text())["weightsManifest"], model_dir)
    conv = load_tfjs_model(model_dir).conv_layers[1]
    tf_kernel = raw[f"{conv.name}/kernel"]  # (kd, kh, kw, in, out)
    np.testing.assert_array_equal(conv.kernel, tf_kernel.transpose(4, 3, 0, 1, 2))
    assert conv.kernel[5, 7, 0, 1, 2] == tf_kernel[0, 1, 2, 7, 5]


def _write_model(
    directory: Path, layers: list[dict], weights: dict[str, np.ndarray], shards: int = 1
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    blob = b"".join(np.ascontiguousarray(w, dtype="<f4").tobytes() for w in weights.values())
    cuts = np.linspace(0, len(blob), shards + 1).astype(int)
    paths = []
    for i in range(shards):
        paths.append(f"group1-shard{i + 1}of{shards}.bin")
        (directory / paths[-1]).write_bytes(blob[cuts[i] : cuts[i + 1]])
    manifest = [
        {
            "paths": paths,
            "weights": [{"name": k, "shape": list(v.shape), "dtype": "float32"} for k, v in weights.items()],
        }
    ]
    document = {
        "format": "layers-model",
        "modelTopology": {"model_config": {"class_name": "Functional", "config": {"layers": layers}}},
        "weightsManifest": manifest,
    }
    (directory / "model.json").write_text(json.dumps(document))


def _conv(name: str, source: str, filters: int, k: int, d: int, bias: bool = True) -> dict:
    config = {
        "name": name,
        "filters": filters,
        "kernel_size": [k] * 3,
        "dilation_rate": [d] * 3,
        "strides": [1, 1, 1],
        "padding": "same",
        "data_format": "channels_last",
        "activation": "linear",
        "use_bias": bias,
    }
    return {"class_name": "Conv3D", "config": config, "inbound_nodes": [[[source, 0, 0, {}]]]}


def _tiny_model(rng: np.random.Generator) -> tuple[list[dict], dict[str, np.ndarray]]:
    layers = [
        {"class_name": "InputLayer", "config": {"name": "input", "batch_input_shape": [None, 8, 8, 8, 1]}},
        _conv("conv_a", "input", 3, 3, 2),
        {"class_name": "Activation", "config": {"name": "act", "activation": "relu"}, "inbound_nodes": []},
        _conv("out", "act", 2, 1, 1),
    ]
    weights = {
        "conv_a/kernel": rng.normal(size=(3, 3, 3, 1, 3)),
        "conv_a/bias": rng.normal(size=3),
        "out/kernel": rng.normal(size=(1, 1, 1, 3, 2)),
        "out/bias": rng.normal(size=2),
    }
    return layers, weights


def test_meshnet_matches_numpy_reference(tmp_path: Path) -> None:
    """TF 'same' dilated cross-correlation written out in numpy equals the torch network."""
    rng = np.random.default_rng(0)
    layers, weights = _tiny_model(rng)
    _write_model(tmp_path, layers, weights, shards=3)
    net = MeshNet.from_tfjs(load_tfjs_model(tmp_path))
    x = rng.random((7, 8, 9)).astype(np.float32)

    d, w = 2, weights["conv_a/kernel"].astype(np.float32)
    padded = np.pad(x, d)
    hidden = np.zeros((3, *x.shape), np.float32)
    for a in range(3):
        for b in range(3):
            for c in range(3):
                window = padded[a * d : a * d + 7, b * d : b * d + 8, c * d : c * d + 9]
                hidden += w[a, b, c, 0][:, None, None, None] * window[None]
    hidden = np.maximum(hidden + weights["conv_a/bias"].astype(np.float32)[:, None, None, None], 0)
    expected = np.einsum("izyx,io->ozyx", hidden, weights["out/kernel"][0, 0, 0].astype(np.float32))
    expected += weights["out/bias"].astype(np.float32)[:, None, None, None]

    with torch.inference_mode():
        steps = list(net.forward_steps(torch.from_numpy(x)[None, None]))
    assert len(steps) == 2
    np.testing.assert_allclose(steps[-1][0].numpy(), expected, rtol=1e-4, atol=1e-4)


def test_truncated_weights_rejected(shared_models_dir: Path, tmp_path: Path) -> None:
    source = shared_models_dir / "brainchop" / "model30chan18cls"
    shutil.copy(source / "model.json", tmp_path / "model.json")
    data = (source / "model.bin").read_bytes()
    (tmp_path / "model.bin").write_bytes(data[: len(data) - 1000])
    with pytest.raises(TfjsFormatError, match=r"truncated"):
        load_tfjs_model(tmp_path)


def test_missing_shard_rejected(tmp_path: Path) -> None:
    layers, weights = _tiny_model(np.random.default_rng(1))
    _write_model(tmp_path, layers, weights, shards=2)
    (tmp_path / "group1-shard2of2.bin").unlink()
    with pytest.raises(TfjsFormatError, match=r"group1-shard2of2\.bin"):
        load_tfjs_model(tmp_path)


def test_quantised_weights_rejected(tmp_path: Path) -> None:
    layers, weights = _tiny_model(np.random.default_rng(2))
    _write_model(tmp_path, layers, weights)
    document = json.loads((tmp_path / "model.json").read_text())
    document["weightsManifest"][0]["weights"][0]["quantization"] = {"dtype": "uint8", "scale": 0.1, "min": 0}
    (tmp_path / "model.json").write_text(json.dumps(document))
    with pytest.raises(TfjsFormatError, match=r"quantised"):
        load_tfjs_model(tmp_path)


def test_unsupported_layer_rejected(tmp_path: Path) -> None:
    layers, weights = _tiny_model(np.random.default_rng(3))
    layers[2] = {"class_name": "BatchNormalization", "config": {"name": "bn"}, "inbound_nodes": []}
    _write_model(tmp_path, layers, weights)
    with pytest.raises(TfjsFormatError, match=r"'bn' has unsupported type 'BatchNormalization'"):
        load_tfjs_model(tmp_path)


def test_unsupported_activation_rejected(tmp_path: Path) -> None:
    layers, weights = _tiny_model(np.random.default_rng(4))
    layers[2]["config"]["activation"] = "swish"
    _write_model(tmp_path, layers, weights)
    with pytest.raises(TfjsFormatError, match=r"activation 'swish' is not supported"):
        load_tfjs_model(tmp_path)


def test_weight_shape_mismatch_rejected(tmp_path: Path) -> None:
    layers, weights = _tiny_model(np.random.default_rng(5))
    layers[1]["config"]["filters"] = 4
    _write_model(tmp_path, layers, weights)
    with pytest.raises(TfjsFormatError, match=r"kernel shape"):
        load_tfjs_model(tmp_path)
