"""Small REAL nnU-Net v2 models, made here with nnU-Net's own tools, for tests and benches without internet.

Run: ``python -m models.testing.make_nnunet OUT [--kinds single,multi,regions,zscore] [--folds 0,1]
[--mask-for-norm]``
(nnU-Net reads its folders from environment variables at import, so this runs in its own process and sets
``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results`` under OUT before importing it).

What it does, for each kind:
1. Writes a raw dataset ``OUT/raw/Dataset9xx_<Name>/`` (imagesTr, labelsTr, dataset.json) from the three real
   CT cases in ``shared/data/ct``: the abdominal CT (122x101x30, 3 mm; TotalSegmentator's labels merged to
   liver / spleen / kidney), the Decathlon spleen crop (its manual spleen mask) and the LiTS case (128^3,
   liver and tumour -> liver).
   - ``single`` (Dataset991): one channel "CT"; labels background, liver, spleen, kidney.
   - ``multi`` (Dataset992): two channels, "CT" and "smoothed" (the CT through a Gaussian filter, sigma 1
     voxel, so the second channel is real, related data that nnU-Net z-scores while it CT-normalises the
     first); same labels.
   - ``regions`` (Dataset993): region-based: "organ" = liver or tumour (values 1, 2), "tumour" = 2, with
     ``regions_class_order`` [1, 2]; the abdominal and spleen cases have no tumour.
   - ``zscore`` (Dataset994, not built by default): as ``single``, its channel named "zscore", so nnU-Net's
     planner gives it ZScoreNormalization (the scheme of MR and most non-CT models: the case's own mean and
     std). ``--mask-for-norm`` sets ``use_mask_for_norm`` for every channel (nnU-Net's planner sets it
     itself only where cropping to the non-zero region shrinks the images by a quarter, as for skull-stripped
     MRIs).
2. Plans and preprocesses it with nnU-Net's Python API (``extract_fingerprints``, ``plan_experiments``,
   ``preprocess``), after shrinking the planned 3d_fullres configuration to a CPU-sized one (target spacing
   6 mm unless ``--spacing``, patch 16x32x32, 3 stages, 4..16 features). Editing plans.json is how nnU-Net
   expects plans to be customised; everything else (normalisation, resampling, intensity statistics,
   transposition) is nnU-Net's own plan.
3. Writes each fold's ``checkpoint_final.pth`` in nnU-Net's checkpoint format from the plans (nnU-Net's
   network builder and initialisation, seeded per fold; see :func:`write_checkpoint`): about 10 s per kind
   on 2 cores, which keeps the tests' budget. With ``--train`` it instead preprocesses and trains each fold
   with nnU-Net's own ``nnUNetTrainer`` (training length set to 1 epoch of a few iterations after
   construction, seeded, augmentation in-process) on a fixed 2-fold split over the 3 cases
   (``splits_final.json``): about 45 s per fold, a model whose labels follow the anatomy a little.

Result: ``OUT/results/Dataset9xx_<Name>/nnUNetTrainer__nnUNetPlans__3d_fullres/`` with dataset.json,
plans.json and ``fold_<f>/checkpoint_final.pth``, laid out as ``nnUNetv2_train`` leaves it, plus the raw
images (``OUT/raw/Dataset9xx_<Name>/imagesTr``) to predict on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

KINDS = {"single": 991, "multi": 992, "regions": 993, "zscore": 994}
NAMES = {"single": "TinyCT", "multi": "TinyCT2ch", "regions": "TinyCTRegions", "zscore": "TinyCTZScore"}
TRAINER_DIR = "nnUNetTrainer__nnUNetPlans__3d_fullres"
ITERATIONS = 4
SPACING = (6.0, 6.0, 6.0)  # (z, y, x) mm: a few overlapping windows per case, seconds on 2 cores
PATCH = (16, 32, 32)


def shared_data() -> Path:
    """``shared/data`` next to the repository (or $SEGSERVE_SHARED_DIR/data)."""
    repo = Path(__file__).resolve().parents[2]
    return Path(os.environ.get("SEGSERVE_SHARED_DIR", repo.parent / "shared")).resolve() / "data"


def _load(path: Path) -> Any:
    import nibabel as nib

    return nib.load(path)


def _cases(data: Path) -> list[tuple[str, Any, np.ndarray, np.ndarray]]:
    """(case id, nibabel image, CT float32 array, labels: 1 liver, 2 spleen, 3 kidney, 4 tumour)."""
    out = []
    abdomen = _load(data / "ct/abdomen-totalseg/example_ct_sm.nii.gz")
    seg = np.asarray(_load(data / "ct/abdomen-totalseg/example_seg.nii.gz").dataobj)
    merged = np.zeros(seg.shape, np.uint8)
    merged[seg == 5] = 1
    merged[seg == 1] = 2
    merged[(seg == 2) | (seg == 3)] = 3
    out.append(("abdomen", abdomen, np.asarray(abdomen.dataobj, np.float32), merged))
    spleen = _load(data / "ct/spleen/sub-spleen2_ct.nii.gz")
    mask = np.asarray(_load(data / "ct/spleen/sub-spleen2_ct_seg-manual.nii.gz").dataobj)
    out.append(("spleen", spleen, np.asarray(spleen.dataobj, np.float32), (mask > 0).astype(np.uint8) * 2))
    liver = _load(data / "ct/liver-tumor/lits117_ct.nii.gz")
    lab = np.asarray(_load(data / "ct/liver-tumor/lits117_label.nii.gz").dataobj)
    lits = np.where(lab == 1, 1, np.where(lab == 2, 4, 0)).astype(np.uint8)
    out.append(("lits", liver, np.asarray(liver.dataobj, np.float32), lits))
    return out


def write_raw(kind: str, raw: Path, data: Path) -> Path:
    """The raw dataset folder of ``kind`` (imagesTr, labelsTr, dataset.json)."""
    import nibabel as nib
    from scipy.ndimage import gaussian_filter

    folder = raw / f"Dataset{KINDS[kind]}_{NAMES[kind]}"
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    cases = _cases(data)
    for case, image, ct, labels in cases:
        header = image.header.copy()
        header.set_data_dtype(np.float32)
        channels = [ct] if kind != "multi" else [ct, gaussian_filter(ct, sigma=1.0).astype(np.float32)]
        for index, channel in enumerate(channels):
            nib.save(
                nib.Nifti1Image(channel, image.affine, header),
                folder / "imagesTr" / f"{case}_{index:04d}.nii.gz",
            )
        if kind == "regions":
            labels = np.where(labels == 1, 1, np.where(labels == 4, 2, 0)).astype(np.uint8)
        else:
            labels = np.where(labels == 4, 1, labels).astype(np.uint8)
        lab_header = image.header.copy()
        lab_header.set_data_dtype(np.uint8)
        nib.save(nib.Nifti1Image(labels, image.affine, lab_header), folder / "labelsTr" / f"{case}.nii.gz")
    channel_names = {"multi": {"0": "CT", "1": "smoothed"}, "zscore": {"0": "zscore"}}
    dataset: dict[str, Any] = {
        "channel_names": channel_names.get(kind, {"0": "CT"}),
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "name": NAMES[kind],
        "licence": "test data (see shared/data)",
    }
    if kind == "regions":
        dataset["labels"] = {"background": 0, "organ": [1, 2], "tumour": 2}
        dataset["regions_class_order"] = [1, 2]
    else:
        dataset["labels"] = {"background": 0, "liver": 1, "spleen": 2, "kidney": 3}
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return folder


def shrink_plans(
    plans_file: Path,
    spacing: tuple[float, ...] = SPACING,
    patch: tuple[int, ...] = PATCH,
    mask_for_norm: bool = False,
) -> None:
    """A CPU-sized 3d_fullres: target spacing ``spacing`` (z, y, x) mm, patch ``patch`` (divisible by 4),
    3 stages of 4/8/16 features, batch 2; ``mask_for_norm``: ``use_mask_for_norm`` on for every channel."""
    plans = json.loads(plans_file.read_text())
    config = plans["configurations"]["3d_fullres"]
    if mask_for_norm:
        config["use_mask_for_norm"] = [True] * len(config["use_mask_for_norm"])
    config["spacing"] = [float(s) for s in spacing]
    config["patch_size"] = [int(p) for p in patch]
    config["batch_size"] = 2
    arch = config["architecture"]["arch_kwargs"]
    arch.update(
        n_stages=3,
        features_per_stage=[4, 8, 16],
        kernel_sizes=[[3, 3, 3]] * 3,
        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]],
        n_conv_per_stage=[1, 1, 1],
        n_conv_per_stage_decoder=[1, 1],
    )
    plans["configurations"] = {"3d_fullres": config}
    plans_file.write_text(json.dumps(plans, indent=1))


def train_fold(dataset_id: int, fold: int, seed: int) -> Path:
    """One fold with nnU-Net's trainer: 1 epoch of ITERATIONS iterations. Returns the checkpoint path."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    torch.manual_seed(seed)
    np.random.seed(seed)
    name = maybe_convert_to_dataset_name(dataset_id)
    base = Path(nnUNet_preprocessed) / name
    trainer = nnUNetTrainer(
        load_json(base / "nnUNetPlans.json"),
        "3d_fullres",
        fold,
        load_json(base / "dataset.json"),
        device=torch.device("cpu"),
    )
    # a CPU-sized training length; nothing that inference reads depends on it
    trainer.num_iterations_per_epoch = ITERATIONS
    trainer.num_val_iterations_per_epoch = 1
    trainer.num_epochs = 1
    trainer.run_training()
    return Path(trainer.output_folder) / "checkpoint_final.pth"


