"""nnU-Net v2 models in the catalog: install into ``<models_dir>/nnunet/<id>/``, hash manifest, model cards.

Torch-free at import (the catalog reads cards in the web service); installing imports torch and nnunetv2 to
check the weights (:mod:`models.nnunet.validate`).

A source is a trained model folder ``<Trainer>__<Plans>__<configuration>/`` or a zip of one or more as
``nnUNetv2_export_model_to_zip`` writes (``<Dataset>/<Trainer>__<Plans>__<configuration>/...``). Installing
copies ``dataset.json``, ``plans.json``, ``dataset_fingerprint.json`` (when there) and the chosen folds'
``fold_<f>/checkpoint_final.pth`` (logs, ``checkpoint_best.pth`` and plots stay behind), atomically, with a
manifest recording the source folder name, the folds, the trainer and the mirroring axes. The model id is
``<dataset name>-<configuration>`` (``-<trainer>-<plans>`` appended when they are not nnU-Net's
defaults), e.g. ``Dataset003_Liver-3d_fullres``.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from models.card import ModelCard, WeightFile, check_lesion_labels
from models.format import InstallOptions, ModelFormat
from models.installed import (
    MANIFEST,
    checked_model_id,
    install_folder,
    installed_cards,
    label_colors,
    manifest_files,
    read_manifest,
)
from models.nnunet.folder import (
    CHECKPOINT,
    DATASET_JSON,
    PLANS_JSON,
    NnunetError,
    NnunetSpec,
    is_model_folder,
    read_model_folder,
)

NNUNET = "nnunet"
WEIGHTS_FORMAT = "nnunet-v2"
CITATION = (
    "Isensee F, Jaeger PF, Kohl SAA, Petersen J, Maier-Hein KH. nnU-Net: a self-configuring method for deep "
    "learning-based biomedical image segmentation. Nature Methods 18, 203-211 (2021)."
)
MAX_ZIP_BYTES = 20 << 30  # uncompressed; a TotalSegmentator part model is about 250 MB


def model_id(spec: NnunetSpec) -> str:
    """``<dataset>-<configuration>``, plus ``-<trainer>-<plans>`` when they are not the defaults."""
    name = f"{spec.dataset_name}-{spec.configuration}"
    if (spec.trainer, spec.plans_name) != ("nnUNetTrainer", "nnUNetPlans"):
        name += f"-{spec.trainer}-{spec.plans_name}"
    return checked_model_id(name)


def card_from_spec(spec: NnunetSpec, manifest: dict[str, Any] | None, rel_dir: str) -> ModelCard:
    """The catalog card of an installed model (files from its manifest; none when it has none)."""
    info = (manifest or {}).get(NNUNET, {})
    params: dict[str, object] = {
        "weights_format": WEIGHTS_FORMAT,
        "model_dir": rel_dir,
        "folder": f"{spec.trainer}__{spec.plans_name}__{spec.configuration}",
        "configuration": spec.configuration,
        "folds": list(spec.folds),
        "trainer_name": info.get("trainer_name", spec.trainer),
        "mirroring_axes": info.get("mirroring_axes"),
        "regions": spec.regions,
    }
    files: tuple[WeightFile, ...] = ()
    if manifest is None:
        params["unavailable_reason"] = (
            f"nnU-Net model {rel_dir} has no valid {MANIFEST}; install it with 'segserve models install PATH'"
        )
    else:
        files = manifest_files(manifest, rel_dir)
    return ModelCard(
        id=Path(rel_dir).name,
        version="1",
        name=f"{spec.dataset_name} ({spec.configuration}, nnU-Net v2)",
        description=spec.description,
        modality=spec.modality,
        task="segmentation",
        architecture=spec.network_class or "nnU-Net",
        labels=dict(spec.labels),
        colors=label_colors(max(spec.labels) + 1),
        input={
            "channels": list(spec.channels),
            "channel_names": list(spec.channel_names),
            "normalization": list(spec.normalization),
            "spacing_mm_zyx": list(spec.spacing_mm),
            "patch_size_zyx": list(spec.patch_size),
            "folds": list(spec.folds),
            "expects": f"{'+'.join(spec.channel_names)} like the model's training data",
            "output": "sigmoid regions: value regions_class_order[i] where region i > 0.5, later regions win"
            if spec.regions
            else "softmax: one class per voxel (argmax)",
        },
        files=files,
        licence=spec.licence or "not stated",
        citation=CITATION,
        params=params,
        lesion_labels=check_lesion_labels((manifest or {}).get("lesion_labels", ()), spec.labels),
    )


def _installed_spec(directory: Path) -> tuple[NnunetSpec, dict[str, Any] | None]:
    try:
        manifest: dict[str, Any] | None = read_manifest(directory)
    except (OSError, ValueError):
        manifest = None
    info = (manifest or {}).get(NNUNET, {})
    folds = info.get("folds")
    spec = read_model_folder(
        directory,
        tuple(folds) if isinstance(folds, list) else None,
        folder_name=str(info.get("folder", "")) or None,
    )
    return spec, manifest


def nnunet_cards(models_dir: Path) -> list[ModelCard]:
    """Cards of the models under ``<models_dir>/nnunet/``; unreadable ones as unavailable stubs."""

    def read_card(directory: Path) -> ModelCard:
        spec, manifest = _installed_spec(directory)
        return card_from_spec(spec, manifest, f"{NNUNET}/{directory.name}")

    return installed_cards(Path(models_dir) / NNUNET, WEIGHTS_FORMAT, read_card)


def install_model_folder(source: Path, models_dir: Path, options: InstallOptions) -> list[str]:
    """Check and copy one trained model folder to ``<models_dir>/nnunet/<id>/`` (see the module docstring).

    Returns the installed paths relative to models_dir ([] when an identical copy is there).

    Raises:
        NnunetError: the folder, a chosen fold or its weights cannot be used (named in the message).
    """
    from models.nnunet.validate import validate_weights

    source = Path(source)
    spec = read_model_folder(source, options.folds)
    checked = validate_weights(spec, trust_code=options.trust_code)
    name = model_id(spec)
    files = [DATASET_JSON, PLANS_JSON]
    if (source / "dataset_fingerprint.json").is_file():
        files.append("dataset_fingerprint.json")
    files += [f"fold_{fold}/{CHECKPOINT}" for fold in spec.folds]
    extra: dict[str, Any] = {
        NNUNET: {"folder": source.name, "folds": list(spec.folds), **checked},
        "installed_by": options.installed_by,
    }
    if options.lesion_labels:
        try:
            extra["lesion_labels"] = list(check_lesion_labels(options.lesion_labels, spec.labels))
        except ValueError as exc:
            raise NnunetError(f"nnU-Net model {name}: {exc}") from None
    if not install_folder(source, Path(models_dir) / NNUNET, name, sorted(files), extra):
        return []
    return [f"{NNUNET}/{name}/{rel}" for rel in sorted(files)]


def _extract_zip(archive: Path, target: Path) -> None:
    """Extract ``archive`` under ``target``, refusing absolute paths, ``..``, links and zip bombs."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if sum(m.file_size for m in members) > MAX_ZIP_BYTES:
                raise NnunetError(f"{archive.name}: more than {MAX_ZIP_BYTES >> 30} GiB uncompressed")
            for member in members:
                path = PurePosixPath(member.filename)
                if (
                    path.is_absolute()
                    or ".." in path.parts
                    or (member.external_attr >> 16) & 0o170000 == 0o120000
                ):
                    raise NnunetError(
                        f"{archive.name}: refusing member {member.filename!r} (outside or a link)"
                    )
            zf.extractall(target)
    except zipfile.BadZipFile as exc:
        raise NnunetError(f"{archive.name} is not a readable zip: {exc}") from None


