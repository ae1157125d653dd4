"""Reading a MONAI bundle directory (Model Zoo layout): its configs as plain data, never evaluated.

Torch-free (the catalog imports it). ``configs/inference.json`` (or ``.yaml`` / ``.yml``) is read with
``json`` / ``yaml.safe_load``, as MONAI's ConfigParser reads it, and ``configs/metadata.json`` gives what the
card shows:

    name, version, description, task          the card's text
    network_data_format.inputs.image          modality, num_channels, channel_def -> input channel names
    network_data_format.outputs.pred          channel_def -> label names (see models.bundle.channels;
                                              the values the bundle really writes are probed at install,
                                              models.bundle.build.probe_labels, and kept in the manifest)

What the config *computes* is MONAI's business (models.bundle.build); what of it runs code is
models.bundle.trust.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.bundle.channels import BundleError, channel_form_name, input_channels, output_labels

__all__ = ["BundleError", "BundleInfo", "find_config", "is_bundle_dir", "load_config", "read_bundle"]

METADATA = "configs/metadata.json"
CONFIG_NAMES = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml")
INFERENCE = CONFIG_NAMES[0]
WEIGHTS_PT = "models/model.pt"
WEIGHTS_TS = "models/model.ts"
RUN_IDS = ("run", "inference", "evaluating")
_MAX_CONFIG_BYTES = 4 << 20


@dataclass(frozen=True)
class BundleInfo:
    """What the card needs from one bundle (plain values, nothing evaluated).

    Attributes:
        config_path: the inference config, relative to the bundle root.
        labels: label value -> name from the metadata (softmax: channel c is value c; sigmoid: c + 1).
        input_channels: form names of the input channels in the network's order (("image",) for one).
        network_target: the network's ``_target_`` when it is a plain name, else "".
        roi_size: the inferer's roi_size when it is plain numbers, else None.
        run_id: the config's entry point for MONAI's runner ("run", "inference" or "evaluating").
    """

    directory: Path
    config_path: str
    name: str
    version: str
    description: str
    task: str
    modality: str
    labels: dict[int, str]
    input_channels: tuple[str, ...]
    network_target: str
    roi_size: tuple[int, ...] | None
    run_id: str
    orientation: str | None = None
    spacing_mm: tuple[float, ...] | None = None
    input_keys: tuple[str, ...] = ("image",)
    network_in_channels: int | None = None  # metadata num_channels: what the network takes


def find_config(directory: Path) -> str | None:
    """The relative path of the bundle's inference config (JSON first, then YAML), or None."""
    return next((name for name in CONFIG_NAMES if (Path(directory) / name).is_file()), None)


def is_bundle_dir(path: Path) -> bool:
    """True when ``path`` looks like a bundle root (configs/metadata.json or an inference config)."""
    path = Path(path)
    return (path / METADATA).is_file() or find_config(path) is not None


def _read_text(path: Path) -> str:
    size = path.stat().st_size
    if size > _MAX_CONFIG_BYTES:
        raise BundleError(f"{path} has {size} bytes, more than the {_MAX_CONFIG_BYTES} allowed for a config")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"{path} is not UTF-8 text: {exc}") from None


