"""Model cards: what a model is and which files it needs, and the check that those files are intact.

Imported by the web service, so it must stay light: no torch, no numpy. A card's files are paths relative
to a models directory, each pinned by size and sha256 (built-in cards: to a public source URL).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class Cancelled(Exception):
    """A prediction was stopped because its caller asked (raised between layers).

    Defined here, not in the torch-importing predictor module, so that workers and test doubles can
    catch or raise it without importing torch; ``models.predictor`` re-exports it.
    """


class ModelUnavailable(Exception):
    """A model cannot be loaded; ``reason`` says which file is missing or damaged."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class WeightFile:
    """One file a model needs.

    Attributes:
        path: relative to the models directory, e.g. "brainchop/model30chan18cls/model.bin".
        sha256: lowercase hex digest of the file's bytes.
        size_bytes: exact size in bytes.
        source_url: pinned public URL (fixed commit) the file can be fetched from.
    """

    path: str
    sha256: str
    size_bytes: int
    source_url: str


@dataclass(frozen=True)
class ModelCard:
    """What a model is, what it expects and which files it needs.

    Attributes:
        labels: class value -> structure name (0 is background).
        colors: class value -> (R, G, B), 0..255.
        input: orientation ("LIA"), spacing_mm, shape, intensity_normalisation, expects (e.g.
            "skull-stripped T1-weighted MRI").
        params: loader / pre-processing parameters: weights_format, model_json (relative path),
            normalisation ("minmax", "quantile:LO,HI" or "scale:Q,V"; see :mod:`models.meshnet.preprocess`),
            clip_intensities, axis_order, crop_margin_voxels.
        lesion_labels: the label values that are abnormalities (tumour, metastasis, nodule...): a job of
            such a model gets lesion instances (evaluation/instances.py) and, with a reference, lesion-wise
            metrics. Built-in cards list them in their JSON; installed bundles and nnU-Net models get them
            from the installer (`segserve models install --lesion-labels 2,3`), stored in the manifest.
    """

    id: str
    version: str
    name: str
    description: str
    modality: str
    task: str
    architecture: str
    labels: dict[int, str]
    colors: dict[int, tuple[int, int, int]]
    input: dict[str, object]
    files: tuple[WeightFile, ...]
    licence: str
    citation: str
    params: dict[str, object]
    lesion_labels: tuple[int, ...] = ()

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1 if self.labels else 0


def input_channels(card: ModelCard) -> tuple[str, ...]:
    """Form names of a multi-channel model's inputs, in the network's order (e.g. BraTS: "t1c", "t1",
    "t2", "flair"); () for a model that takes one image (every built-in card)."""
    channels = card.input.get("channels")
    if isinstance(channels, list) and len(channels) > 1:
        return tuple(str(c) for c in channels)
    return ()


def card_from_dict(data: dict[str, Any]) -> ModelCard:
    """Build a card from its JSON form (label/colour keys are strings there)."""
    return ModelCard(
        id=str(data["id"]),
        version=str(data["version"]),
        name=str(data["name"]),
        description=str(data["description"]),
        modality=str(data["modality"]),
        task=str(data["task"]),
        architecture=str(data["architecture"]),
        labels={int(k): str(v) for k, v in data["labels"].items()},
        colors={int(k): (int(v[0]), int(v[1]), int(v[2])) for k, v in data["colors"].items()},
        input=dict(data["input"]),
        files=tuple(WeightFile(**f) for f in data["files"]),
        licence=str(data["licence"]),
        citation=str(data["citation"]),
        params=dict(data.get("params", {})),
        lesion_labels=check_lesion_labels(data.get("lesion_labels", ()), data["labels"]),
    )


def check_lesion_labels(values: Any, labels: Any) -> tuple[int, ...]:
    """Lesion label values as a sorted tuple, each a foreground value of `labels` (keys int or str).

    Raises ValueError naming the values that are not labels of the model.
    """
    known = {int(k) for k in labels}
    chosen = sorted({int(v) for v in values})
    unknown = [v for v in chosen if v <= 0 or v not in known]
    if unknown:
        raise ValueError(
            f"lesion labels {unknown} are not foreground labels of the model (its labels: {sorted(known)})"
        )
    return tuple(chosen)


_hash_cache: dict[tuple[str, int, int], str] = {}
_hash_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """sha256 of a file, cached by (resolved path, size, mtime_ns) so repeated checks cost one stat."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _hash_lock:
        cached = _hash_cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    with _hash_lock:
        _hash_cache[key] = value
    return value


def check_file(weight: WeightFile, models_dir: Path) -> str | None:
    """None when ``models_dir/weight.path`` exists with the card's size and sha256, else why not."""
    path = Path(models_dir) / weight.path
    if not path.is_file():
        return f"file {weight.path} is missing (looked for {path})"
    size = path.stat().st_size
    if size != weight.size_bytes:
        return f"file {weight.path} has {size} bytes, expected {weight.size_bytes}"
    digest = file_sha256(path)
    if digest != weight.sha256:
        return f"file {weight.path} has sha256 {digest}, expected {weight.sha256}"
    return None


def check_card(card: ModelCard, models_dir: Path) -> str | None:
    """None when every file of ``card`` is present and intact, else the reasons joined by '; '.

    A card whose ``params["unavailable_reason"]`` is set (a bundle that could not be read) is never
    available.
    """
    problems = [r for r in (check_file(w, models_dir) for w in card.files) if r is not None]
    if card.params.get("unavailable_reason"):
        problems.insert(0, str(card.params["unavailable_reason"]))
    return "; ".join(problems) if problems else None
