"""Whether a model may run its bf16 path: the agreement rule and its recorded calibrations.

The rule (issue #16): the fast path's labels must equal the fp32 forward's on at least 99.9 % of the voxels
on each real scan of the model's calibration set (the lowest scan decides), and it must have been faster
than fp32 over those scans (summed seconds), or the model keeps fp32.
- Built-in MeshNet models: the real T1 scans of ``../shared/data`` (subject-a, t1-raw, the 3-slice MPRAGE);
  voxels counted are those the network labels (the cropped box on the conformed 256³ grid); the voxels
  outside the box are background on both paths by construction and would only inflate the figure. Their
  records are committed in ``models/meshnet/bf16_calibration.json`` (:data:`RECORDS`), so every worker on
  such a CPU reads the same verdict. The bf16 path is MeshNet's bf16 twin.
- Installed models (MONAI bundles, nnU-Net folders): the scans the admin calibrates them on (their own
  real cases: the weights are theirs), every voxel of the output grid counted; records are kept beside the
  models, in ``<models dir>/bf16_calibration.json`` (:func:`installed_records`). The bf16 path is the
  network's forward pass under ``torch.autocast("cpu", torch.bfloat16)``; pre- and post-processing stay fp32.

Calibration is a one-time measurement per model and bf16 instruction set, made with
``python -m bench.calibrate``. A record is keyed by the model's id, version and weight checksums, the bf16
instruction set (AMX and AVX512-BF16 kernels round differently) and torch's major.minor version; a model
without a matching, passing record keeps fp32.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.card import ModelCard
from models.cpu import CpuPath
from segserve.imaging.volume import Volume

__all__ = [
    "AGREEMENT_MIN",
    "RECORDS",
    "find_record",
    "installed_records",
    "label_agreement",
    "measure_installed",
    "precision_for",
    "record_key",
    "use_bf16",
]

AGREEMENT_MIN = 0.999
RECORDS = Path(__file__).with_name("meshnet") / "bf16_calibration.json"
RECORDS_NAME = "bf16_calibration.json"

log = logging.getLogger(__name__)


def installed_records(models_dir: Path) -> Path:
    """Where the calibrations of the models installed in ``models_dir`` are kept."""
    return Path(models_dir) / RECORDS_NAME


def torch_version() -> str:
    """torch's major.minor, e.g. "2.13" (oneDNN's kernels, and so the rounding, come with it)."""
    return ".".join(torch.__version__.split("+")[0].split(".")[:2])


def record_key(card: ModelCard, isa: str) -> dict[str, str]:
    """What a calibration record must match for ``card`` on a CPU with bf16 instruction set ``isa``."""
    return {
        "model": card.id,
        "version": card.version,
        "weights_sha256": ",".join(sorted(f.sha256 for f in card.files)),
        "isa": isa,
        "torch": torch_version(),
    }


def load_records(path: Path = RECORDS) -> list[dict[str, Any]]:
    """The recorded calibrations (empty when the file is missing)."""
    if not path.is_file():
        return []
    records = json.loads(path.read_text()).get("records", [])
    return [r for r in records if isinstance(r, dict)]


def find_record(card: ModelCard, isa: str, path: Path = RECORDS) -> dict[str, Any] | None:
    """The calibration record of ``card`` on ``isa``, None when it was never calibrated there."""
    key = record_key(card, isa)
    for record in load_records(path):
        if all(record.get(k) == v for k, v in key.items()):
            return record
    return None


def record_agrees(record: dict[str, Any]) -> bool:
    """Whether every scan of ``record`` agrees on at least ``AGREEMENT_MIN`` of the network's voxels."""
    scans = record.get("scans") or {}
    return bool(scans) and all(s["agreement_network"] >= AGREEMENT_MIN for s in scans.values())


def speedup(record: dict[str, Any]) -> float | None:
    """fp32 seconds over bf16 seconds, summed over the record's scans; None when it has no timings."""
    scans = (record.get("scans") or {}).values()
    fp32 = sum(float(s.get("seconds_fp32", 0.0)) for s in scans)
    bf16 = sum(float(s.get("seconds_bf16", 0.0)) for s in scans)
    return fp32 / bf16 if fp32 > 0 and bf16 > 0 else None


def record_passes(record: dict[str, Any]) -> bool:
    """The rule: every scan agrees (:func:`record_agrees`) and bf16 was faster than fp32 over them. Some
    CPUs have bf16 instructions and are still slower in bf16 for a model (measured: an Intel Xeon with
    AMX, MeshNet's 30-channel dilated convolutions on oneDNN's AMX kernels took 2-3 times fp32's time)."""
    ratio = speedup(record)
    return record_agrees(record) and (ratio is None or ratio > 1.0)


