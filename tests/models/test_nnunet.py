"""nnU-Net v2 models: install (folder, folds, nnU-Net's export zip), cards, and labels equal to what
`nnUNetv2_predict` writes for the same files, for a single-channel model ensembled over 2 folds, a
2-channel model and a region-based model; progress, cancellation; install refusals.

The models are real nnU-Net v2 models made here by nnU-Net's own planner and network builder
(``models.testing.make_nnunet``), on the real CT cases of ``shared/data/ct``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from models.card import Cancelled, ModelCard
from models.catalog import Catalog
from models.formats import InstallOptions
from models.install import install_models
from models.installed import InstallError
from models.predictor import load_predictor
from segserve.scans.readers import read_channels
from tests.support.nnunet import CASES, images_dir, model_folder, nnunet_models, nnunet_predict
from tests.support.paths import REPO

pytest.importorskip("nnunetv2")

AGREEMENT = 0.999  # share of voxels equal to nnUNetv2_predict's


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> object:
    # the same thread count for both sides; more threads than free cores only slows a shared CI box down
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield None
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return nnunet_models(tmp_path_factory)


@pytest.fixture(scope="module")
def models_dir(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """single (folds 0 and 1, the default), multi and regions (fold 0 only) installed."""
    target = tmp_path_factory.mktemp("models")
    install_models(model_folder(root, "single"), target)
    install_models(model_folder(root, "multi"), target, options=InstallOptions(folds=(0,)))
    install_models(model_folder(root, "regions"), target, options=InstallOptions(folds=(0,)))
    return target


def _card(models_dir: Path, model_id: str) -> ModelCard:
    status = next(s for s in Catalog(models_dir).statuses() if s.card.id == model_id)
    assert status.available, status.reason
    return status.card


def _case(images: Path, case: str) -> list:
    channels = sorted(images.glob(f"{case}_*.nii.gz"))
    return read_channels([(p.name, [p]) for p in channels])


def _agreement(
    root: Path, models_dir: Path, kind: str, model_id: str, folds: tuple[int, ...], tmp_path: Path
) -> dict[str, float]:
    """Service labels vs nnUNetv2_predict's, per case: share of equal voxels (and sanity checks)."""
    reference = nnunet_predict(model_folder(root, kind), images_dir(root, kind), tmp_path / "out", folds)
    assert sorted(reference) == sorted(CASES)
    predictor = load_predictor(_card(models_dir, model_id), models_dir)
    shares = {}
    for case, expected in reference.items():
        volumes = _case(images_dir(root, kind), case)
        progress: list[float] = []
        labels = predictor.predict(volumes, on_progress=progress.append)
        assert labels.shape == volumes[0].shape == expected.shape and labels.dtype == np.uint8
        assert progress[0] == 0.0 and progress[-1] == 1.0 and progress == sorted(progress)
        assert len(progress) > 3, "one report per sliding-window step"
        shares[case] = float(np.mean(labels == expected))
    # a model that gave one label everywhere would prove nothing
    assert len(np.unique(np.concatenate([r.ravel() for r in reference.values()]))) >= 2
    print(f"{kind}: voxels equal to nnUNetv2_predict {shares}")
    return shares


def test_card_has_labels_channels_and_folds(models_dir: Path) -> None:
    card = _card(models_dir, "Dataset991_TinyCT-3d_fullres")
    assert card.labels == {0: "background", 1: "liver", 2: "spleen", 3: "kidney"}
    assert card.modality == "CT" and card.architecture == "PlainConvUNet"
    assert card.input["channels"] == ["image"] and card.input["normalization"] == ["CTNormalization"]
    assert card.params["folds"] == [0, 1] and card.params["mirroring_axes"] == [0, 1, 2]
    multi = _card(models_dir, "Dataset992_TinyCT2ch-3d_fullres")
    assert multi.input["channels"] == ["ct", "smoothed"] and multi.params["folds"] == [0]
    assert multi.input["normalization"] == ["CTNormalization", "ZScoreNormalization"]
    regions = _card(models_dir, "Dataset993_TinyCTRegions-3d_fullres")
    assert regions.labels == {0: "background", 1: "organ", 2: "tumour"} and regions.params["regions"] is True
    installed = sorted(p.relative_to(models_dir).as_posix() for p in (models_dir / "nnunet").rglob("*.pth"))
    assert installed == [
        "nnunet/Dataset991_TinyCT-3d_fullres/fold_0/checkpoint_final.pth",
        "nnunet/Dataset991_TinyCT-3d_fullres/fold_1/checkpoint_final.pth",
        "nnunet/Dataset992_TinyCT2ch-3d_fullres/fold_0/checkpoint_final.pth",
        "nnunet/Dataset993_TinyCTRegions-3d_fullres/fold_0/checkpoint_final.pth",
    ]


