"""MONAI bundles in the catalog: install into ``<models_dir>/bundles/<id>/``, hash manifest, model cards.

Torch-free. Installing copies the bundle directory, then writes ``.segserve-manifest.json`` with each
file's size and sha256; the bundle's card lists those files, so the catalog's usual check (size, sha256)
marks the model unavailable when any of them changes later. A bundle without a manifest (copied by hand)
is listed as unavailable, with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from models.bundle.config import BundleError, BundleSpec, is_bundle_dir, read_bundle
from models.card import ModelCard, WeightFile
from models.format import InstallOptions, ModelFormat
from models.installed import (
    MANIFEST,
    MODEL_ID,
    InstallError,
    checked_model_id,
    install_folder,
    label_colors,
    manifest_files,
    model_files,
    read_manifest,
    unavailable_card,
)

log = logging.getLogger(__name__)

BUNDLES = "bundles"
WEIGHTS_FORMAT = "monai-bundle"


def bundle_id(directory: Path) -> str:
    """The model id of a bundle: its folder name, which must be URL-safe."""
    try:
        return checked_model_id(Path(directory).name)
    except InstallError as exc:
        raise BundleError(str(exc)) from None


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
    try:
        files = manifest_files(read_manifest(directory), rel_dir)
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
            if MODEL_ID.fullmatch(directory.name):
                cards.append(unavailable_card(directory.name, WEIGHTS_FORMAT, str(exc)))
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
    try:
        files = model_files(source)
    except InstallError as exc:
        raise BundleError(str(exc)) from None
    if not install_folder(source, models_dir / BUNDLES, model_id, files):
        return []
    return [f"{BUNDLES}/{model_id}/{rel}" for rel in files]


def find_bundles(source: Path) -> list[Path]:
    """``source`` itself when it is a bundle, else the bundles directly under ``source/bundles/``."""
    source = Path(source)
    if is_bundle_dir(source):
        return [source]
    root = source / BUNDLES
    if not root.is_dir():
        return []
    return [p for p in sorted(root.iterdir()) if p.is_dir() and is_bundle_dir(p)]


def _install(source: Path, models_dir: Path, options: InstallOptions) -> list[str]:
    return install_bundle(source, models_dir)


BUNDLE_FORMAT = ModelFormat(
    name=WEIGHTS_FORMAT,
    folder=BUNDLES,
    watched=(MANIFEST, "configs/metadata.json", "configs/inference.json"),
    find=find_bundles,
    install=_install,
    cards=bundle_cards,
    predictor="models.bundle.predictor:BundlePredictor",
)
