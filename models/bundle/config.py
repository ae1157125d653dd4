"""Reading a MONAI bundle directory (MONAI Model Zoo layout) into a plain :class:`BundleSpec`.

Torch-free (the catalog imports it). A bundle is untrusted input, so its configs are never handed to
``monai.bundle.ConfigParser`` (which evaluates ``$`` expressions, i.e. runs Python). Instead this module
reads the few values the service needs out of the JSON and resolves plain ``@key`` references itself:

    configs/metadata.json   name, version, description, task, network_data_format:
                            inputs.image (modality, num_channels, channel_def -> input channel
                            names, spatial_shape), outputs.pred (num_channels, channel_def -> labels;
                            see models.bundle.channels)
    configs/inference.json  network_def (``_target_`` a class name in monai.networks.nets + JSON kwargs),
                            preprocessing.transforms: Orientationd.axcodes, Spacingd.pixdim,
                            ScaleIntensityRanged (a_min, a_max, b_min, b_max, clip),
                            NormalizeIntensityd (nonzero, channel_wise), ScaleIntensityd (minv, maxv),
                            inferer SlidingWindowInferer (roi_size, sw_batch_size, overlap, mode,
                            sigma_scale), postprocessing: KeepLargestConnectedComponentd (applied_labels),
                            Activationsd (softmax, or sigmoid: multi-label regions, models.regions)
    models/model.pt         a state dict, or {"model": state_dict} / {"state_dict": ...}
    models/model.ts         TorchScript (used only when there is no model.pt)

Which values are refused, and why, is said in :class:`BundleError` messages that carry the bad value.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.bundle.channels import BundleError, input_channels, output_labels

__all__ = ["BundleError", "BundleSpec", "Intensity", "is_bundle_dir", "read_bundle"]

METADATA = "configs/metadata.json"
INFERENCE = "configs/inference.json"
WEIGHTS_PT = "models/model.pt"
WEIGHTS_TS = "models/model.ts"

_TARGET = re.compile(r"^(?:monai\.networks\.nets\.)?([A-Za-z_][A-Za-z0-9_]*)$")
_ALLOWED_PRIVATE_KEYS = {"_target_", "_desc_"}
_MAX_CONFIG_BYTES = 4 << 20


@dataclass(frozen=True)
class Intensity:
    """Intensity pre-processing, applied after resampling.

    kind "range": ``(x - a_min) / (a_max - a_min) * (b_max - b_min) + b_min``, clipped to [b_min, b_max]
    when ``clip`` (CT windowing, Hounsfield units in). kind "zscore": ``(x - mean) / std`` over the
    non-zero voxels (``nonzero``) or all voxels, per input channel when ``channel_wise``, else over all
    channels together. kind "minmax": the volume's min..max to ``b_min..b_max``.
    """

    kind: str
    a_min: float = 0.0
    a_max: float = 1.0
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = False
    nonzero: bool = False
    channel_wise: bool = False


@dataclass(frozen=True)
class BundleSpec:
    """What the service needs from one bundle. Spatial values are in the model's (reoriented) axis order.

    Attributes:
        directory: the bundle's root directory.
        labels: label value -> structure name (0 is background); see ``activation``.
        input_channels: form names of the input channels in the network's order (("image",) for one).
        activation: "softmax" (channels are classes, labels by argmax) or "sigmoid" (channel c is a
            region of its own, label value c + 1; overlaps resolved by models.regions).
        network_target: class name in ``monai.networks.nets`` (e.g. "UNet"); "" for a TorchScript model.
        network_kwargs: JSON keyword arguments of that class.
        weights: relative path of the weight file ("models/model.pt" or "models/model.ts").
        axcodes: orientation the model expects ("RAS"), or None to keep the input's.
        pixdim: voxel spacing in mm the model expects, or None to keep the input's.
        roi_size: sliding-window size in voxels; sw_batch_size windows per forward pass.
        overlap: fraction of a window shared with its neighbour, in [0, 1).
        blend: "gaussian" or "constant" window weighting; sigma_scale of the Gaussian (x roi_size).
        largest_component: label values to keep only the largest connected component of.
    """

    directory: Path
    name: str
    version: str
    description: str
    task: str
    modality: str
    labels: dict[int, str]
    input_channels: tuple[str, ...]
    network_target: str
    network_kwargs: dict[str, Any]
    weights: str
    axcodes: str | None
    pixdim: tuple[float, float, float] | None
    intensity: Intensity | None
    roi_size: tuple[int, int, int]
    sw_batch_size: int = 1
    overlap: float = 0.25
    blend: str = "gaussian"
    sigma_scale: float = 0.125
    largest_component: tuple[int, ...] = field(default_factory=tuple)
    activation: str = "softmax"

    @property
    def num_classes(self) -> int:
        """Label values of the output label map, background included."""
        return max(self.labels) + 1

    @property
    def in_channels(self) -> int:
        return len(self.input_channels)

    @property
    def out_channels(self) -> int:
        """Channels the network returns: the classes (softmax), or the regions without background."""
        return self.num_classes - 1 if self.activation == "sigmoid" else self.num_classes


def is_bundle_dir(path: Path) -> bool:
    """True when ``path`` looks like a bundle root (has configs/metadata.json or configs/inference.json)."""
    path = Path(path)
    return (path / METADATA).is_file() or (path / INFERENCE).is_file()


def _load_json(path: Path, required: bool) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise BundleError(f"bundle file {path} is missing")
        return {}
    size = path.stat().st_size
    if size > _MAX_CONFIG_BYTES:
        raise BundleError(f"{path} has {size} bytes, more than the {_MAX_CONFIG_BYTES} allowed for a config")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


class _Resolver:
    """Resolves ``@a::b`` / ``@a#b`` and ``$@a`` references inside one config to plain JSON values."""

    def __init__(self, config: dict[str, Any], source: str) -> None:
        self.config = config
        self.source = source

    def lookup(self, ref: str, depth: int) -> Any:
        node: Any = self.config
        for part in re.split(r"::|#", ref):
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise BundleError(f"{self.source}: reference @{ref} does not resolve")
        return self.resolve(node, f"@{ref}", depth + 1)

    def resolve(self, value: Any, where: str, depth: int = 0) -> Any:
        if depth > 16:
            raise BundleError(f"{self.source}: references nest too deeply at {where}")
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("$@") and re.fullmatch(r"\$@[\w:#]+", text):
                return self.lookup(text[2:], depth)
            if text.startswith("@"):
                return self.lookup(text[1:], depth)
            if text.startswith(("$", "%")):
                raise BundleError(
                    f"{self.source}: {where} is an expression or macro ({value!r}); only plain values and "
                    "@references are supported, expressions would run code from the bundle"
                )
            return value
        if isinstance(value, list):
            return [self.resolve(v, f"{where}[{i}]", depth) for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self.resolve(v, f"{where}.{k}", depth) for k, v in value.items()}
        return value