def test_cards_are_read_without_torch(models_dir: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from models.catalog import Catalog; "
        f"s = Catalog(Path({str(models_dir)!r})).statuses(); "
        "assert sum(x.available for x in s) == 3, s; "
        "assert 'torch' not in sys.modules and 'nnunetv2' not in sys.modules, 'imported'"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def test_single_channel_two_folds_equal_nnunet_predict(root: Path, models_dir: Path, tmp_path: Path) -> None:
    shares = _agreement(root, models_dir, "single", "Dataset991_TinyCT-3d_fullres", (0, 1), tmp_path)
    assert min(shares.values()) >= AGREEMENT, shares


def test_two_channel_model_equals_nnunet_predict(root: Path, models_dir: Path, tmp_path: Path) -> None:
    shares = _agreement(root, models_dir, "multi", "Dataset992_TinyCT2ch-3d_fullres", (0,), tmp_path)
    assert min(shares.values()) >= AGREEMENT, shares


def test_region_based_model_equals_nnunet_predict(root: Path, models_dir: Path, tmp_path: Path) -> None:
    shares = _agreement(root, models_dir, "regions", "Dataset993_TinyCTRegions-3d_fullres", (0,), tmp_path)
    assert min(shares.values()) >= AGREEMENT, shares


def test_channel_order_matters_and_count_is_checked(root: Path, models_dir: Path) -> None:
    predictor = load_predictor(_card(models_dir, "Dataset992_TinyCT2ch-3d_fullres"), models_dir)
    ct, smoothed = _case(images_dir(root, "multi"), "abdomen")
    assert not np.array_equal(predictor.predict([ct, smoothed]), predictor.predict([smoothed, ct]))
    with pytest.raises(ValueError, match="takes 2 input channels, got 1"):
        predictor.predict([ct])


def test_cancel_stops_between_windows_and_the_model_stays_usable(root: Path, models_dir: Path) -> None:
    predictor = load_predictor(_card(models_dir, "Dataset991_TinyCT-3d_fullres"), models_dir)
    volumes = _case(images_dir(root, "single"), "abdomen")
    progress: list[float] = []
    with pytest.raises(Cancelled):
        predictor.predict(volumes, on_progress=progress.append, is_cancelled=lambda: len(progress) > 3)
    assert 0 < progress[-1] < 0.5
    assert torch.get_num_threads() == 1
    again = predictor.predict(volumes)
    assert again.shape == volumes[0].shape and len(np.unique(again)) >= 2


def test_export_zip_installs_like_the_folder(root: Path, tmp_path: Path) -> None:
    # nnU-Net's export also packs what training leaves beside each checkpoint (progress.png and
    # validation/summary.json); our folds were written, not trained, so a copy gets small stand-ins
    results = tmp_path / "results"
    shutil.copytree(model_folder(root, "single").parent, results / "Dataset991_TinyCT")
    for fold in (0, 1):
        fold_dir = results / "Dataset991_TinyCT" / "nnUNetTrainer__nnUNetPlans__3d_fullres" / f"fold_{fold}"
        (fold_dir / "validation").mkdir()
        (fold_dir / "validation" / "summary.json").write_text("{}")
        (fold_dir / "progress.png").write_bytes(b"stand-in")
    archive = tmp_path / "model.zip"
    command = Path(sys.executable).with_name("nnUNetv2_export_model_to_zip")
    run = subprocess.run(
        [str(command), "-d", "991", "-o", str(archive), "-c", "3d_fullres", "-f", "0", "1"],
        env={**os.environ, "nnUNet_results": str(results), "nnUNet_raw": str(root / "raw")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
    assert "Dataset991_TinyCT/nnUNetTrainer__nnUNetPlans__3d_fullres/fold_1/checkpoint_final.pth" in names
    installed = install_models(archive, tmp_path / "models", options=InstallOptions(folds=(1,)))
    assert installed == [
        f"nnunet/Dataset991_TinyCT-3d_fullres/{rel}"
        for rel in ("dataset.json", "dataset_fingerprint.json", "fold_1/checkpoint_final.pth", "plans.json")
    ]
    card = _card(tmp_path / "models", "Dataset991_TinyCT-3d_fullres")
    assert card.params["folds"] == [1]
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".nnunet-zip")]


def _copy(root: Path, tmp_path: Path) -> Path:
    source = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    shutil.copytree(model_folder(root, "single"), source)
    return source


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda s: (s / "plans.json").unlink(),
            r"nnUNetTrainer__nnUNetPlans__3d_fullres/plans\.json is missing",
        ),
        (lambda s: (s / "fold_2").mkdir(), r"fold_2/checkpoint_final\.pth is missing"),
        (
            lambda s: (s / "fold_0/checkpoint_final.pth").write_bytes(
                (s / "fold_0/checkpoint_final.pth").read_bytes()[:5000]
            ),
            r"fold_0/checkpoint_final\.pth cannot be loaded as an nnU-Net checkpoint",
        ),
        (
            lambda s: shutil.copyfile(
                s.parents[1] / "Dataset992_TinyCT2ch/nnUNetTrainer__nnUNetPlans__3d_fullres/fold_0/"
                "checkpoint_final.pth",
                s / "fold_1/checkpoint_final.pth",
            ),
            r"fold_1/checkpoint_final\.pth: its weights do not fit the network of plans\.json",
        ),
    ],
    ids=["missing-plans", "fold-without-checkpoint", "corrupt-checkpoint", "weights-of-another-model"],
)
def test_unusable_model_is_refused_and_never_listed(
    root: Path, tmp_path: Path, damage: object, message: str
) -> None:
    source = _copy(root, tmp_path / "results" / "Dataset991_TinyCT")
    shutil.copytree(
        model_folder(root, "multi"),
        tmp_path / "results" / "Dataset992_TinyCT2ch" / "nnUNetTrainer__nnUNetPlans__3d_fullres",
    )
    damage(source)  # type: ignore[operator]
    folds = (0, 2) if "fold_2" in message else None
    target = tmp_path / "models"
    with pytest.raises(InstallError, match=message):
        install_models(source, target, options=InstallOptions(folds=folds))
    assert not (target / "nnunet").exists() or not list((target / "nnunet").iterdir())
    assert not [s for s in Catalog(target).statuses() if s.card.params.get("weights_format") == "nnunet-v2"]


