"""Reading an nnU-Net v2 trained model folder (torch-free): ``dataset.json``, ``plans.json``, ``fold_*/``.

A trained model folder is what ``nnUNetv2_train`` leaves under ``nnUNet_results/<Dataset>/``:
``<Trainer>__<Plans>__<configuration>/`` holding ``dataset.json``, ``plans.json`` and one
``fold_<f>/checkpoint_final.pth`` per trained fold (``fold_all`` for a model trained on all cases).

What the catalog takes from it:
- labels: ``dataset.json["labels"]`` maps names to values. A plain model's output values are those values.
  A region-based model (a label given as a list of values, e.g. ``"kidney": [1, 2, 3]``) predicts one sigmoid
  region per non-background label, in the order of ``labels``, and writes region i as the value
  ``regions_class_order[i]`` where its probability passes 0.5, later regions over earlier ones (nnU-Net's
  ``LabelManager``); so the card's value ``regions_class_order[i]`` carries region i's name. An ``ignore``
  label is never an output.
- input channels: ``dataset.json["channel_names"]`` ({"0": "T2", "1": "ADC"}), in index order; a
  multi-channel model takes one upload part per channel, named by :func:`channel_form_name` ("t2", "adc").
- modality and normalisation: ``plans.json``'s configuration ``normalization_schemes`` per channel
  ("CTNormalization" means CT in Hounsfield units).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.installed import InstallError

DATASET_JSON = "dataset.json"
PLANS_JSON = "plans.json"
CHECKPOINT = "checkpoint_final.pth"
MAX_CHANNELS = 16
_FOLD = re.compile(r"^fold_(\d+|all)$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_]{0,31}$")


class NnunetError(InstallError):
    """An nnU-Net model folder cannot be used; the message names the file, the key and the bad value."""


@dataclass(frozen=True)
class NnunetSpec:
    """What a trained model folder is.

    Attributes:
        directory: the folder (``<Trainer>__<Plans>__<configuration>`` as trained, or an installed copy).
        trainer, plans_name, configuration: from the folder name (an installed copy: from its manifest).
        dataset_name: ``plans.json["dataset_name"]``, e.g. "Dataset003_Liver".
        folds: the folds with a ``checkpoint_final.pth`` (ints; "all" for ``fold_all``), sorted.
        channels: upload names of the input channels, in network order ("image" for one unnamed channel).
        channel_names: the names as ``dataset.json`` gives them.
        labels: output value -> structure name, 0 background.
        regions: True for a region-based (sigmoid) model.
        normalization: the configuration's ``normalization_schemes``, one per channel.
        spacing_mm: the configuration's target spacing, in nnU-Net's (z, y, x) order.
        patch_size: the configuration's sliding-window patch, (z, y, x).
        network_class: the plans' ``architecture.network_class_name`` (last dotted part, "PlainConvUNet").
        description, licence: from dataset.json ("" when it has none).
    """

    directory: Path
    trainer: str
    plans_name: str
    configuration: str
    dataset_name: str
    folds: tuple[int | str, ...]
    channels: tuple[str, ...]
    channel_names: tuple[str, ...]
    labels: dict[int, str]
    regions: bool
    normalization: tuple[str, ...]
    spacing_mm: tuple[float, ...]
    patch_size: tuple[int, ...]
    network_class: str = ""
    description: str = ""
    licence: str = ""

    @property
    def modality(self) -> str:
        """ "CT" when every channel is CT-normalised, else the channel names joined ("T2+ADC")."""
        if self.normalization and all(n == "CTNormalization" for n in self.normalization):
            return "CT"
        return "+".join(self.channel_names) or "unknown"


def channel_form_name(name: str) -> str:
    """The upload name of a channel: "T2" -> "t2", "FLAIR (3D)" -> "flair_3d"."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:32]


def is_model_folder(path: Path) -> bool:
    """True when ``path`` looks like a trained model folder: dataset.json or plans.json or a ``fold_*``
    folder, under a ``<Trainer>__<Plans>__<configuration>`` name. Whether it is a usable one is
    :func:`read_model_folder`'s to say (so an incomplete folder gets an error naming what is missing)."""
    path = Path(path)
    if not path.is_dir() or len(path.name.split("__")) != 3:
        return False
    return (
        (path / DATASET_JSON).is_file()
        or (path / PLANS_JSON).is_file()
        or any(p.is_dir() and _FOLD.fullmatch(p.name) for p in path.iterdir())
    )


