"""MONAI bundles in the catalog: install into ``<models_dir>/bundles/<id>/``, hash manifest, model cards.

Torch-free. Installing copies the bundle directory, then writes ``.segserve-manifest.json`` with each
file's size and sha256; the bundle's card lists those files, so the catalog's usual check (size, sha256)
marks the model unavailable when any of them changes later. A bundle without a manifest (copied by hand)
is listed as unavailable, with the reason.
"""

from __future__ import annotations

import colorsys
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from models.bundle import BundleError, BundleSpec, is_bundle_dir, read_bundle
from models.catalog import ModelCard, WeightFile, file_sha256

log = logging.getLogger(__name__)

BUNDLES = "bundles"
MANIFEST = ".segserve-manifest.json"
WEIGHTS_FORMAT = "monai-bundle"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def label_colors(num_classes: int) -> dict[int, tuple[int, int, int]]:
    """Deterministic, well separated colours: 0 is black, then hues stepped by the golden angle."""
    colors: dict[int, tuple[int, int, int]] = {0: (0, 0, 0)}
    for value in range(1, num_classes):
        hue = (value * 0.618033988749895) % 1.0
        lightness = 0.45 + 0.15 * ((value // 7) % 2)
        r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.75)
        colors[value] = (round(r * 255), round(g * 255), round(b * 255))
    return colors


def _bundle_files(directory: Path) -> list[str]:
    """Relative POSIX paths of every regular file of a bundle, the manifest excluded, sorted."""
    files = []
    for path in sorted(directory.rglob("*")):
        if path.is_symlink():
            raise BundleError(f"bundle {directory} contains a symbolic link ({path}); copy the real file in")
        if path.is_file() and path.name != MANIFEST:
            files.append(path.relative_to(directory).as_posix())
    return files


def write_manifest(directory: Path) -> dict[str, Any]:
    """Hash every file of the bundle and write the manifest (atomically). Returns the manifest."""
    directory = Path(directory)
    manifest = {
        "format": 1,
        "files": {
            rel: {"size_bytes": (directory / rel).stat().st_size, "sha256": file_sha256(directory / rel)}
            for rel in _bundle_files(directory)
        },
    }
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f"{MANIFEST}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True)
    os.replace(tmp, directory / MANIFEST)
    return manifest


def bundle_id(directory: Path) -> str:
    """The model id of a bundle: its folder name, which must be URL-safe."""
    name = Path(directory).name
    if not _ID.fullmatch(name):
        raise BundleError(f"bundle folder name {name!r} is not a valid model id (letters, digits, . _ -)")
    return name


def _stub_card(model_id: str, reason: str) -> ModelCard:
    """A card for a bundle that cannot be read: listed, never available, with the reason."""
    return ModelCard(
        id=model_id,
        version="0",
        name=model_id,
        description="",
        modality="unknown",
        task="segmentation",
        architecture="unknown",
        labels={},
        colors={},
        input={},
        files=(),
        licence="",
        citation="",
        params={"weights_format": WEIGHTS_FORMAT, "unavailable_reason": reason},
    )


def card_from_bundle(spec: BundleSpec, models_dir: Path) -> ModelCard:
    """The catalog card of an installed bundle; files and sha256 come from its manifest."""
    directory = spec.directory
    model_id = bundle_id(directory)
    rel_dir = f"{BUNDLES}/{model_id}"
    params: dict[str, object] = {
        "weights_format": WEIGHTS_FORMAT,
        "bundle_dir": rel_dir,
        "weights": spec.weights,
        "largest_component": list(spec.largest_component),
        "activation": spec.activation,
    }
    files: tuple[WeightFile, ...] = ()
    manifest_path = directory / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = tuple(
            WeightFile(
                path=f"{rel_dir}/{rel}",
                sha256=str(entry["sha256"]),
                size_bytes=int(entry["size_bytes"]),
                source_url="",
            )
            for rel, entry in sorted(manifest["files"].items())
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        params["unavailable_reason"] = (
            f"bundle {model_id} has no valid {MANIFEST} ({type(exc).__name__}); install it with "
            "'segserve models install PATH' so its files are hashed"
        )
    input_spec: dict[str, object] = {
        "orientation": spec.axcodes,
        "spacing_mm": list(spec.pixdim) if spec.pixdim else None,
        "roi_size": list(spec.roi_size),
        "channels": list(spec.input_channels),
        "expects": spec.description or spec.name,
        "output": "sigmoid multi-label: region c is label c + 1, the smallest region containing a voxel wins"
        if spec.activation == "sigmoid"
        else "softmax: one class per voxel (argmax)",
    }
    if spec.intensity is not None:
        input_spec["intensity"] = asdict(spec.intensity)
    return ModelCard(
        id=model_id,
        version=spec.version,
        name=spec.name,
        description=spec.description,
        modality=spec.modality,
        task=spec.task,
        architecture=spec.network_target or "torchscript",
        labels=dict(spec.labels),
        colors=label_colors(spec.num_classes),
        input=input_spec,
        files=files,
        licence="see the bundle's LICENSE" if (directory / "LICENSE").is_file() else "not stated",
        citation="",
        params=params,
    )


def bundle_cards(models_dir: Path) -> list[ModelCard]:
    """Cards of the bundles under ``<models_dir>/bundles/``; unreadable ones as unavailable stubs."""
    root = Path(models_dir) / BUNDLES
    if not root.is_dir():
        return []
    cards = []
    for directory in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            cards.append(card_from_bundle(read_bundle(directory), models_dir))
        except BundleError as exc:
            if _ID.fullmatch(directory.name):
                cards.append(_stub_card(directory.name, str(exc)))
            else:
                log.warning("skipping bundle folder %r: %s", directory.name, exc)
    return cards


def install_bundle(source: Path, models_dir: Path) -> list[str]:
    """Copy a bundle directory to ``<models_dir>/bundles/<folder name>/`` and write its manifest.

    The bundle is checked first (:func:`read_bundle`), copied to a temporary folder next to the target
    and renamed into place, replacing an older copy. Returns the installed paths relative to models_dir.

    Raises:
        BundleError: the source is not a usable bundle.
    """
    source, models_dir = Path(source), Path(models_dir)
    read_bundle(source)
    model_id = bundle_id(source)
    root = models_dir / BUNDLES
    root.mkdir(parents=True, exist_ok=True)
    files = _bundle_files(source)
    target = root / model_id
    if _same_content(source, files, target):
        return []
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{model_id}."))
    try:
        for rel in files:
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / rel, staging / rel)
        write_manifest(staging)
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=root, prefix=f".{model_id}.old."))
            os.replace(target, old / model_id)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return [f"{BUNDLES}/{model_id}/{rel}" for rel in files]


def _same_content(source: Path, files: list[str], target: Path) -> bool:
    """True when ``target`` is an installed copy (manifest included) of exactly ``source``'s files."""
    try:
        manifest = json.loads((target / MANIFEST).read_text(encoding="utf-8"))["files"]
        if sorted(manifest) != files:
            return False
        return all(
            file_sha256(source / rel) == manifest[rel]["sha256"] == file_sha256(target / rel) for rel in files
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def find_bundles(source: Path) -> list[Path]:
    """``source`` itself when it is a bundle, else the bundles directly under ``source/bundles/``."""
    source = Path(source)
    if is_bundle_dir(source):
        return [source]
    root = source / BUNDLES
    if not root.is_dir():
        return []
    return [p for p in sorted(root.iterdir()) if p.is_dir() and is_bundle_dir(p)]
