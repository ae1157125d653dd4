"""MONAI bundles in the catalog: install into ``<models_dir>/bundles/<id>/``, hash manifest, model cards.

Torch-free to import (the catalog reads cards here); installing imports MONAI (models.bundle.build) to check
the bundle first: built by MONAI, weights loaded strictly, one tiny forward pass, label values probed (a
bundle with its own evaluator: one small synthetic case through it, labels from its metadata); code
in the bundle only with ``trust_code`` (models.bundle.trust). Installing copies the bundle directory, then
writes ``.segserve-manifest.json`` with each file's size and sha256 and those findings; the bundle's card
lists those files, so the catalog's usual check (size, sha256) marks the model unavailable when any of them
changes later. A bundle without a manifest (copied by hand)
is listed as unavailable, with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.bundle.config import (
    CONFIG_NAMES,
    METADATA,
    BundleError,
    BundleInfo,
    is_bundle_dir,
    load_config,
    read_bundle,
)
from models.card import ModelCard, WeightFile, check_lesion_labels
from models.format import InstallOptions, ModelFormat
from models.installed import (
    MANIFEST,
    InstallError,
    checked_model_id,
    install_folder,
    installed_cards,
    label_colors,
    manifest_files,
    model_files,
    read_manifest,
)

BUNDLES = "bundles"
WEIGHTS_FORMAT = "monai-bundle"


def bundle_id(directory: Path) -> str:
    """The model id of a bundle: its folder name, which must be URL-safe."""
    try:
        return checked_model_id(Path(directory).name)
    except InstallError as exc:
        raise BundleError(str(exc)) from None


def card_from_bundle(info: BundleInfo, models_dir: Path) -> ModelCard:
    """The catalog card of an installed bundle; files, label values and trust come from its manifest."""
    directory = info.directory
    model_id = bundle_id(directory)
    rel_dir = f"{BUNDLES}/{model_id}"
    params: dict[str, object] = {"weights_format": WEIGHTS_FORMAT, "bundle_dir": rel_dir}
    files: tuple[WeightFile, ...] = ()
    labels = dict(info.labels)
    lesion_labels: tuple[int, ...] = ()
    try:
        manifest = read_manifest(directory)
        files = manifest_files(manifest, rel_dir)
        stored = manifest.get("labels")
        if isinstance(stored, dict) and stored:
            labels = {int(k): str(v) for k, v in stored.items()}
        lesion_labels = check_lesion_labels(manifest.get("lesion_labels", ()), labels)
        params["executes_code"] = bool(manifest.get("executes_code", False))
        params["weights"] = str(manifest.get("weights", ""))
        if manifest.get("executes_code") and not manifest.get("trusted_code"):
            params["unavailable_reason"] = (
                f"bundle {model_id} runs code and was not installed with --trust-code"
            )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        params["unavailable_reason"] = (
            f"bundle {model_id} has no valid {MANIFEST} ({type(exc).__name__}); install it with "
            "'segserve models install PATH' so its files are hashed and it is checked"
        )
    input_spec: dict[str, object] = {
        "orientation": info.orientation,
        "spacing_mm": list(info.spacing_mm) if info.spacing_mm else None,
        "roi_size": list(info.roi_size) if info.roi_size else None,
        "channels": list(info.input_channels),
        "expects": info.description or info.name,
        "config": info.config_path,
        "run_id": info.run_id,
    }
    return ModelCard(
        id=model_id,
        version=info.version,
        name=info.name,
        description=info.description,
        modality=info.modality,
        task=info.task,
        architecture=info.network_target or "bundle network",
        labels=labels,
        colors=label_colors(max(labels) + 1 if labels else 1),
        input=input_spec,
        files=files,
        licence="see the bundle's LICENSE" if (directory / "LICENSE").is_file() else "not stated",
        citation="",
        params=params,
        lesion_labels=lesion_labels,
    )


def bundle_cards(models_dir: Path) -> list[ModelCard]:
    """Cards of the bundles under ``<models_dir>/bundles/``; unreadable ones as unavailable stubs."""
    return installed_cards(
        Path(models_dir) / BUNDLES, WEIGHTS_FORMAT, lambda d: card_from_bundle(read_bundle(d), models_dir)
    )


def check_bundle(source: Path, trust_code: bool, device: str = "cpu") -> dict[str, Any]:
    """Build the bundle with MONAI, load its weights strictly, run one tiny forward pass and probe its label
    values. Returns the manifest entries (executes_code, labels, weights...).

    Raises:
        BundleError: it runs code and ``trust_code`` is False (naming the first element); an element cannot
            be honoured or built; the weights are missing or do not fit; the forward pass fails.
    """
    from models.bundle.build import build, probe_labels, tiny_forward
    from models.bundle.predictor import tiny_case

    pipeline = build(source, device, trusted=trust_code)
    out_channels: int | None = None
    if pipeline.evaluator is not None:  # its own evaluator makes the prompts: one whole synthetic case
        tiny_case(pipeline, device)
        labels = dict(pipeline.info.labels)
    else:
        out_channels = tiny_forward(pipeline, device)
        metadata = load_config(Path(source) / METADATA)
        pred = metadata.get("network_data_format", {}).get("outputs", {}).get("pred", {})
        channel_def = pred.get("channel_def") if isinstance(pred, dict) else None
        names = {int(k): str(v) for k, v in channel_def.items()} if isinstance(channel_def, dict) else {}
        labels = probe_labels(pipeline, names, out_channels)
    first = pipeline.scan.first()
    return {
        "executes_code": pipeline.scan.executes_code,
        "trusted_code": bool(trust_code and pipeline.scan.executes_code),
        "first_code_element": first.message() if first is not None else "",
        "labels": {str(k): v for k, v in sorted(labels.items())},
        "weights": pipeline.weights,
        "out_channels": out_channels,
    }


def install_bundle(source: Path, models_dir: Path, options: InstallOptions | None = None) -> list[str]:
    """Check a bundle (:func:`check_bundle`), then copy it to ``<models_dir>/bundles/<folder name>/`` with its
    manifest (file hashes, who installed it, whether its code is trusted, its label values).

    Copied to a temporary folder next to the target and renamed into place, replacing an older copy.
    Returns the installed paths relative to models_dir.

    Raises:
        BundleError: the source is not a usable bundle, or runs code without ``options.trust_code``.
    """
    source, models_dir = Path(source), Path(models_dir)
    options = options or InstallOptions()
    model_id = bundle_id(source)
    extra = check_bundle(source, options.trust_code)
    extra["installed_by"] = options.installed_by
    if options.lesion_labels:
        try:
            extra["lesion_labels"] = list(check_lesion_labels(options.lesion_labels, extra["labels"]))
        except ValueError as exc:
            raise BundleError(f"bundle {model_id}: {exc}") from None
    try:
        files = model_files(source)
    except InstallError as exc:
        raise BundleError(str(exc)) from None
    if not install_folder(source, models_dir / BUNDLES, model_id, files, extra):
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
    return install_bundle(source, models_dir, options)


BUNDLE_FORMAT = ModelFormat(
    name=WEIGHTS_FORMAT,
    folder=BUNDLES,
    watched=(MANIFEST, METADATA, *CONFIG_NAMES),
    find=find_bundles,
    install=_install,
    cards=bundle_cards,
    predictor="models.bundle.predictor:BundlePredictor",
)