def test_a_passing_bf16_calibration_runs_the_forward_in_bf16(root: Path, models_dir: Path) -> None:
    """With a passing calibration record for this CPU path, the worker's predictor runs nnU-Net's network
    under CPU bf16 autocast (its first convolution gives bfloat16); nnU-Net's preprocessing and export are
    unchanged and the labels stay close to fp32's. Without one it stays fp32 (test_bf16_installed.py covers
    the refusals and the calibrate command on a MONAI bundle)."""
    from models.calibration import installed_records, label_agreement, record_key, write_record
    from models.cpu import FP32, CpuPath
    from models.predictor import set_cpu_path

    card = _card(models_dir, "Dataset991_TinyCT-3d_fullres")
    path = CpuPath("bf16", "avx512_bf16", "bf16 allowed (test)")
    scans = {"scan": {"agreement_network": 0.9995, "agreement_volume": 0.9995, "voxels_network": 1}}
    write_record(record_key(card, "avx512_bf16"), scans, {}, installed_records(models_dir))
    volumes = _case(images_dir(root, "single"), CASES[0])
    results = {}
    try:
        for cpu_path in (FP32, path):
            set_cpu_path(cpu_path)
            predictor = load_predictor(card, models_dir)
            seen: set[torch.dtype] = set()
            conv = next(m for m in predictor.network.modules() if isinstance(m, torch.nn.Conv3d))
            handle = conv.register_forward_hook(lambda _m, _i, out, seen=seen: seen.add(out.dtype))
            try:
                results[predictor.precision] = (predictor.predict(volumes), seen)
            finally:
                handle.remove()
    finally:
        set_cpu_path(FP32)
        installed_records(models_dir).unlink()
    assert results["fp32"][1] == {torch.float32} and results["bf16"][1] == {torch.bfloat16}
    assert label_agreement(results["bf16"][0], results["fp32"][0]) > 0.99
