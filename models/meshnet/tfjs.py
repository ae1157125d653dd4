"""Reader for TensorFlow.js "layers-model" directories (model.json + binary weight shards).

Only what MeshNet-style models need is supported: a linear chain of ``Conv3D`` and ``Activation`` layers
with float32 weights. Anything else is refused with a :class:`TfjsFormatError` that names the layer or
file at fault, so an unsupported model fails when it is loaded, never halfway through a forward pass.

Kernels are returned in PyTorch order, ``(out, in, kd, kh, kw)``; this module needs only numpy.

brainchop convention: a Conv3D whose name ends in ``_gn`` (e.g. mindgrab's ``conv3d_0_gn``) is followed by a
per-channel instance normalisation that model.json cannot express (brainchop applies it in its own
``gn_convByOutputChannelAndInputSlicing``); such layers get ``instance_norm=True``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

INSTANCE_NORM_SUFFIX = "_gn"
SUPPORTED_ACTIVATIONS = frozenset({"linear", "elu", "relu", "gelu", "sigmoid", "tanh"})


class TfjsFormatError(ValueError):
    """The model directory is not a layers-model this reader understands (or its files are damaged)."""


@dataclass(frozen=True)
class Conv3DLayer:
    """A 3D convolution, stride 1, 'same' padding.

    Attributes:
        name: layer name in model.json.
        in_channels, filters: input / output channel counts.
        kernel_size, dilation_rate: per spatial axis (d, h, w), in voxels.
        kernel: float32, shape (filters, in_channels, kd, kh, kw) (PyTorch order).
        bias: float32, shape (filters,), or None when the layer has ``use_bias: false``.
        instance_norm: normalise each output channel to zero mean, unit variance over (d, h, w)
            (eps 1e-5, no affine) before the activation.
    """

    name: str
    in_channels: int
    filters: int
    kernel_size: tuple[int, int, int]
    dilation_rate: tuple[int, int, int]
    kernel: np.ndarray
    bias: np.ndarray | None
    instance_norm: bool = False


@dataclass(frozen=True)
class ActivationLayer:
    """An element-wise activation: one of :data:`SUPPORTED_ACTIVATIONS`."""

    name: str
    activation: str


Layer = Conv3DLayer | ActivationLayer


@dataclass(frozen=True)
class TfjsModel:
    """A parsed layers-model.

    Attributes:
        layers: the chain in execution order (input layer excluded). A Conv3D whose own ``activation``
            is not linear is followed by a synthetic :class:`ActivationLayer`.
        input_channels: channels of the input tensor (1 for a T1 volume).
        num_classes: output channels of the last Conv3D.
        meta: top-level model.json keys other than topology and manifest (e.g. ``_comment``).
    """

    layers: tuple[Layer, ...]
    input_channels: int
    num_classes: int
    meta: dict[str, Any]

    @property
    def conv_layers(self) -> list[Conv3DLayer]:
        return [layer for layer in self.layers if isinstance(layer, Conv3DLayer)]


def load_tfjs_model(model_dir: Path, model_json: str = "model.json") -> TfjsModel:
    """Parse ``model_dir/model_json`` and read the weight shards it names.

    Raises:
        TfjsFormatError: unsupported layer type/option, non-float32 or quantised weights, missing or
            truncated weight file, weight shape not matching the topology.
    """
    json_path = Path(model_dir) / model_json
    try:
        document = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TfjsFormatError(f"cannot read {json_path}: {exc}") from exc
    if document.get("format", "layers-model") != "layers-model":
        raise TfjsFormatError(f"{json_path}: format {document.get('format')!r} is not 'layers-model'")
    raw_layers = _topology_layers(document, json_path)
    weights = read_weights(document.get("weightsManifest"), json_path.parent)
    layers, input_channels = _build_layers(raw_layers, weights, json_path)
    convs = [layer for layer in layers if isinstance(layer, Conv3DLayer)]
    if not convs:
        raise TfjsFormatError(f"{json_path}: the model has no Conv3D layer")
    meta = {k: v for k, v in document.items() if k not in ("modelTopology", "weightsManifest")}
    return TfjsModel(
        layers=tuple(layers), input_channels=input_channels, num_classes=convs[-1].filters, meta=meta
    )


def _topology_layers(document: Mapping[str, Any], json_path: Path) -> list[dict[str, Any]]:
    topology = document.get("modelTopology")
    if not isinstance(topology, dict):
        raise TfjsFormatError(f"{json_path}: no modelTopology")
    config = topology.get("model_config", topology)
    inner = config.get("config")
    layers = inner.get("layers") if isinstance(inner, dict) else inner
    if not isinstance(layers, list) or not layers:
        raise TfjsFormatError(f"{json_path}: modelTopology has no layer list")
    return layers


def read_weights(manifest: Any, weights_dir: Path) -> dict[str, np.ndarray]:
    """Read every weight of a weightsManifest into float32 arrays in TF.js (channels-last) order.

    Each manifest group's shard files are concatenated in the order listed, and its weights are laid out
    back to back in that byte stream. The total must match the shapes exactly.
    """
    if not isinstance(manifest, list) or not manifest:
        raise TfjsFormatError(f"{weights_dir}: model.json has no weightsManifest")
    weights: dict[str, np.ndarray] = {}
    for group in manifest:
        paths = group.get("paths") or []
        entries = group.get("weights") or []
        expected = 0
        for entry in entries:
            if "quantization" in entry:
                raise TfjsFormatError(
                    f"weight {entry.get('name')!r} is quantised ({entry['quantization']}); "
                    "only float32 weights are supported"
                )
            if entry.get("dtype", "float32") != "float32":
                raise TfjsFormatError(
                    f"weight {entry.get('name')!r} has dtype {entry.get('dtype')!r}; "
                    "only float32 is supported"
                )
            expected += 4 * int(np.prod(entry["shape"], dtype=np.int64))
        blob = b"".join(_read_shard(weights_dir / p) for p in paths)
        if len(blob) != expected:
            raise TfjsFormatError(
                f"weight files {list(paths)} hold {len(blob)} bytes but the manifest needs {expected} "
                f"({'truncated' if len(blob) < expected else 'too long'})"
            )
        offset = 0
        for entry in entries:
            shape = tuple(int(s) for s in entry["shape"])
            count = int(np.prod(shape, dtype=np.int64))
            array = np.frombuffer(blob, dtype="<f4", count=count, offset=offset).reshape(shape)
            weights[str(entry["name"])] = array.astype(np.float32)
            offset += 4 * count
    return weights


def _read_shard(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TfjsFormatError(f"cannot read weight file {path}: {exc}") from exc


def _build_layers(
    raw_layers: Sequence[dict[str, Any]], weights: Mapping[str, np.ndarray], json_path: Path
) -> tuple[list[Layer], int]:
    layers: list[Layer] = []
    channels: int | None = None
    input_channels = 1
    previous: str | None = None
    for raw in raw_layers:
        kind = raw.get("class_name")
        cfg = raw.get("config", {})
        name = str(cfg.get("name", raw.get("name", "?")))
        _check_chain(raw, previous, name, json_path)
        previous = name
        if kind == "InputLayer":
            shape = cfg.get("batch_input_shape") or cfg.get("batchInputShape") or [None, 1]
            input_channels = int(shape[-1] or 1)
            channels = input_channels
        elif kind == "Conv3D":
            conv = _conv_layer(name, cfg, weights, channels if channels is not None else input_channels)
            layers.append(conv)
            channels = conv.filters
            act = str(cfg.get("activation", "linear"))
            if act != "linear":
                layers.append(_activation(f"{name}/activation", act))
        elif kind == "Activation":
            layers.append(_activation(name, str(cfg.get("activation"))))
        else:
            raise TfjsFormatError(f"{json_path}: layer {name!r} has unsupported type {kind!r}")
    return layers, input_channels


def _check_chain(raw: Mapping[str, Any], previous: str | None, name: str, json_path: Path) -> None:
    """Refuse graphs that are not a simple chain (skip connections, concatenations...)."""
    nodes = raw.get("inbound_nodes") or []
    if previous is None or not nodes:
        return
    sources = [node[0] for group in nodes for node in group]
    if sources != [previous]:
        raise TfjsFormatError(
            f"{json_path}: layer {name!r} takes {sources}, not just the previous layer {previous!r}; "
            "only sequential chains are supported"
        )


def _activation(name: str, activation: str) -> ActivationLayer:
    if activation not in SUPPORTED_ACTIVATIONS:
        raise TfjsFormatError(
            f"layer {name!r}: activation {activation!r} is not supported "
            f"(supported: {sorted(SUPPORTED_ACTIVATIONS)})"
        )
    return ActivationLayer(name=name, activation=activation)


def _triple(value: Any, what: str, name: str) -> tuple[int, int, int]:
    items = [int(v) for v in (value if isinstance(value, list | tuple) else [value] * 3)]
    if len(items) != 3:
        raise TfjsFormatError(f"layer {name!r}: {what} must have 3 entries, got {value!r}")
    return items[0], items[1], items[2]


def _conv_layer(
    name: str, cfg: Mapping[str, Any], weights: Mapping[str, np.ndarray], in_ch: int
) -> Conv3DLayer:
    kernel_size = _triple(cfg.get("kernel_size", 3), "kernel_size", name)
    dilation = _triple(cfg.get("dilation_rate", 1), "dilation_rate", name)
    strides = _triple(cfg.get("strides", 1), "strides", name)
    if strides != (1, 1, 1):
        raise TfjsFormatError(f"layer {name!r}: strides {strides} are not supported (only 1)")
    if cfg.get("padding", "same") != "same":
        padding = cfg.get("padding")
        raise TfjsFormatError(f"layer {name!r}: padding {padding!r} is not supported (only 'same')")
    if any(k % 2 == 0 for k in kernel_size):
        raise TfjsFormatError(f"layer {name!r}: even kernel_size {kernel_size} is not supported")
    if cfg.get("data_format", "channels_last") != "channels_last":
        raise TfjsFormatError(f"layer {name!r}: data_format {cfg.get('data_format')!r} is not supported")
    filters = int(cfg["filters"])
    kernel = weights.get(f"{name}/kernel")
    expected = (*kernel_size, in_ch, filters)
    if kernel is None:
        raise TfjsFormatError(f"layer {name!r}: weight '{name}/kernel' is missing from the manifest")
    if tuple(kernel.shape) != expected:
        raise TfjsFormatError(f"layer {name!r}: kernel shape {tuple(kernel.shape)}, expected {expected}")
    bias = None
    if cfg.get("use_bias", True):
        bias = weights.get(f"{name}/bias")
        if bias is None or tuple(bias.shape) != (filters,):
            found = None if bias is None else tuple(bias.shape)
            raise TfjsFormatError(f"layer {name!r}: bias shape {found}, expected ({filters},)")
    # TF.js stores (kd, kh, kw, in, out); PyTorch wants (out, in, kd, kh, kw).
    torch_kernel = np.ascontiguousarray(kernel.transpose(4, 3, 0, 1, 2))
    return Conv3DLayer(
        name=name,
        in_channels=in_ch,
        filters=filters,
        kernel_size=kernel_size,
        dilation_rate=dilation,
        kernel=torch_kernel,
        bias=None if bias is None else np.ascontiguousarray(bias),
        instance_norm=name.endswith(INSTANCE_NORM_SUFFIX),
    )
