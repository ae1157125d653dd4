"""Labels of real Zoo bundles through BundlePredictor equal MONAI's own runner (`python -m monai.bundle run`)
on the same small crops of real scans and the same seeded random weights (built from the bundle's own
network_def). spleen: softmax -> Invertd (bilinear on probabilities) -> argmax, declarative; wholeBody: $
expressions, 104 classes, softmax -> argmax -> Invertd (nearest), through the label path. brats (4 channels,
sigmoid, Lambdad 1/2/4) is compared in tests/models/test_zoo_conformance.py, through the running service.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from models.bundle.build import build, tiny_forward
from models.bundle.config import read_bundle
from models.bundle.install import card_from_bundle, check_bundle
from models.bundle.predictor import BundlePredictor
from models.bundle.stitching import label_steps
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


def _ours(bundle: Path, trusted: bool, volumes: list[Volume], label_path: int | None) -> np.ndarray:
    """The service's labels; ``label_path``: how many post-processing steps the memory-bounded label path
    must replace (None: MONAI's own inferer and full logits must be used)."""
    pipeline = build(bundle, trusted=trusted)
    tiny_forward(pipeline)  # the output channel count, as install stores it in the manifest
    assert label_steps(pipeline) == label_path
    predictor = BundlePredictor(card_from_bundle(read_bundle(bundle), bundle.parent), pipeline)
    labels = predictor.predict(volumes if len(volumes) > 1 else volumes[0])
    _ours.last_path = pipeline.last_path  # type: ignore[attr-defined]
    return labels


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
    ours = _ours(bundle, False, [_volume(case)], None)  # softmax -> Invertd(bilinear) -> argmax
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
    # A real CT crop (3 mm voxels) declared 3.04 x 3.04 x 5 mm so that the model grid (1.5 mm) is
    # 96 x 96 x 98: at least one 96-voxel window on every axis, so no padding and the label path runs
    # (wholeBody pads with "replicate", which only MONAI's own inferer does), and two overlapping windows
    # along z, blended.
    source = nib.load(str(DATA / "ct/abdomen-totalseg/example_ct_sm.nii.gz"))
    crop = np.asanyarray(source.dataobj)[30:78, 25:73, :]
    case = data / "case.nii.gz"
    nib.save(nib.Nifti1Image(crop, np.diag([3.04, 3.04, 5.0, 1.0])), str(case))
    checked = check_bundle(bundle, trust_code=True)
    assert checked["executes_code"] and checked["first_code_element"].startswith("pixdim: $[1.5")
    assert len(checked["labels"]) == 105
    ours = _ours(bundle, True, [_volume(case)], 2)  # softmax -> argmax -> Invertd(nearest): label path
    theirs = _runner(bundle, tmp_path / "out", "--dataset_dir", str(data), "--datalist", f"['{case}']")
    assert _ours.last_path == "labels"  # type: ignore[attr-defined]
    assert ours.shape == theirs.shape == crop.shape
    assert len(np.unique(ours)) > 5
    assert float((ours == theirs).mean()) >= 0.999


def test_label_path_equals_monai_inferer_on_a_small_unet(tmp_path: Path) -> None:
    """The memory-bounded label path against MONAI's own SlidingWindowInferer + softmax + argmax, with
    reorientation, resampling and padding (an axis smaller than the roi)."""
    from models.testing.make_bundle import write_unet_bundle

    bundle = write_unet_bundle(tmp_path / "unet", roi_size=(32, 32, 32), overlap=0.5, sw_batch_size=2)
    pipeline = build(bundle)
    tiny_forward(pipeline)
    assert label_steps(pipeline) == 2
    rng = np.random.default_rng(0)
    from scipy import ndimage

    array = (ndimage.gaussian_filter(rng.normal(size=(70, 60, 12)), 2) * 2000).astype(np.int16)
    volume = Volume(array, np.diag([-0.9, 0.8, 2.5, 1.0]), "nifti")
    predictor = BundlePredictor(card_from_bundle(read_bundle(bundle), tmp_path), pipeline)
    ours = predictor.predict(volume)
    pipeline.label_path = False
    theirs = predictor.predict(volume)
    assert 0.05 < (ours == 1).mean() < 0.95
    assert np.array_equal(ours, theirs)