def find_nnunet(source: Path) -> list[Path]:
    """``source`` itself (a model folder or a zip), else the model folders directly under
    ``source/nnunet/``."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".zip" and zipfile.is_zipfile(source):
        return [source]
    if source.is_dir() and is_model_folder(source):
        return [source]
    root = source / NNUNET
    if not root.is_dir():
        return []
    return [p for p in sorted(root.iterdir()) if p.is_dir() and is_model_folder(p)]


def install_nnunet(source: Path, models_dir: Path, options: InstallOptions | None = None) -> list[str]:
    """Install a model folder, or every model folder in an nnU-Net export zip. Returns installed paths."""
    source, options = Path(source), options or InstallOptions()
    if source.is_dir():
        return install_model_folder(source, models_dir, options)
    Path(models_dir).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".nnunet-zip.", dir=models_dir))
    try:
        _extract_zip(source, scratch)
        folders = sorted(
            {
                p.parent
                for name in (PLANS_JSON, DATASET_JSON)
                for p in scratch.rglob(name)
                if is_model_folder(p.parent)
            }
        )
        if not folders:
            raise NnunetError(f"{source.name}: no <Trainer>__<Plans>__<configuration>/ model folder inside")
        return [path for folder in folders for path in install_model_folder(folder, models_dir, options)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


NNUNET_FORMAT = ModelFormat(
    name=WEIGHTS_FORMAT,
    folder=NNUNET,
    watched=(MANIFEST, DATASET_JSON, PLANS_JSON),
    find=find_nnunet,
    install=install_nnunet,
    cards=nnunet_cards,
    predictor="models.nnunet.predictor:NnunetPredictor",
)