def split_folder_name(name: str) -> tuple[str, str, str]:
    """``<Trainer>__<Plans>__<configuration>`` -> (trainer, plans, configuration)."""
    parts = name.split("__")
    if len(parts) != 3 or not all(parts):
        raise NnunetError(
            f"model folder name {name!r} is not <Trainer>__<Plans>__<configuration> "
            "(as nnUNetv2_train names it)"
        )
    return parts[0], parts[1], parts[2]


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise NnunetError(f"{path.parent.name}/{path.name} is missing: an nnU-Net model folder needs it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NnunetError(f"{path.name} cannot be read as JSON: {exc}") from None
    if not isinstance(data, dict):
        raise NnunetError(f"{path.name} must hold a JSON object, got {type(data).__name__}")
    return data


def fold_folders(directory: Path) -> dict[int | str, Path]:
    """Fold -> folder, for every ``fold_<f>`` folder (with or without a checkpoint)."""
    found: dict[int | str, Path] = {}
    for path in sorted(Path(directory).iterdir()):
        match = _FOLD.fullmatch(path.name)
        if path.is_dir() and match:
            found[int(match.group(1)) if match.group(1).isdigit() else "all"] = path
    return found


def configuration(plans: dict[str, Any], name: str) -> dict[str, Any]:
    """The configuration ``name`` of plans.json with its ``inherits_from`` parents merged in (as nnU-Net's
    PlansManager does)."""
    configs = plans.get("configurations")
    if not isinstance(configs, dict) or name not in configs:
        available = sorted(configs) if isinstance(configs, dict) else []
        raise NnunetError(f"plans.json has no configuration {name!r} (it has {available})")
    seen: list[str] = []
    merged: dict[str, Any] = {}
    while name not in seen:
        seen.append(name)
        config = configs.get(name)
        if not isinstance(config, dict):
            raise NnunetError(f"plans.json: configuration {name!r} (inherited by {seen[0]!r}) is missing")
        merged = {**config, **merged}
        parent = config.get("inherits_from")
        if parent is None:
            merged.pop("inherits_from", None)
            return merged
        name = str(parent)
    raise NnunetError(f"plans.json: configuration {seen[0]!r} inherits from itself ({' -> '.join(seen)})")


def read_labels(dataset: dict[str, Any]) -> tuple[dict[int, str], bool]:
    """Output value -> name, and whether the model is region-based (see the module docstring)."""
    labels = dataset.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise NnunetError(f"dataset.json: 'labels' must map names to values, got {labels!r}")
    named: list[tuple[str, int | tuple[int, ...]]] = []
    for name, value in labels.items():
        if isinstance(value, int) and not isinstance(value, bool):
            named.append((str(name), value))
        elif isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            named.append((str(name), tuple(value)))
        else:
            raise NnunetError(
                f"dataset.json: label {name!r} must be an integer or a list of them, got {value!r}"
            )
    if dict(named).get("background") != 0:
        raise NnunetError("dataset.json: labels must declare 'background' as 0")
    foreground = [(n, v) for n, v in named if n not in ("background", "ignore")]
    regions = any(isinstance(v, tuple) for _, v in foreground)
    order = dataset.get("regions_class_order")
    if not regions:
        out = {0: "background", **{int(v): n for n, v in foreground if isinstance(v, int)}}
        if len(out) != len(foreground) + 1:
            raise NnunetError(f"dataset.json: two labels share a value in {labels}")
        return dict(sorted(out.items())), False
    if not isinstance(order, list) or len(order) != len(foreground):
        raise NnunetError(
            f"dataset.json: a region-based model needs 'regions_class_order' with one value per region "
            f"({len(foreground)}: {[n for n, _ in foreground]}), got {order!r}"
        )
    if not all(isinstance(v, int) and v > 0 for v in order) or len(set(order)) != len(order):
        raise NnunetError(
            f"dataset.json: regions_class_order must be distinct positive integers, got {order}"
        )
    names = {int(v): n for v, (n, _) in zip(order, foreground, strict=True)}
    return {0: "background", **dict(sorted(names.items()))}, True


def read_channels(dataset: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(upload names, dataset.json names) of the input channels, in index order."""
    names = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(names, dict) or not names:
        raise NnunetError(f"dataset.json: 'channel_names' must map 0..C-1 to names, got {names!r}")
    try:
        by_index = {int(k): str(v) for k, v in names.items()}
    except ValueError:
        raise NnunetError(f"dataset.json: channel_names keys must be integers, got {list(names)}") from None
    if sorted(by_index) != list(range(len(by_index))) or len(by_index) > MAX_CHANNELS:
        raise NnunetError(f"dataset.json: channel_names must name 0..C-1 (C <= {MAX_CHANNELS}), got {names}")
    given = tuple(by_index[i] for i in range(len(by_index)))
    if len(given) == 1:
        return ("image",), given
    forms = tuple(channel_form_name(n) or f"channel{i}" for i, n in enumerate(given))
    if len(set(forms)) != len(forms) or not all(_NAME.fullmatch(f) for f in forms):
        raise NnunetError(f"dataset.json: channel names {given} must give distinct upload names, got {forms}")
    return forms, given


def read_model_folder(
    directory: Path, folds: tuple[int | str, ...] | None = None, folder_name: str | None = None
) -> NnunetSpec:
    """Read and check a trained model folder (json only; weights are checked by :mod:`.validate`).

    Args:
        folds: the folds to use (None: every fold with a checkpoint).
        folder_name: ``<Trainer>__<Plans>__<configuration>`` when ``directory`` is an installed copy.
    Raises:
        NnunetError: a file or value is missing or cannot be honoured (named in the message).
    """
    directory = Path(directory)
    trainer, plans_name, config_name = split_folder_name(folder_name or directory.name)
    dataset = _load_json(directory / DATASET_JSON)
    plans = _load_json(directory / PLANS_JSON)
    config = configuration(plans, config_name)
    if config.get("previous_stage"):
        raise NnunetError(
            f"plans.json: configuration {config_name!r} is a cascade stage (previous_stage "
            f"{config['previous_stage']!r}); cascades are not supported, install the previous stage's model"
        )
    present = fold_folders(directory)
    with_checkpoint = tuple(f for f, p in present.items() if (p / CHECKPOINT).is_file())
    if folds is None:
        # as nnU-Net's auto-detection: every numbered fold with a final checkpoint; fold_all only alone
        chosen = tuple(f for f in with_checkpoint if f != "all") or with_checkpoint
        if not chosen:
            raise NnunetError(
                f"{directory.name}: no fold_*/{CHECKPOINT} (folders: {sorted(map(str, present))})"
            )
    else:
        for fold in folds:
            if fold not in present:
                raise NnunetError(f"fold {fold} was asked for but {directory.name}/fold_{fold}/ is missing")
            if fold not in with_checkpoint:
                raise NnunetError(f"fold_{fold}/{CHECKPOINT} is missing: fold {fold} has no final checkpoint")
        chosen = tuple(dict.fromkeys(folds))
    labels, regions = read_labels(dataset)
    channels, channel_names = read_channels(dataset)
    normalization = config.get("normalization_schemes")
    if not isinstance(normalization, list) or len(normalization) != len(channels):
        raise NnunetError(
            f"plans.json: configuration {config_name!r} normalization_schemes {normalization!r} must "
            f"name one scheme per input channel ({len(channels)})"
        )
    spacing, patch = config.get("spacing"), config.get("patch_size")
    if not isinstance(spacing, list) or not isinstance(patch, list) or len(spacing) != len(patch):
        raise NnunetError(
            f"plans.json: configuration {config_name!r} needs spacing and patch_size, got {config}"
        )
    return NnunetSpec(
        directory=directory,
        trainer=trainer,
        plans_name=plans_name,
        configuration=config_name,
        dataset_name=str(plans.get("dataset_name", dataset.get("name", "nnunet"))),
        folds=tuple(sorted(chosen, key=lambda f: (isinstance(f, str), str(f).zfill(4)))),
        channels=channels,
        channel_names=channel_names,
        labels=labels,
        regions=regions,
        normalization=tuple(str(n) for n in normalization),
        spacing_mm=tuple(float(s) for s in spacing),
        patch_size=tuple(int(p) for p in patch),
        network_class=str((config.get("architecture") or {}).get("network_class_name", "")).rsplit(".", 1)[
            -1
        ],
        description=str(dataset.get("description", dataset.get("name", ""))),
        licence=str(dataset.get("licence", dataset.get("license", ""))),
    )
