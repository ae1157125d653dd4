"""One-time bf16 calibration of the MeshNet models on this CPU: the agreement rule, measured and recorded.

Run from the repository root (about 2 minutes a model on 2 quiet cores):

    .venv/bin/python -m bench.calibrate                                   # brain-mri-structures
    .venv/bin/python -m bench.calibrate --models brain-mri-structures,brain-mri-tissue
    .venv/bin/python -m bench.calibrate --dry-run                         # measure, record nothing

For each model and each real T1 scan of the calibration set (the T1 scans ../shared/data/README.md
lists: subject-a's norm.mgz, t1-raw's chris_t1 and the 3-slice T1 MPRAGE DICOM series), the Predictor's
labels on the conformed 256³ grid from the fp32 network and from its bf16 twin
(``models.meshnet.twin.bf16_twin``) are compared: ``agreement_network`` on the voxels the network labels
(the rule: >= 99.9 % on every scan), and ``agreement_volume`` on the whole grid. One more scan is measured
and recorded but is not part of the rule (``other_scans``): the brain-tumour MRI (256x256x25, 6.5 mm
slices, with skull, not said to be a T1), an input the card does not expect. The result is written to
``models/meshnet/bf16_calibration.json`` keyed by model, version, weight checksums, the CPU's bf16
instruction set and torch's version (see ``models/meshnet/calibration.py``); workers on such a CPU then use
bf16 for the models that pass. The seconds of each pass (conform to labels) are printed too; machine load
distorts them, the ratio is the robust part.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from models.calibration import label_agreement, record_key, verdict, write_record
from models.catalog import Catalog
from models.cpu import CpuPath, cpu_flags, select_cpu_path
from models.meshnet.predictor import MeshNetPredictor
from models.meshnet.twin import bf16_twin
from segserve.scans.readers import read_image
from tests.support.paths import DATA, WEIGHTS

SCANS: dict[str, list[Path]] = {
    "subject-a": [DATA / "mri-brain" / "subject-a" / "norm.mgz"],
    "t1-raw": [DATA / "mri-brain" / "t1-raw" / "chris_t1.nii.gz"],
    "mr-3slice": sorted((DATA / "dicom" / "mr-3slice").glob("*")),
}
OTHER_SCANS: dict[str, list[Path]] = {
    "brain-tumor": [DATA / "mri-lesion" / "brain-tumor" / "brain1_image.nrrd"],
}


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's guess elsewhere); recorded, not keyed."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def calibrate(model_id: str, scans: dict[str, list[Path]], path: CpuPath) -> dict[str, dict[str, float]]:
    """Per scan: agreement_network, agreement_volume, voxels_network and the two forwards' seconds; the
    bf16 twin as a worker on ``path`` builds it."""
    card = Catalog(WEIGHTS).card(model_id)
    fp32 = MeshNetPredictor.load(card, WEIGHTS)
    twin = bf16_twin(fp32.network, blocks=path.space_to_batch)
    bf16 = MeshNetPredictor(card, twin, precision="bf16")
    results: dict[str, dict[str, float]] = {}
    for name, paths in scans.items():
        volume = read_image(paths)
        with torch.inference_mode():
            start = time.perf_counter()
            _, reference, box = fp32.conformed_labels(volume)
            seconds_fp32 = time.perf_counter() - start
            start = time.perf_counter()
            _, fast, _ = bf16.conformed_labels(volume)
            seconds_bf16 = time.perf_counter() - start
        if box is None:
            raise RuntimeError(f"{name}: the scan has no non-zero voxel")
        results[name] = {
            "agreement_network": round(label_agreement(fast[box], reference[box]), 6),
            "agreement_volume": round(label_agreement(fast, reference), 6),
            "voxels_network": int(reference[box].size),
            "seconds_fp32": round(seconds_fp32, 2),
            "seconds_bf16": round(seconds_bf16, 2),
        }
        row = results[name]
        print(
            f"  {name:<12} network voxels {row['voxels_network']:>9}"
            f"  agreement {100 * row['agreement_network']:.3f} %"
            f" (whole grid {100 * row['agreement_volume']:.3f} %)  fp32 {seconds_fp32:.1f} s, bf16 "
            f"{seconds_bf16:.1f} s (fp32/bf16 = {seconds_fp32 / seconds_bf16:.2f})",
            flush=True,
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="brain-mri-structures", help="comma-separated MeshNet card ids")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--dry-run", action="store_true", help="measure and print, record nothing")
    args = parser.parse_args(argv)
    missing = [
        name for name, paths in {**SCANS, **OTHER_SCANS}.items() if not paths or not paths[0].is_file()
    ]
    if missing or not (WEIGHTS / "brainchop").is_dir():
        print(f"missing under {DATA.parent} (set SEGSERVE_SHARED_DIR): {missing or 'the weights'}")
        return 2
    path = select_cpu_path("auto", cpu_flags())
    if path.isa is None:
        print(f"nothing to calibrate on this CPU: {path.reason}")
        return 1
    torch.set_num_threads(args.threads)
    catalog = Catalog(WEIGHTS)
    for model_id in args.models.split(","):
        print(f"{model_id} on {cpu_name()} ({path.isa}, torch {torch.__version__}, {args.threads} threads)")
        scans = calibrate(model_id, SCANS, path)
        print(f"  {verdict(scans)}")
        print("  not part of the rule:")
        others = calibrate(model_id, OTHER_SCANS, path)
        if not args.dry_run:
            extra = {
                "other_scans": others,
                "cpu": cpu_name(),
                "measured_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%MZ"),
            }
            write_record(record_key(catalog.card(model_id), path.isa), scans, extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
