"""Whether a MeshNet model may run its bf16 path: the agreement rule and its recorded calibrations.

The rule (issue #16): the fast path's labels must equal the fp32 forward's on at least 99.9 % of the voxels
on each real T1 scan of the calibration set (``../shared/data``: subject-a, t1-raw, the 3-slice MPRAGE),
or the model keeps fp32. Voxels counted: those the network labels (the cropped box on the conformed 256³
grid, which is all of it for a model that does not crop); the voxels outside the box are background on both
paths by construction and would only inflate the figure. The lowest scan decides.

Calibration is a one-time measurement per model and bf16 instruction set, made with
``python -m bench.calibrate`` and recorded in ``bf16_calibration.json`` beside this module
(committed, so every worker on such a CPU reads the same verdict). A record is keyed by the model's id,
version and weight checksums, the bf16 instruction set (AMX and AVX512-BF16 kernels round differently) and
torch's major.minor version; a model without a matching record keeps fp32.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.card import ModelCard
from models.cpu import CpuPath

__all__ = ["AGREEMENT_MIN", "RECORDS", "find_record", "label_agreement", "record_key", "use_bf16"]

AGREEMENT_MIN = 0.999
RECORDS = Path(__file__).with_name("bf16_calibration.json")


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


def record_passes(record: dict[str, Any]) -> bool:
    """Whether every scan of ``record`` agrees on at least ``AGREEMENT_MIN`` of the network's voxels."""
    scans = record.get("scans") or {}
    return bool(scans) and all(s["agreement_network"] >= AGREEMENT_MIN for s in scans.values())


def use_bf16(card: ModelCard, cpu_path: CpuPath, path: Path = RECORDS) -> tuple[bool, str]:
    """Whether ``card`` runs in bf16 on ``cpu_path``, and why (one line for the log)."""
    if cpu_path.precision != "bf16" or cpu_path.isa is None:
        return False, cpu_path.reason
    record = find_record(card, cpu_path.isa, path)
    if record is None:
        return False, f"fp32: {card.id} has no bf16 calibration for {cpu_path.isa}, torch {torch_version()}"
    if not record_passes(record):
        low = min(s["agreement_network"] for s in record["scans"].values())
        return False, f"fp32: {card.id} agrees with fp32 on {100 * low:.3f} % < {100 * AGREEMENT_MIN:.1f} %"
    low = min(s["agreement_network"] for s in record["scans"].values())
    return True, f"bf16 ({cpu_path.isa}): agrees with fp32 on >= {100 * low:.3f} % of voxels"


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
    f">= {100 * AGREEMENT_MIN:.1f} % of the network's voxels on every scan (agreement_network); "
    "agreement_volume counts the whole conformed 256^3 grid. Written by python -m bench.calibrate."
)