def parse_target(target: object, where: str) -> str:
    """The class name of a network ``_target_``; only names in monai.networks.nets are accepted."""
    match = _TARGET.fullmatch(target) if isinstance(target, str) else None
    if match is None:
        raise BundleError(
            f"{where}: _target_ {target!r} is refused; only a class of monai.networks.nets (e.g. 'UNet', "
            "'SegResNet', 'SwinUNETR') may be instantiated from a bundle"
        )
    return match.group(1)


def _network(inference: dict[str, Any], resolver: _Resolver) -> tuple[str, dict[str, Any]]:
    raw = inference.get("network_def")
    if raw is None and isinstance(inference.get("network"), dict):
        raw = inference["network"]
    if not isinstance(raw, dict):
        raise BundleError(f"{resolver.source}: 'network_def' must be an object with a _target_, got {raw!r}")
    definition = resolver.resolve(raw, "network_def")
    target = parse_target(definition.get("_target_"), f"{resolver.source} network_def")
    kwargs: dict[str, Any] = {}
    for key, value in definition.items():
        if key.startswith("_"):
            if key not in _ALLOWED_PRIVATE_KEYS:
                raise BundleError(f"{resolver.source}: network_def key {key!r} is not supported")
            continue
        if _has_target(value):
            raise BundleError(f"{resolver.source}: network_def.{key} holds a nested _target_ ({value!r})")
        kwargs[key] = value
    return target, kwargs


