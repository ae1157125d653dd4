"""Labels of real Zoo bundles through BundlePredictor equal MONAI's own runner (`python -m monai.bundle run`)
on the same small crops of real scans and the same seeded random weights (built from the bundle's own
network_def). spleen: softmax -> Invertd (bilinear on probabilities) -> argmax, declarative; wholeBody: $
expressions, 104 classes, softmax -> argmax -> Invertd (nearest); brats: 4 channels, sigmoid, Lambdad 1/2/4.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from models.bundle.build import build
from models.bundle.config import read_bundle
from models.bundle.install import card_from_bundle, check_bundle
from models.bundle.predictor import BundlePredictor
from models.testing.bundle_weights import copy_bundle, write_crop, write_seeded_weights
from segserve.imaging.volume import Volume
from tests.support.paths import DATA, SHARED

ZOO = SHARED / "zoo"


def _runner(bundle: Path, out: Path, *overrides: str) -> np.ndarray:
    info = read_bundle(bundle)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            info.run_id,
            "--config_file",
            str(bundle / info.config_path),
            "--meta_file",
            str(bundle / "configs/metadata.json"),
            "--bundle_root",
            str(bundle),
            "--output_dir",
            str(out),
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (written,) = list(out.rglob("*.nii.gz"))
    return np.asarray(nib.load(str(written)).dataobj).squeeze()


def _volume(path: Path) -> Volume:
    image = nib.load(str(path))
    return Volume(np.asanyarray(image.dataobj), image.affine, "nifti")


def _ours(bundle: Path, trusted: bool, volumes: list[Volume]) -> np.ndarray:
    predictor = BundlePredictor(
        card_from_bundle(read_bundle(bundle), bundle.parent), build(bundle, trusted=trusted)
    )
    return predictor.predict(volumes if len(volumes) > 1 else volumes[0])


def _need(*names: str) -> None:
    for name in names:
        if not (ZOO / name).is_dir():
            pytest.skip(f"{ZOO / name} not found")


def test_spleen_equals_monai_runner(tmp_path: Path) -> None:
    _need("spleen_ct_segmentation")
    bundle = copy_bundle(ZOO / "spleen_ct_segmentation", tmp_path / "spleen_ct_segmentation")
    write_seeded_weights(bundle, seed=0)
    assert check_bundle(bundle, trust_code=False)["executes_code"] is False  # declarative for the service
    data = tmp_path / "data"
    data.mkdir()
    case = write_crop(
        DATA / "ct/spleen/sub-spleen2_ct.nii.gz",
        data / "case.nii.gz",
        (slice(40, 120),) * 2 + (slice(0, 26),),
    )
    ours = _ours(bundle, False, [_volume(case)])
    theirs = _runner(bundle, tmp_path / "out", "--dataset_dir", str(data), "--datalist", f"['{case}']")
    assert ours.shape == theirs.shape == (80, 80, 26)
    assert 0 < (ours == 1).mean() < 1
    assert float((ours == theirs).mean()) >= 0.999


def test_wholebody_equals_monai_runner(tmp_path: Path) -> None:
    _need("wholeBody_ct_segmentation")
    bundle = copy_bundle(ZOO / "wholeBody_ct_segmentation", tmp_path / "wholeBody_ct_segmentation")
    write_seeded_weights(bundle, seed=1)
    data = tmp_path / "data"
    data.mkdir()
    case = write_crop(
        DATA / "ct/abdomen-totalseg/example_ct_sm.nii.gz",
        data / "case.nii.gz",
        (slice(40, 72), slice(30, 62), slice(8, 24)),
    )
    checked = check_bundle(bundle, trust_code=True)
    assert checked["executes_code"] and checked["first_code_element"].startswith("pixdim: $[1.5")
    assert len(checked["labels"]) == 105
    ours = _ours(bundle, True, [_volume(case)])
    theirs = _runner(bundle, tmp_path / "out", "--dataset_dir", str(data), "--datalist", f"['{case}']")
    assert ours.shape == theirs.shape == (32, 32, 16)
    assert len(np.unique(ours)) > 5
    assert float((ours == theirs).mean()) >= 0.999


def test_brats_equals_monai_runner(tmp_path: Path) -> None:
    _need("brats_mri_segmentation")
    import nrrd

    bundle = copy_bundle(ZOO / "brats_mri_segmentation", tmp_path / "brats_mri_segmentation")
    write_seeded_weights(bundle, seed=2)
    image, _ = nrrd.read(str(DATA / "mri-lesion/brain-tumor/brain1_image.nrrd"))
    crop = image[60:108, 60:108, :16].astype(np.float32)
    rng = np.random.default_rng(0)
    affine = np.diag([0.8, 0.8, 6.5, 1.0])
    files, volumes = [], []
    for c in range(4):  # four "sequences" from one real MRI: scaled, noisy, zero outside a margin
        array = (crop * (1 + 0.2 * c) + rng.normal(0, 5, crop.shape)).astype(np.float32)
        array[:3] = 0
        files.append(str(tmp_path / f"c{c}.nii.gz"))
        nib.save(nib.Nifti1Image(array, affine), files[-1])
        volumes.append(Volume(array, affine, "nifti"))
    checked = check_bundle(bundle, trust_code=True)
    assert checked["labels"] == {
        "0": "background",
        "1": "Tumor core",
        "2": "Whole tumor",
        "4": "Enhancing tumor",
    }
    ours = _ours(bundle, True, volumes)
    theirs = _runner(bundle, tmp_path / "out", "--test_datalist", str([{"image": files}]))
    assert ours.shape == theirs.shape == (48, 48, 16)
    assert set(np.unique(ours)) <= {0, 1, 2, 4} and len(np.unique(ours)) > 1
    assert float((ours == theirs).mean()) >= 0.999
