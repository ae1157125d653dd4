"""Model catalog: declarative model cards, weight-file verification and installation.

Imported by the web service, so it must stay light: no torch, no numpy. Cards live as JSON files in
``models/cards/`` (package data); a card's files are paths relative to a models directory, each pinned by
size and sha256 to a public source URL.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CARDS_DIR = Path(__file__).resolve().parent / "cards"


class Cancelled(Exception):
    """A prediction was stopped because its caller asked (raised between layers).

    Defined here, not in the torch-importing predictor module, so that workers and test doubles can
    catch or raise it without importing torch; ``models.predictor.Cancelled`` is the same class.
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
            normalisation ("minmax", "quantile:LO,HI" or "scale:Q,V"; see :mod:`models.preprocess`),
            clip_intensities, axis_order, crop_margin_voxels.
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


@dataclass(frozen=True)
class ModelStatus:
    """A card plus whether its files are present and intact in a models directory."""

    card: ModelCard
    available: bool
    reason: str | None


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
    )


def builtin_cards() -> list[ModelCard]:
    """The cards shipped in ``models/cards/*.json``, sorted by id."""
    paths = sorted(CARDS_DIR.glob("*.json"))
    cards = [card_from_dict(json.loads(p.read_text(encoding="utf-8"))) for p in paths]
    return sorted(cards, key=lambda c: c.id)


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


class Catalog:
    """The models this deployment knows about, checked against one models directory.

    Without explicit ``cards`` it holds the built-in cards plus one card per MONAI bundle installed under
    ``<models_dir>/bundles/`` (see :mod:`models.bundle_install`). Bundles are re-read when that folder or
    a bundle's manifest changes (one stat each per call), so a long-lived catalog (the API's) sees a
    bundle installed after it started. A bundle whose id clashes with a built-in card is ignored.
    """

    def __init__(
        self, models_dir: Path, cards: Sequence[ModelCard] | None = None, *, bundles: bool | None = None
    ) -> None:
        self.models_dir = Path(models_dir)
        chosen = builtin_cards() if cards is None else list(cards)
        self._fixed: dict[str, ModelCard] = {}
        for card in chosen:
            if card.id in self._fixed:
                raise ValueError(f"duplicate model card id {card.id!r}")
            self._fixed[card.id] = card
        self._bundles_enabled = cards is None if bundles is None else bundles
        self._bundle_cards: dict[str, ModelCard] = {}
        self._bundle_signature: tuple[object, ...] | None = None
        self._lock = threading.Lock()

    def _bundles_signature(self) -> tuple[object, ...]:
        root = self.models_dir / "bundles"
        try:
            entries = sorted(os.scandir(root), key=lambda e: e.name)
        except OSError:
            return ()
        signature: list[object] = [root.stat().st_mtime_ns]
        for entry in entries:
            for name in (".segserve-manifest.json", "configs/metadata.json", "configs/inference.json"):
                try:
                    st = os.stat(os.path.join(entry.path, name))
                    signature.append((entry.name, name, st.st_size, st.st_mtime_ns))
                except OSError:
                    signature.append((entry.name, name))
        return tuple(signature)

    @property
    def _cards(self) -> dict[str, ModelCard]:
        if not self._bundles_enabled:
            return self._fixed
        signature = self._bundles_signature()
        with self._lock:
            if signature != self._bundle_signature:
                from models.bundle_install import bundle_cards

                found = {c.id: c for c in bundle_cards(self.models_dir) if c.id not in self._fixed}
                self._bundle_cards, self._bundle_signature = found, signature
            return {**self._fixed, **self._bundle_cards}

    def ids(self) -> list[str]:
        return list(self._cards)

    def card(self, model_id: str) -> ModelCard:
        """The card for ``model_id``; KeyError if there is none."""
        cards = self._cards
        try:
            return cards[model_id]
        except KeyError:
            raise KeyError(f"unknown model id {model_id!r}; known: {list(cards)}") from None

    def status(self, model_id: str) -> ModelStatus:
        card = self.card(model_id)
        reason = check_card(card, self.models_dir)
        return ModelStatus(card=card, available=reason is None, reason=reason)

    def statuses(self) -> list[ModelStatus]:
        return [self.status(model_id) for model_id in self._cards]


def card_to_public(status: ModelStatus) -> dict[str, object]:
    """JSON-able view of a card and its availability (no local filesystem paths)."""
    card = status.card
    return {
        "id": card.id,
        "version": card.version,
        "name": card.name,
        "description": card.description,
        "modality": card.modality,
        "task": card.task,
        "architecture": card.architecture,
        "labels": {str(k): v for k, v in sorted(card.labels.items())},
        "colors": {str(k): list(v) for k, v in sorted(card.colors.items())},
        "input": json.loads(json.dumps(card.input)),
        "files": [{"path": w.path, "sha256": w.sha256, "source_url": w.source_url} for w in card.files],
        "licence": card.licence,
        "citation": card.citation,
        "available": status.available,
        "unavailable_reason": status.reason,
    }


def install_models(source_dir: Path, models_dir: Path, cards: Iterable[ModelCard] | None = None) -> list[str]:
    """Copy the cards' files from ``source_dir`` into ``models_dir``, verifying sha256; install bundles.

    When ``source_dir`` is a MONAI bundle directory (it has ``configs/metadata.json``), it is installed
    under ``models_dir/bundles/<folder name>/`` with a hash manifest (see
    :func:`models.bundle_install.install_bundle`), and so is every bundle under ``source_dir/bundles/``.

    A file is taken from ``source_dir/<path>`` when that matches, otherwise from any file under
    ``source_dir`` with the right size and sha256. Files already intact in ``models_dir`` are left alone;
    files not found are skipped (the catalog then reports the model unavailable). Copies go through a
    temporary file and an atomic rename, so a reader never sees a half-written file.

    Returns:
        relative paths of the files copied.
    """
    from models.bundle_install import find_bundles, install_bundle

    source_dir, models_dir = Path(source_dir), Path(models_dir)
    bundles = find_bundles(source_dir)
    if bundles and bundles[0] == source_dir:
        return install_bundle(source_dir, models_dir)
    installed_bundles = [path for bundle in bundles for path in install_bundle(bundle, models_dir)]
    wanted = [w for card in (builtin_cards() if cards is None else cards) for w in card.files]
    by_size: dict[int, list[Path]] = {}
    installed: list[str] = []
    for weight in wanted:
        if check_file(weight, models_dir) is None:
            continue
        source: Path | None = source_dir / weight.path
        if check_file(weight, source_dir) is not None:
            if not by_size:
                for p in source_dir.rglob("*"):
                    if p.is_file():
                        by_size.setdefault(p.stat().st_size, []).append(p)
            candidates = by_size.get(weight.size_bytes, [])
            source = next((p for p in candidates if file_sha256(p) == weight.sha256), None)
        if source is None:
            continue
        target = models_dir / weight.path
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        os.close(fd)
        try:
            shutil.copyfile(source, tmp_name)
            if file_sha256(Path(tmp_name)) != weight.sha256:
                raise OSError(f"copy of {source} to {target} does not match sha256 {weight.sha256}")
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, target)
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
        installed.append(weight.path)
    return installed + installed_bundles
