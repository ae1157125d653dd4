"""bf16 on the CPU for installed models (issue #16): a MONAI bundle runs its forward under CPU bf16 autocast
only after `segserve models calibrate` measured its labels equal to fp32's on >= 99.9 % of the voxels of
every scan given, and only on a worker whose CPU path allows bf16; anything else keeps fp32.

The bundle is made here (a seeded MONAI UNet at 4 mm, models.testing.make_bundle) and installed; the scan
is the real abdominal CT (../shared/data/ct/abdomen-totalseg). The nnU-Net path's twin of this test is in
test_nnunet.py (it reuses that file's trained models)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.calibration import AGREEMENT_MIN, installed_records, label_agreement, record_key, write_record
from models.catalog import Catalog
from models.cpu import FP32, CpuPath
from models.install import install_models
from models.predictor import load_predictor, set_cpu_path
from models.testing.make_bundle import write_unet_bundle
from segserve.scans.readers import read_image
from tests.support.paths import DATA
from tests.support.stack import run_cli

SCAN = DATA / "ct" / "abdomen-totalseg" / "example_ct_sm.nii.gz"
BF16 = CpuPath("bf16", "avx512_bf16", "bf16 allowed (test)")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bundle = write_unet_bundle(tmp_path_factory.mktemp("made") / "unet_bf16", pixdim=(4.0, 4.0, 4.0))
    target = tmp_path_factory.mktemp("models")
    install_models(bundle, target)
    return target


def _card(models_dir: Path) -> Any:
    (card,) = [s.card for s in Catalog(models_dir).statuses() if s.card.params.get("bundle_dir")]
    return card


def _forward_dtypes(predictor: Any) -> tuple[np.ndarray, set[torch.dtype]]:
    """The labels of one prediction on SCAN and the dtypes the network's first layer gave."""
    seen: set[torch.dtype] = set()
    first = next(m for m in predictor.network.modules() if isinstance(m, torch.nn.Conv3d))
    handle = first.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
    try:
        labels = predictor.predict(read_image([SCAN]))
    finally:
        handle.remove()
    return labels, seen


def _record(models_dir: Path, isa: str, agreement: float) -> None:
    scans = {"scan 1": {"agreement_network": agreement, "agreement_volume": agreement, "voxels_network": 1}}
    write_record(record_key(_card(models_dir), isa), scans, {}, installed_records(models_dir))


def test_calibrate_measures_and_records_on_a_real_scan(models_dir: Path, tmp_path: Path) -> None:
    dry = run_cli(
        "models",
        "calibrate",
        _card(models_dir).id,
        "--scan",
        str(SCAN),
        "--dry-run",
        models_dir=models_dir,
        data_dir=tmp_path,
    )
    if dry.returncode == 1 and "nothing to calibrate" in dry.stderr:
        pytest.skip("this CPU has no native bf16")
    assert dry.returncode == 0, dry.stderr
    assert not installed_records(models_dir).exists()  # a dry run records nothing
    done = run_cli(
        "models",
        "calibrate",
        _card(models_dir).id,
        "--scan",
        str(SCAN),
        models_dir=models_dir,
        data_dir=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    (record,) = json.loads(installed_records(models_dir).read_text())["records"]
    key = record_key(_card(models_dir), record["isa"])
    assert {k: record[k] for k in key} == key
    row = record["scans"]["scan 1"]
    assert 0.9 < row["agreement_network"] <= 1.0 and row["voxels_network"] == int(
        np.prod(read_image([SCAN]).shape)
    )
    faster = row["seconds_bf16"] < row["seconds_fp32"]
    assert record["passes"] == (row["agreement_network"] >= AGREEMENT_MIN and faster)
    assert ("bf16" if record["passes"] else "fp32") in done.stdout.splitlines()[-2]


def test_a_passing_calibration_runs_the_forward_in_bf16(models_dir: Path) -> None:
    _record(models_dir, BF16.isa or "", 0.9995)
    fp32 = load_predictor(_card(models_dir), models_dir)  # the default CPU path: fp32
    assert fp32.precision == "fp32"
    reference, dtypes = _forward_dtypes(fp32)
    assert dtypes == {torch.float32}
    set_cpu_path(BF16)
    try:
        fast = load_predictor(_card(models_dir), models_dir)
    finally:
        set_cpu_path(FP32)
    assert fast.precision == "bf16"
    labels, dtypes = _forward_dtypes(fast)
    assert dtypes == {torch.bfloat16}
    assert labels.shape == reference.shape and labels.dtype == reference.dtype
    assert label_agreement(labels, reference) > 0.99


@pytest.mark.parametrize(
    ("isa", "agreement", "why"),
    [
        ("avx512_bf16", 0.99, "below the rule"),
        ("amx_bf16", 0.9995, "measured on another instruction set"),
    ],
)
def test_without_a_passing_calibration_for_this_cpu_it_stays_fp32(
    models_dir: Path, isa: str, agreement: float, why: str
) -> None:
    installed_records(models_dir).unlink(missing_ok=True)
    _record(models_dir, isa, agreement)
    set_cpu_path(BF16)
    try:
        predictor = load_predictor(_card(models_dir), models_dir)
    finally:
        set_cpu_path(FP32)
    assert predictor.precision == "fp32", why
