"""Small real nnU-Net v2 models for tests (built once per test session) and `nnUNetv2_predict` runs on them.

The models are made by ``models.testing.make_nnunet`` in its own process (nnU-Net reads its folders from the
environment at import). nnU-Net's own prediction is its command line, ``nnUNetv2_predict_from_modelfolder``
(the ``nnUNetv2_predict`` entry point for a model folder), run on the same NIfTI files.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.paths import DATA, REPO

KINDS = ("single", "multi", "regions")
CASES = ("abdomen", "spleen", "lits")
_built: dict[str, Path] = {}


def _env(root: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[name] = str(root / name)
    return env


def nnunet_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The root of three models (single, multi, regions; folds 0 and 1 each), built once per session.

    Layout: ``<root>/results/Dataset99x_<Name>/nnUNetTrainer__nnUNetPlans__3d_fullres/`` and the raw
    images ``<root>/raw/Dataset99x_<Name>/imagesTr/<case>_<channel>.nii.gz``.
    """
    pytest.importorskip("nnunetv2")
    if not (DATA / "ct" / "liver-tumor" / "lits117_ct.nii.gz").is_file():
        pytest.skip(f"shared CT data not found under {DATA} (set SEGSERVE_SHARED_DIR)")
    if "root" not in _built:
        root = tmp_path_factory.mktemp("nnunet")
        run = subprocess.run(
            [sys.executable, "-m", "models.testing.make_nnunet", str(root), "--folds", "0,1"],
            cwd=REPO,
            env=_env(root),
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        _built["root"] = root
    return _built["root"]


def model_folder(root: Path, kind: str) -> Path:
    """The trained model folder of ``kind``."""
    return next((root / "results").glob(f"Dataset99{KINDS.index(kind) + 1}_*")) / (
        "nnUNetTrainer__nnUNetPlans__3d_fullres"
    )


def images_dir(root: Path, kind: str) -> Path:
    """``imagesTr`` of ``kind``'s raw dataset: ``<case>_<channel>.nii.gz``."""
    return next((root / "raw").glob(f"Dataset99{KINDS.index(kind) + 1}_*")) / "imagesTr"


def nnunet_predict(folder: Path, images: Path, out: Path, folds: tuple[int, ...]) -> dict[str, np.ndarray]:
    """``nnUNetv2_predict_from_modelfolder`` on every case of ``images``; case -> labels as written."""
    import nibabel as nib

    command = Path(sys.executable).with_name("nnUNetv2_predict_from_modelfolder")
    arguments = [
        "-i",
        str(images),
        "-o",
        str(out),
        "-m",
        str(folder),
        "-device",
        "cpu",
        "-npp",
        "1",
        "-nps",
        "1",
    ]
    run = subprocess.run(
        [str(command), *arguments, "-f", *map(str, folds)],
        env=_env(out.parent),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return {
        path.name[: -len(".nii.gz")]: np.asarray(nib.load(path).dataobj)
        for path in sorted(out.glob("*.nii.gz"))
    }