def load_config(path: Path) -> dict[str, Any]:
    """A config file as plain data: JSON, or YAML read with ``yaml.safe_load`` (no tags, no code)."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"bundle file {path} is missing")
    text = _read_text(path)
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except ValueError as exc:  # json.JSONDecodeError and yaml.YAMLError (via its message) are reported
        raise BundleError(f"{path} cannot be read: {exc}") from None
    except Exception as exc:  # yaml.YAMLError is not a ValueError
        raise BundleError(f"{path} cannot be read: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path} must hold a mapping, got {type(data).__name__}")
    return data


def _plain_roi(config: dict[str, Any]) -> tuple[int, ...] | None:
    inferer = config.get("inferer")
    roi = inferer.get("roi_size") if isinstance(inferer, dict) else None
    if isinstance(roi, list) and roi and all(isinstance(v, int) and not isinstance(v, bool) for v in roi):
        return tuple(roi)
    return None


def _plain_step(config: dict[str, Any], name: str, key: str) -> Any:
    """A plain (not ``$``/``@``) argument of the first preprocessing step ``name``, for the card only."""
    pre = config.get("preprocessing")
    items = pre.get("transforms") if isinstance(pre, dict) else pre
    for item in items if isinstance(items, list) else []:
        target = item.get("_target_") if isinstance(item, dict) else None
        if isinstance(target, str) and target.rsplit(".", 1)[-1] == name:
            value = item.get(key)
            return None if isinstance(value, str) and value.startswith(("$", "@", "%")) else value
    return None


def load_keys(config: dict[str, Any]) -> tuple[str, ...]:
    """The keys the first LoadImaged reads (plain names or plain @references), ("image",) otherwise.

    One key: the case's volumes go there (a list for several channels, as BraTS's datalist). Several keys
    (renalStructures: artery, vein, excret): one volume per key, in that order, named by the keys."""
    pre = config.get("preprocessing")
    items = pre.get("transforms") if isinstance(pre, dict) else pre
    for item in items if isinstance(items, list) else []:
        target = item.get("_target_") if isinstance(item, dict) else None
        if isinstance(target, str) and target.rsplit(".", 1)[-1] == "LoadImaged":
            keys = item.get("keys")
            keys = keys if isinstance(keys, list) else [keys]
            plain = []
            for key in keys:
                if isinstance(key, str) and key.startswith("@") and isinstance(config.get(key[1:]), str):
                    key = config[key[1:]]
                if not isinstance(key, str) or key.startswith(("$", "@", "%")):
                    return ("image",)
                plain.append(key)
            return tuple(plain) or ("image",)
    return ("image",)


def _sigmoid(config: dict[str, Any]) -> bool:
    post = config.get("postprocessing")
    items = post.get("transforms") if isinstance(post, dict) else post
    for item in items if isinstance(items, list) else []:
        target = item.get("_target_") if isinstance(item, dict) else None
        if isinstance(target, str) and target.rsplit(".", 1)[-1] == "Activationsd":
            return item.get("sigmoid") is True
    return False


def read_bundle(directory: Path) -> BundleInfo:
    """Read and check a bundle directory's metadata and config (as data).

    Raises:
        BundleError: a required file is missing or malformed; the message names the file and value.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"bundle directory {directory} does not exist")
    metadata = load_config(directory / METADATA)
    config_path = find_config(directory)
    if config_path is None:
        raise BundleError(f"bundle {directory.name} has no {' / '.join(CONFIG_NAMES)}")
    config = load_config(directory / config_path)
    meta_where = f"{directory.name}/{METADATA}"
    formats = metadata.get("network_data_format", {})
    inputs = formats.get("inputs", {}) if isinstance(formats, dict) else {}
    outputs = formats.get("outputs", {}) if isinstance(formats, dict) else {}
    image = inputs.get("image", next(iter(inputs.values()), {})) if isinstance(inputs, dict) else {}
    pred = outputs.get("pred", next(iter(outputs.values()), {})) if isinstance(outputs, dict) else {}
    if not isinstance(image, dict) or not isinstance(pred, dict):
        raise BundleError(f"{meta_where}: network_data_format inputs/outputs must be objects")
    network = config.get("network_def", config.get("network"))
    target = network.get("_target_") if isinstance(network, dict) else None
    in_channels = network.get("in_channels") if isinstance(network, dict) else None
    keys = load_keys(config)
    if len(keys) > 1:  # one volume per LoadImaged key, named by the keys
        channels = tuple(channel_form_name(k) or f"channel{i}" for i, k in enumerate(keys) if k != "label")
    else:
        channels = input_channels(image, in_channels if isinstance(in_channels, int) else None, meta_where)
    modality = str(image.get("modality") or ("CT" if image.get("format") == "hounsfield" else "unknown"))
    run_id = next((r for r in RUN_IDS if r in config), "run")
    return BundleInfo(
        directory=directory,
        config_path=config_path,
        name=str(metadata.get("name", directory.name)),
        version=str(metadata.get("version", "0.0.0")),
        description=str(metadata.get("description", "")),
        task=str(metadata.get("task", "segmentation")),
        modality=modality,
        labels=output_labels(pred, _sigmoid(config), meta_where),
        input_channels=channels,
        network_target=target.rsplit(".", 1)[-1] if isinstance(target, str) and "$" not in target else "",
        roi_size=_plain_roi(config),
        run_id=run_id,
        input_keys=keys,
        network_in_channels=image.get("num_channels") if isinstance(image.get("num_channels"), int) else None,
        orientation=axcodes
        if isinstance(axcodes := _plain_step(config, "Orientationd", "axcodes"), str)
        else None,
        spacing_mm=tuple(float(v) for v in pixdim)
        if isinstance(pixdim := _plain_step(config, "Spacingd", "pixdim"), list)
        and all(isinstance(v, int | float) for v in pixdim)
        else None,
    )
