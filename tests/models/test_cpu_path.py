"""The CPU inference path: chosen from the CPU's flags and the setting, bf16 only where the calibration
passes (the bf16 twin's agreement with fp32 on subject-a: tests/models/test_predictor_bare.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.calibration import AGREEMENT_MIN, find_record, label_agreement, record_key, use_bf16
from models.catalog import Catalog
from models.cpu import FP32, CpuPath, bf16_isa, cpu_flags, select_cpu_path
from models.meshnet.predictor import MeshNetPredictor
from segserve.config import Settings

ZEN4 = frozenset({"sse4_2", "avx2", "avx512f", "avx512bw", "avx512_bf16", "avx512_vnni"})
SAPPHIRE_RAPIDS = ZEN4 | {"amx_tile", "amx_bf16", "amx_int8"}
ZEN3 = frozenset({"sse4_2", "avx2", "fma"})
SKYLAKE_X = frozenset({"avx2", "avx512f", "avx512bw", "avx512_vnni"})
BF16 = CpuPath("bf16", "avx512_bf16", "test")


@pytest.mark.parametrize(
    ("setting", "flags", "device", "precision", "isa"),
    [
        ("auto", ZEN4, "cpu", "bf16", "avx512_bf16"),
        ("auto", SAPPHIRE_RAPIDS, "cpu", "bf16", "amx_bf16"),
        ("auto", ZEN3, "cpu", "fp32", None),  # no bf16 at all: falls back
        ("auto", SKYLAKE_X, "cpu", "fp32", None),  # AVX-512 without its bf16 extension: falls back
        ("auto", frozenset(), "cpu", "fp32", None),  # flags unknown (not Linux)
        ("fp32", ZEN4, "cpu", "fp32", None),  # the switch forces fp32 on a bf16 CPU
        ("fp32", SAPPHIRE_RAPIDS, "cpu", "fp32", None),
        ("auto", ZEN4, "cuda", "fp32", None),  # a CUDA worker: not a CPU kernel choice
    ],
)
def test_select_cpu_path(
    setting: str, flags: frozenset[str], device: str, precision: str, isa: str | None
) -> None:
    path = select_cpu_path(setting, flags, device)
    assert (path.precision, path.isa) == (precision, isa)
    assert path.reason


def test_amx_needs_its_tiles() -> None:
    assert bf16_isa(frozenset({"amx_bf16"})) is None
    assert bf16_isa(frozenset({"amx_bf16", "amx_tile"})) == "amx_bf16"


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="got 'bf32'"):
        select_cpu_path("bf32", ZEN4)


def test_setting_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().cpu_precision == "auto"
    monkeypatch.setenv("SEGSERVE_CPU_PRECISION", "fp32")
    assert Settings().cpu_precision == "fp32"


def test_cpu_flags_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def _record(card_key: dict[str, str], agreements: list[float]) -> dict[str, object]:
    scans = {f"scan{i}": {"agreement_network": a} for i, a in enumerate(agreements)}
    return {**card_key, "scans": scans}


def test_use_bf16_follows_the_record(shared_models_dir: Path, tmp_path: Path) -> None:
    card = Catalog(shared_models_dir).card("brain-mri-structures")
    records = tmp_path / "records.json"
    assert use_bf16(card, BF16, records)[0] is False  # never calibrated: fp32
    key = record_key(card, "avx512_bf16")
    records.write_text(json.dumps({"records": [_record(key, [0.9995, 0.9991])]}))
    assert use_bf16(card, BF16, records)[0] is True
    assert use_bf16(card, FP32, records)[0] is False  # the worker's path forbids it
    assert use_bf16(card, CpuPath("bf16", "amx_bf16", "t"), records)[0] is False  # other kernels
    records.write_text(json.dumps({"records": [_record(key, [0.9995, 0.9989])]}))  # one scan below
    allowed, why = use_bf16(card, BF16, records)
    assert allowed is False and "99.890 %" in why
    records.write_text(json.dumps({"records": [_record({**key, "torch": "1.0"}, [1.0])]}))
    assert use_bf16(card, BF16, records)[0] is False  # another torch's kernels


def test_a_calibration_where_bf16_was_slower_keeps_fp32(shared_models_dir: Path, tmp_path: Path) -> None:
    """Equal labels are not enough: bf16 must also have been faster over the calibration scans (summed)."""
    card = Catalog(shared_models_dir).card("brain-mri-structures")
    records = tmp_path / "records.json"
    record = _record(record_key(card, "avx512_bf16"), [0.9995, 1.0])
    for scan, (fp32, bf16) in zip(record["scans"].values(), [(22.5, 43.5), (2.0, 1.0)], strict=True):  # type: ignore[attr-defined]
        scan.update(seconds_fp32=fp32, seconds_bf16=bf16)
    records.write_text(json.dumps({"records": [record]}))
    allowed, why = use_bf16(card, BF16, records)
    assert allowed is False and "slower" in why and "0.55" in why  # 24.5 s / 44.5 s
    record["scans"]["scan0"].update(seconds_bf16=11.0)  # type: ignore[index]
    records.write_text(json.dumps({"records": [record]}))
    allowed, why = use_bf16(card, BF16, records)
    assert allowed is True and "2.04x" in why  # 24.5 s / 12.0 s


def test_label_agreement() -> None:
    a = np.zeros((10, 10, 10), np.uint8)
    b = a.copy()
    b[0, 0, :3] = 1
    assert label_agreement(b, a) == pytest.approx(0.997)
    with pytest.raises(ValueError, match="shape"):
        label_agreement(a, b[1:])


def test_the_recorded_calibration_pins_the_shipped_model(shared_models_dir: Path) -> None:
    """brain-mri-structures was calibrated on AVX512-BF16 with this torch (bench.calibrate, 3 real T1
    scans) and passed; the predictor then loads its bf16 twin, and fp32 when the path forbids it."""
    card = Catalog(shared_models_dir).card("brain-mri-structures")
    record = find_record(card, "avx512_bf16")
    assert record is not None and record["passes"] is True
    assert len(record["scans"]) == 3
    assert all(s["agreement_network"] >= AGREEMENT_MIN for s in record["scans"].values())
    fast = MeshNetPredictor.load(card, shared_models_dir, cpu_path=BF16)
    assert fast.precision == "bf16"
    dtypes = fast.network.step_dtypes()
    assert dtypes[0] == dtypes[-1] == torch.float32
    assert set(dtypes[1:-1]) == {torch.bfloat16}
    forced = MeshNetPredictor.load(card, shared_models_dir, cpu_path=select_cpu_path("fp32", ZEN4))
    assert forced.precision == "fp32"
    assert set(forced.network.step_dtypes()) == {torch.float32}