def _has_target(value: Any) -> bool:
    if isinstance(value, dict):
        return "_target_" in value or any(_has_target(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_target(v) for v in value)
    return False


def _transforms(resolver: _Resolver, section: Any, where: str) -> list[dict[str, Any]]:
    """The transform dicts of a Compose-like section (``{"transforms": [...]}`` or a list), unresolved.

    Only the transforms the service reads are resolved (by :func:`_find`): the others may hold ``$``
    expressions (Zoo bundles' SaveImaged output_dir, BraTS's Lambdad), which are ignored, never run.
    """
    if isinstance(section, str):
        section = resolver.resolve(section, where)
    if isinstance(section, dict):
        section = section.get("transforms", [])
    if isinstance(section, str):
        section = resolver.resolve(section, f"{where}.transforms")
    items = section if isinstance(section, list) else []
    out = []
    for index, item in enumerate(items):
        if isinstance(item, str) and item.strip().startswith("@"):
            item = resolver.resolve(item, f"{where}[{index}]")
        if isinstance(item, dict):
            out.append(item)
    return out


def _short(target: Any) -> str:
    return str(target).rsplit(".", 1)[-1] if isinstance(target, str) else ""


def _find(transforms: list[dict[str, Any]], name: str, resolver: _Resolver) -> dict[str, Any] | None:
    """The first transform named ``name`` (e.g. "Spacingd"), its @references resolved; None if absent."""
    found = next((t for t in transforms if _short(t.get("_target_")) == name), None)
    return resolver.resolve(found, name) if found is not None else None


def _floats(value: Any, n: int, where: str) -> tuple[float, ...]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = [value] * n
    if not (isinstance(value, list) and len(value) == n and all(isinstance(v, int | float) for v in value)):
        raise BundleError(f"{where} must be {n} numbers, got {value!r}")
    if any(float(v) <= 0 for v in value):
        raise BundleError(f"{where} must be positive, got {value!r}")
    return tuple(float(v) for v in value)


def _number(spec: dict[str, Any], key: str, default: float, where: str) -> float:
    value = spec.get(key, default)
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise BundleError(f"{where}.{key} must be a number, got {value!r}")
    return float(value)


def _intensity(transforms: list[dict[str, Any]], resolver: _Resolver, where: str) -> Intensity | None:
    t = _find(transforms, "ScaleIntensityRanged", resolver) or _find(
        transforms, "ScaleIntensityRange", resolver
    )
    if t is not None:
        for key in ("a_min", "a_max"):
            if key not in t:
                raise BundleError(f"{where} ScaleIntensityRanged needs {key}, got {t!r}")
        spec = Intensity(
            "range",
            a_min=_number(t, "a_min", 0.0, where),
            a_max=_number(t, "a_max", 1.0, where),
            b_min=_number(t, "b_min", 0.0, where),
            b_max=_number(t, "b_max", 1.0, where),
            clip=bool(t.get("clip", False)),
        )
        if spec.a_max == spec.a_min:
            raise BundleError(f"{where} ScaleIntensityRanged has a_min == a_max == {spec.a_min}")
        return spec
    if (t := _find(transforms, "NormalizeIntensityd", resolver)) is not None:
        return Intensity(
            "zscore", nonzero=bool(t.get("nonzero", False)), channel_wise=bool(t.get("channel_wise", False))
        )
    if (t := _find(transforms, "ScaleIntensityd", resolver)) is not None:
        return Intensity("minmax", b_min=_number(t, "minv", 0.0, where), b_max=_number(t, "maxv", 1.0, where))
    return None


def read_bundle(directory: Path) -> BundleSpec:
    """Read and check a bundle directory.

    Raises:
        BundleError: a required file is missing, a config is malformed, or the network is not an allowed
            class; the message carries the file and the bad value.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"bundle directory {directory} does not exist")
    metadata = _load_json(directory / METADATA, required=True)
    inference = _load_json(directory / INFERENCE, required=False)
    meta_where = f"{directory.name}/{METADATA}"
    formats = metadata.get("network_data_format", {})
    inputs = formats.get("inputs", {}) if isinstance(formats, dict) else {}
    outputs = formats.get("outputs", {}) if isinstance(formats, dict) else {}
    image = inputs.get("image", next(iter(inputs.values()), {})) if isinstance(inputs, dict) else {}
    pred = outputs.get("pred", next(iter(outputs.values()), {})) if isinstance(outputs, dict) else {}
    if not isinstance(image, dict) or not isinstance(pred, dict):
        raise BundleError(f"{meta_where}: network_data_format inputs/outputs must be objects")

    if (directory / WEIGHTS_PT).is_file():
        weights = WEIGHTS_PT
    elif (directory / WEIGHTS_TS).is_file():
        weights = WEIGHTS_TS
    else:
        raise BundleError(f"bundle {directory} has neither {WEIGHTS_PT} nor {WEIGHTS_TS}")

    where = f"{directory.name}/{INFERENCE}"
    resolver = _Resolver(inference, where)
    target, kwargs = "", dict[str, Any]()
    if "network_def" in inference or isinstance(inference.get("network"), dict):
        target, kwargs = _network(inference, resolver)
    elif weights == WEIGHTS_PT:
        raise BundleError(f"bundle {directory}: {WEIGHTS_PT} needs a network_def in {INFERENCE}")

    pre = _transforms(resolver, inference.get("preprocessing", {}), "preprocessing")
    orientation = _find(pre, "Orientationd", resolver)
    axcodes = orientation.get("axcodes") if orientation is not None else None
    if axcodes is not None and not _valid_axcodes(axcodes):
        raise BundleError(f"{where}: Orientationd.axcodes must be like 'RAS', got {axcodes!r}")
    spacing = _find(pre, "Spacingd", resolver)
    pixdim = _floats(spacing.get("pixdim"), 3, f"{where} Spacingd.pixdim") if spacing is not None else None

    inferer = resolver.resolve(inference.get("inferer", {}), "inferer")
    inferer = inferer if isinstance(inferer, dict) else {}
    roi = inferer.get("roi_size", image.get("spatial_shape"))
    if roi is None:
        raise BundleError(f"{where}: inferer.roi_size (or metadata inputs.image.spatial_shape) is required")
    roi_size = tuple(int(v) for v in _floats(roi, 3, f"{where} inferer.roi_size"))
    overlap = _number(inferer, "overlap", 0.25, f"{where} inferer")
    if not 0.0 <= overlap < 1.0:
        raise BundleError(f"{where}: inferer.overlap must be in [0, 1), got {overlap}")
    sw_batch_size = int(_number(inferer, "sw_batch_size", 1, f"{where} inferer"))
    if sw_batch_size < 1:
        raise BundleError(f"{where}: inferer.sw_batch_size must be >= 1, got {sw_batch_size}")
    blend = str(inferer.get("mode", "gaussian"))
    if blend not in ("gaussian", "constant"):
        raise BundleError(f"{where}: inferer.mode must be 'gaussian' or 'constant', got {blend!r}")

    post = _transforms(resolver, inference.get("postprocessing", {}), "postprocessing")
    activation = _find(post, "Activationsd", resolver)
    sigmoid = activation is not None and activation.get("sigmoid") is True
    labels = output_labels(pred, sigmoid, meta_where)
    largest: tuple[int, ...] = ()
    if (lcc := _find(post, "KeepLargestConnectedComponentd", resolver)) is not None:
        applied = lcc.get("applied_labels")
        if applied is None:
            largest = tuple(range(1, len(labels)))
        elif isinstance(applied, list) and all(isinstance(v, int) for v in applied):
            largest = tuple(int(v) for v in applied)
        elif isinstance(applied, int):
            largest = (applied,)
        else:
            raise BundleError(f"{where}: applied_labels must be label values, got {applied!r}")

    channels = input_channels(image, kwargs.get("in_channels"), meta_where)
    modality = str(image.get("modality") or ("CT" if image.get("format") == "hounsfield" else "unknown"))
    return BundleSpec(
        directory=directory,
        name=str(metadata.get("name", directory.name)),
        version=str(metadata.get("version", "0.0.0")),
        description=str(metadata.get("description", "")),
        task=str(metadata.get("task", "segmentation")),
        modality=modality,
        labels=labels,
        input_channels=channels,
        network_target=target,
        network_kwargs=kwargs,
        weights=weights,
        axcodes=axcodes.upper() if isinstance(axcodes, str) else None,
        pixdim=(pixdim[0], pixdim[1], pixdim[2]) if pixdim is not None else None,
        intensity=_intensity(pre, resolver, f"{where} preprocessing"),
        roi_size=(roi_size[0], roi_size[1], roi_size[2]),
        sw_batch_size=sw_batch_size,
        overlap=overlap,
        blend=blend,
        sigma_scale=_number(inferer, "sigma_scale", 0.125, f"{where} inferer"),
        largest_component=largest,
        activation="sigmoid" if sigmoid else "softmax",
    )


def _valid_axcodes(axcodes: object) -> bool:
    """True for three letters naming each world axis once: one of L/R, one of A/P, one of S/I."""
    if not isinstance(axcodes, str) or len(axcodes) != 3:
        return False
    code = axcodes.upper()
    return all(sum(letter in pair for letter in code) == 1 for pair in ("LR", "AP", "SI"))