def use_bf16(card: ModelCard, cpu_path: CpuPath, path: Path = RECORDS) -> tuple[bool, str]:
    """Whether ``card`` runs in bf16 on ``cpu_path``, and why (one line for the log)."""
    if cpu_path.precision != "bf16" or cpu_path.isa is None:
        return False, cpu_path.reason
    record = find_record(card, cpu_path.isa, path)
    if record is None:
        return False, f"fp32: {card.id} has no bf16 calibration for {cpu_path.isa}, torch {torch_version()}"
    low = min(s["agreement_network"] for s in record["scans"].values())
    if not record_agrees(record):
        return False, f"fp32: {card.id} agrees with fp32 on {100 * low:.3f} % < {100 * AGREEMENT_MIN:.1f} %"
    ratio = speedup(record)
    if not record_passes(record):
        return False, f"fp32: {card.id} ran slower in bf16 on {cpu_path.isa} (fp32/bf16 = {ratio:.2f})"
    faster = f", {ratio:.2f}x fp32's speed" if ratio else ""
    return True, f"bf16 ({cpu_path.isa}): agrees with fp32 on >= {100 * low:.3f} % of voxels{faster}"


def precision_for(card: ModelCard, cpu_path: CpuPath, path: Path = RECORDS) -> str:
    """ "bf16" or "fp32" for ``card`` on ``cpu_path`` (:func:`use_bf16` with the records at ``path``);
    the reason goes to the log, one line per model load."""
    bf16, why = use_bf16(card, cpu_path, path)
    log.info("model %s: %s", card.id, why)
    return "bf16" if bf16 else "fp32"


def verdict(scans: dict[str, dict[str, float]]) -> str:
    """One line on a calibration's per-scan results: the lowest agreement, the speed-up, and the
    precision the rule gives ("bf16" or "fp32")."""
    record = {"scans": scans}
    low = min(s["agreement_network"] for s in scans.values())
    ratio = speedup(record) or 0.0
    rule = f"rule: >= {100 * AGREEMENT_MIN:.1f} % and faster"
    precision = "bf16" if record_passes(record) else "fp32"
    return f"lowest agreement {100 * low:.3f} %, fp32/bf16 {ratio:.2f} ({rule}): {precision}"


def label_agreement(fast: np.ndarray, reference: np.ndarray) -> float:
    """Share of voxels (0..1) where two label volumes of the same shape are equal."""
    if fast.shape != reference.shape:
        raise ValueError(f"label volumes differ in shape: {fast.shape} vs {reference.shape}")
    if fast.size == 0:
        raise ValueError("label volumes are empty")
    return float(np.count_nonzero(fast == reference)) / fast.size


def write_record(
    key: dict[str, str], scans: dict[str, dict[str, float]], extra: dict[str, Any], path: Path = RECORDS
) -> dict[str, Any]:
    """Add (or replace) the record for ``key`` with per-scan agreements; returns the record written."""
    record: dict[str, Any] = {**key, "scans": scans, **extra}
    record["passes"] = record_passes(record)
    kept: Iterable[dict[str, Any]] = (
        r for r in load_records(path) if not all(r.get(k) == v for k, v in key.items())
    )
    records = sorted([*kept, record], key=lambda r: (r["model"], r["isa"], r["torch"]))
    path.write_text(json.dumps({"rule": _RULE, "records": records}, indent=2) + "\n")
    return record


_RULE = (
    "bf16 is used for a model on a CPU with this isa only if its labels equal the fp32 forward's on "
    f">= {100 * AGREEMENT_MIN:.1f} % of the network's voxels on every scan (agreement_network) and it "
    "was faster than fp32 over those scans (seconds_fp32 / seconds_bf16 summed, > 1); "
    "agreement_volume counts the whole conformed 256^3 grid (MeshNet); for installed models both count the "
    "output grid. Written by python -m bench.calibrate."
)


def measure_installed(predictor: Any, scans: Mapping[str, Sequence[Volume]]) -> dict[str, dict[str, float]]:
    """Per scan (a name and its volumes, one per input channel): the labels of ``predictor`` (an installed
    model's, with a settable ``precision``) in fp32 and under bf16 autocast, compared on every voxel of the
    output grid: ``agreement_network`` (= ``agreement_volume``), the voxel count and both passes' seconds.
    The predictor is left in fp32."""
    results: dict[str, dict[str, float]] = {}
    try:
        for name, volumes in scans.items():
            labels, seconds = {}, {}
            for precision in ("fp32", "bf16"):
                predictor.precision = precision
                start = time.perf_counter()
                labels[precision] = predictor.predict(list(volumes))
                seconds[precision] = time.perf_counter() - start
            agreement = round(label_agreement(labels["bf16"], labels["fp32"]), 6)
            results[name] = {
                "agreement_network": agreement,
                "agreement_volume": agreement,
                "voxels_network": int(labels["fp32"].size),
                "seconds_fp32": round(seconds["fp32"], 2),
                "seconds_bf16": round(seconds["bf16"], 2),
            }
    finally:
        predictor.precision = "fp32"
    return results