def write_checkpoint(model_folder: Path, fold: int, seed: int) -> Path:
    """A fold's ``checkpoint_final.pth`` in nnU-Net's checkpoint format, without training.

    The network is nnU-Net's own (``nnUNetTrainer.build_network_architecture`` from the plans, as inference
    builds it), with its default initialisation under ``torch.manual_seed(seed)``; the checkpoint holds what
    inference reads (network_weights, init_args, trainer_name, inference_allowed_mirroring_axes: all three
    axes, so test-time mirroring is exercised) plus the keys a trainer writes.
    """
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = json.loads((model_folder / "plans.json").read_text())
    dataset_json = json.loads((model_folder / "dataset.json").read_text())
    manager = PlansManager(plans)
    config = manager.get_configuration("3d_fullres")
    torch.manual_seed(seed)
    network = nnUNetTrainer.build_network_architecture(
        config.network_arch_class_name,
        config.network_arch_init_kwargs,
        config.network_arch_init_kwargs_req_import,
        determine_num_input_channels(manager, config, dataset_json),
        manager.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=False,
    )
    checkpoint = {
        "network_weights": network.state_dict(),
        "optimizer_state": None,
        "grad_scaler_state": None,
        "logging": {},
        "_best_ema": None,
        "current_epoch": 0,
        "init_args": {
            "plans": plans,
            "configuration": "3d_fullres",
            "fold": fold,
            "dataset_json": dataset_json,
            "device": torch.device("cpu"),
        },
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": (0, 1, 2),
    }
    path = model_folder / f"fold_{fold}" / "checkpoint_final.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def make(
    kind: str,
    out: Path,
    folds: tuple[int, ...],
    data: Path,
    train: bool = False,
    spacing: tuple[float, ...] = SPACING,
    patch: tuple[int, ...] = PATCH,
    mask_for_norm: bool = False,
) -> Path:
    """Build the model of ``kind`` under ``out`` (target spacing ``spacing``, z y x mm); returns its trained
    model folder."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_results

    dataset_id = KINDS[kind]
    raw = write_raw(kind, out / "raw", data)
    extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=True, verbose=False)
    plan_experiments([dataset_id])
    pre = Path(nnUNet_preprocessed) / raw.name
    shrink_plans(pre / "nnUNetPlans.json", spacing, patch, mask_for_norm)
    model_folder = Path(nnUNet_results) / raw.name / TRAINER_DIR
    if not train:
        model_folder.mkdir(parents=True, exist_ok=True)
        for name in ("dataset.json", "dataset_fingerprint.json"):
            (model_folder / name).write_bytes((pre / name).read_bytes())
        (model_folder / "plans.json").write_bytes((pre / "nnUNetPlans.json").read_bytes())
        for fold in folds:
            write_checkpoint(model_folder, fold, seed=1234 + fold)
        return model_folder
    preprocess([dataset_id], configurations=("3d_fullres",), num_processes=(1,), verbose=False)
    splits = [
        {"train": ["abdomen", "spleen"], "val": ["lits"]},
        {"train": ["lits", "spleen"], "val": ["abdomen"]},
    ]
    (pre / "splits_final.json").write_text(json.dumps(splits))
    # data augmentation in this process (planning needs the variable unset: it sets torch's threads from it)
    os.environ["nnUNet_n_proc_DA"] = "0"  # noqa: SIM112 (nnU-Net's own variable name)
    for fold in folds:
        train_fold(dataset_id, fold, seed=1234 + fold)
    return model_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--kinds", default="single,multi,regions")
    parser.add_argument("--folds", default="0")
    parser.add_argument("--data", type=Path, default=None, help="shared/data folder")
    parser.add_argument("--spacing", default="6,6,6", help="target spacing z,y,x in mm")
    parser.add_argument("--patch", default="16,32,32", help="patch size z,y,x (each divisible by 4)")
    parser.add_argument("--mask-for-norm", action="store_true", help="use_mask_for_norm for every channel")
    parser.add_argument(
        "--train", action="store_true", help="train each fold (slow) instead of writing initial checkpoints"
    )
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    for env, sub in (
        ("nnUNet_raw", "raw"),
        ("nnUNet_preprocessed", "preprocessed"),
        ("nnUNet_results", "results"),
    ):
        (out / sub).mkdir(parents=True, exist_ok=True)
        os.environ[env] = str(out / sub)
    os.environ.setdefault("nnUNet_compile", "false")
    folds = tuple(int(f) for f in args.folds.split(","))
    for kind in args.kinds.split(","):
        if kind not in KINDS:
            parser.error(f"--kinds: unknown kind {kind!r}, choose from {sorted(KINDS)}")
        spacing = tuple(float(v) for v in args.spacing.split(","))
        patch = tuple(int(v) for v in args.patch.split(","))
        data = args.data or shared_data()
        folder = make(kind, out, folds, data, args.train, spacing, patch, args.mask_for_norm)
        print(f"{kind}\t{folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
