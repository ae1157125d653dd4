"""Benchmark: a worker's peak memory (VmHWM) per model path against the input's bytes, on large CTs.

Run from the repository root (rows one at a time, each in a fresh process; about an hour on 2 cores):

    .venv/bin/python -m bench.memory --baseline ../main    # also each row with the code of another checkout
    .venv/bin/python -m bench.memory --sizes 256,256,256 --paths read,meshnet   # quicker

Inputs: the real abdominal CT (``ct/abdomen-totalseg``, 122x101x30, 3 mm, HU) resampled (trilinear) to
256x256x256, 512x512x400 and 512x512x1500 voxels of 0.8 mm (so the intensities stay real CT values), int16
``.nii.gz`` as uploads usually are. Each row runs one model path as ``workers/runner.py`` does, in a fresh
process, and reports that process's VmHWM:

- ``read``: ``segserve.scans.readers.read_image`` only;
- ``meshnet``: read, the real brainchop model of ``--meshnet-model`` (weights from ../shared/models) through
  ``MeshNetPredictor`` (conform to 256^3, network, labels back on the input grid), labels written; on the
  worker's CPU path (SEGSERVE_CPU_PRECISION, default auto: bf16 where the model's calibration passes);
- ``nnunet``: read, a real nnU-Net v2 model made by ``models.testing.make_nnunet`` (nnU-Net's planner on the
  shared CTs, target spacing ``--nnunet-spacing``, 1 fold) through ``NnunetPredictor``, labels written;
  ``nnunet-z``: the same with make_nnunet's ``zscore`` model (ZScoreNormalization, as MR models have), and
  ``nnunet-zmask`` with ``use_mask_for_norm`` too (on these CTs every voxel is non-zero: the mask is whole);
- ``bundle``: read, a MONAI bundle made by ``models.testing.make_bundle`` (a seeded UNet, 4 mm, 64^3 window)
  through the bundle predictor (its labels put on the input grid by models.bundle.regrid), labels written;
- ``bundle-invert``: the same with the Zoo spleen bundle's post-processing (softmax, Invertd of the
  probabilities back onto the input's grid through Spacingd, bilinear; then the argmax);
- ``totalseg``: read, TotalSegmentator's ``total`` task (1.5 mm, five part models with the real class counts)
  as stand-in weights (tiny real nnU-Net networks, ``bench/memory_setup.py``) through ``TotalSegPredictor``,
  labels written (``--max-voxels-totalseg``);
- ``evaluate``: read, then a label map and its reference read (``read_labels``) and
  ``evaluation.report.evaluate_case`` (overlap and surface metrics): HU bands of the input (air, fat, soft
  tissue, bone) on a 4-voxel block grid, so regions have smooth borders as a model's do, and the same
  shifted by 2 voxels;
- ``seg``: the input as a DICOM series (one int16 file per slice, on a real CT slice's header) read, those
  labels written and ``segserve.scans.seg_export.export_job_seg``.
``--max-voxels-nnunet`` / ``-bundle`` / ``-seg`` skip the larger rows of the slow paths; they default to
512x512x400 (at 512x512x1500 nnU-Net's row takes about 8 minutes and 2.3 GB, the bundle's 4.5 minutes and
2.7 GiB, bundle-invert's 8.5 minutes and 3.2 GiB under load; ``--max-voxels-nnunet 393216000`` runs it; the
code before the memory work needed 13 and 23 GB there).

The model's own working set (weights plus activations) does not grow with the input, so it is measured in
the same run: the same path on a small input (64^3; for MeshNet its own 256^3 1 mm LIA grid, on which its
network always runs). Target: ``(peak - model) / input bytes <= 4`` (the "ratio" column). With
``--baseline DIR`` every row also runs with the service's code from DIR (e.g. a checkout of main before a
change) and the labels of both are compared (sha256).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SPACING_MM = 0.8
PATHS = (
    "read",
    "meshnet",
    "nnunet",
    "nnunet-z",
    "nnunet-zmask",
    "bundle",
    "bundle-invert",
    "totalseg",
    "evaluate",
    "seg",
)
BUNDLES = ("bundle", "bundle-invert")
# nnU-Net rows: make_nnunet's kind and options
NNUNET = {
    "nnunet": ("single", []),
    "nnunet-z": ("zscore", []),
    "nnunet-zmask": ("zscore", ["--mask-for-norm"]),
}


def _vm_hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def make_input(path: Path, size: tuple[int, int, int], spacing_mm: float = SPACING_MM) -> None:
    """The real abdominal CT resampled (trilinear) to ``size`` voxels of ``spacing_mm``, int16 NIfTI."""
    import nibabel as nib
    from scipy import ndimage

    from tests.support.paths import DATA

    image: Any = nib.load(DATA / "ct" / "abdomen-totalseg" / "example_ct_sm.nii.gz")
    data = np.asarray(image.dataobj, dtype=np.float32)
    out = np.empty(size, dtype=np.int16)
    scale = np.array(data.shape, dtype=np.float64) / np.array(size, dtype=np.float64)
    # slab by slab along k, so building the input does not itself need a float copy of it
    step = 64
    for k0 in range(0, size[2], step):
        k1 = min(size[2], k0 + step)
        offset = np.array([0.0, 0.0, k0 * scale[2]]) + 0.5 * scale - 0.5
        slab = ndimage.affine_transform(
            data, scale, offset=offset, output_shape=(size[0], size[1], k1 - k0), order=1, mode="nearest"
        )
        out[:, :, k0:k1] = np.rint(slab)
    affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    affine[:3, 3] = -np.array(size) * spacing_mm / 2
    nifti = nib.Nifti1Image(out, affine)
    nifti.header.set_xyzt_units("mm")
    nib.save(nifti, path)


def child(args: argparse.Namespace) -> None:
    """One row in this process: prints a JSON line (seconds, VmHWM bytes, labels checksum)."""
    start = time.perf_counter()
    from segserve.imaging.writers import write_labels_nifti
    from segserve.scans.readers import read_image

    volume = read_image([Path(args.image)])
    labels: np.ndarray | None = None
    if args.child in ("meshnet", *NNUNET, *BUNDLES, "totalseg"):
        import torch

        from models.catalog import Catalog
        from models.predictor import load_predictor

        torch.set_num_threads(os.cpu_count() or 1)
        try:  # the worker's CPU path, as workers/tasks.py chooses it (a --baseline checkout may predate it)
            from models.cpu import cpu_flags, select_cpu_path
            from models.predictor import set_cpu_path
        except ImportError:
            pass
        else:
            set_cpu_path(select_cpu_path(os.environ.get("SEGSERVE_CPU_PRECISION", "auto"), cpu_flags()))
        models_dir = Path(args.models_dir)
        card = Catalog(models_dir).card(args.model_id)
        predictor = load_predictor(card, models_dir, "cpu")
        labels = predictor.predict(volume)
        write_labels_nifti(labels, volume, Path(args.out))
    elif args.child == "evaluate":  # as workers/runner.py: the labels, then the reference read and compared
        from evaluation.report import evaluate_case
        from segserve.scans.readers import read_labels

        labels = read_labels([Path(args.labels)]).array
        reference = read_labels([Path(args.reference)])
        names = {0: "air", 1: "fat", 2: "soft tissue", 3: "bone"}
        spacing_mm = volume.spacing_mm
        del volume  # as the runner: the scan's voxels are not needed by the metrics
        evaluate_case(labels, reference.array, names, spacing_mm)
    elif args.child == "seg":
        labels = _seg_child(args)
    seconds = time.perf_counter() - start
    peak = _vm_hwm_bytes()  # before the checksum, which may copy
    checksum = None if labels is None else hashlib.sha256(np.ascontiguousarray(labels).data).hexdigest()
    print(json.dumps({"seconds": seconds, "vm_hwm": peak, "checksum": checksum}))


def _seg_child(args: argparse.Namespace) -> np.ndarray:
    """As workers/runner.py for a DICOM job: the series read, the labels written, the SEG exported."""
    from models.catalog import builtin_cards
    from segserve.imaging.writers import write_labels_nifti
    from segserve.scans.readers import read_image, read_labels
    from segserve.scans.seg_export import export_job_seg

    series = sorted(Path(args.series).iterdir())
    volume = read_image(series)
    labels = read_labels([Path(args.labels)]).array
    nifti = Path(args.out)
    write_labels_nifti(labels, volume, nifti)
    card = builtin_cards()[0]
    export_job_seg(series, nifti, card, nifti.with_suffix(".dcm"), volume=volume, labels=labels)
    return labels


def _run_child(row: str, image: Path, work: Path, extra: list[str], code: Path = REPO) -> dict[str, Any]:
    """One row in a fresh process, with the service's code from ``code`` (this checkout, or --baseline)."""
    argv = ["--child", row, "--image", str(image), "--out", str(work / f"{row}-labels.nii"), *extra]
    # run_path, not -m: the baseline checkout has a bench package of its own, without this module
    script = f"import runpy, sys; sys.argv = {[str(Path(__file__).resolve()), *argv]!r}; "
    script += f"runpy.run_path({str(Path(__file__).resolve())!r}, run_name='__main__')"
    env = {**os.environ, "PYTHONPATH": str(code)}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=code)
    if run.returncode != 0:
        return {"error": ((run.stderr or run.stdout).strip().splitlines() or ["?"])[-1][:200]}
    result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


def _setup_models(work: Path, paths: list[str], args: argparse.Namespace) -> dict[str, list[str]]:
    """Models dir per path (installed into ``work``), as child arguments."""
    from tests.support.paths import WEIGHTS

    extra: dict[str, list[str]] = {}
    if "totalseg" in paths:  # bench.memory_setup: parent only (a --baseline child lacks the module)
        from bench.memory_setup import install_totalseg

        extra["totalseg"] = install_totalseg(work)
    if "meshnet" in paths:
        extra["meshnet"] = ["--models-dir", str(WEIGHTS), "--model-id", args.meshnet_model]
    for path in (p for p in paths if p in NNUNET):
        from models.formats import InstallOptions
        from models.install import install_models

        kind, flags = NNUNET[path]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        options = ["--kinds", kind, "--folds", "0", "--spacing", args.nnunet_spacing, *flags]
        options += ["--patch", args.nnunet_patch]
        subprocess.run(
            [sys.executable, "-m", "models.testing.make_nnunet", str(work / path), *options],
            cwd=REPO,
            env=env,
            capture_output=True,
            check=True,
        )
        folder = next((work / path / "results").iterdir()) / "nnUNetTrainer__nnUNetPlans__3d_fullres"
        models_dir = work / f"models-{path}"
        install_models(folder, models_dir, options=InstallOptions(folds=(0,)))
        model_id = next(p.name for p in (models_dir / "nnunet").iterdir() if not p.name.startswith("."))
        extra[path] = ["--models-dir", str(models_dir), "--model-id", model_id]
    for row in BUNDLES:
        if row not in paths:
            continue
        from models.formats import InstallOptions
        from models.install import install_models
        from models.testing.make_bundle import write_unet_bundle

        invert = row == "bundle-invert"
        bundle = work / ("ct_unet_invert_bundle" if invert else "ct_unet_bundle")
        write_unet_bundle(bundle, pixdim=(4.0, 4.0, 4.0), roi_size=(64, 64, 64), invert=invert)
        models_dir = work / f"models-{row}"
        install_models(bundle, models_dir, cards=[], options=InstallOptions(trust_code=True))
        extra[row] = ["--models-dir", str(models_dir), "--model-id", bundle.name]
    return extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,256,256;512,512,400;512,512,1500", help="i,j,k;...")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"of {','.join(PATHS)}")
    parser.add_argument("--meshnet-model", default="brain-mri-structures")
    parser.add_argument("--nnunet-spacing", default="4,4,4", help="made nnU-Net model's spacing z,y,x mm")
    parser.add_argument("--nnunet-patch", default="32,64,64", help="made nnU-Net model's patch z,y,x")
    parser.add_argument("--max-voxels-nnunet", type=int, default=512 * 512 * 400, help="skip larger rows")
    parser.add_argument("--max-voxels-seg", type=int, default=512 * 512 * 400, help="skip larger seg rows")
    parser.add_argument("--max-voxels-bundle", type=int, default=512 * 512 * 400, help="skip larger rows")
    parser.add_argument("--max-voxels-totalseg", type=int, default=512 * 512 * 400, help="skip larger rows")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument(
        "--baseline", type=Path, help="a checkout of the code before a change: each row run with it too"
    )
    parser.add_argument(
        "--baseline-max-voxels",
        type=int,
        default=512 * 512 * 400,
        help="no baseline for larger inputs (the code before needs about 9 GB for MeshNet on 512x512x1500)",
    )
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    for name in ("--image", "--out", "--models-dir", "--model-id", "--series", "--labels", "--reference"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0

    paths = [p for p in args.paths.split(",") if p]
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        parser.error(f"unknown paths {unknown}; choose from {PATHS}")
    sizes = [tuple(int(v) for v in s.split(",")) for s in args.sizes.split(";")]
    from bench.memory_setup import write_label_pair, write_series

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        extra = _setup_models(work, paths, args)
        small = work / "small.nii.gz"
        make_input(small, (64, 64, 64))
        conformed = work / "conformed.nii.gz"
        _make_conformed(conformed)
        print(f"setup {time.perf_counter() - t0:.0f} s; load average {os.getloadavg()[0]:.1f}", flush=True)
        # The model's working set: the same path on a small input (MeshNet: its own 256^3 grid).
        model_peak: dict[str, int] = {}
        if "seg" in paths:
            write_series(small, work / "small-series")
        if "seg" in paths or "evaluate" in paths:
            write_label_pair(small, work / "small-pred.nii.gz", work / "small-ref.nii.gz")
        for path in paths:
            base_input = conformed if path == "meshnet" else small
            base_extra = list(extra.get(path, []))
            if path == "seg":
                base_extra += ["--series", str(work / "small-series")]
            if path in ("seg", "evaluate"):
                base_extra += ["--labels", str(work / "small-pred.nii.gz")]
                base_extra += ["--reference", str(work / "small-ref.nii.gz")]
            result = _run_child(path, base_input, work, base_extra)
            model_peak[path] = int(result.get("vm_hwm", 0))
            print(f"model working set, {path}: {model_peak[path] / 2**20:.0f} MiB {result.get('error', '')}")
        header = f"{'input':>14} {'MiB in':>7} {'path':>13} {'peak MiB':>9} {'model':>6} {'ratio':>6}"
        header += f" {'s':>6}"
        if args.baseline:
            header += f" {'baseline MiB':>12} {'ratio':>6} {'s':>6} {'labels':>7}"
        print(header, flush=True)
        for size in sizes:
            image = work / "input.nii.gz"
            make_input(image, size)  # type: ignore[arg-type]
            if "seg" in paths or "evaluate" in paths:
                write_label_pair(image, work / "pred.nii.gz", work / "ref.nii.gz")
            n_bytes = int(np.prod(size)) * 2
            for path in paths:
                voxels = int(np.prod(size))
                limits = {**dict.fromkeys(NNUNET, args.max_voxels_nnunet), "seg": args.max_voxels_seg}
                limits["totalseg"] = args.max_voxels_totalseg
                limit = {**limits, **dict.fromkeys(BUNDLES, args.max_voxels_bundle)}.get(path)
                label = "x".join(map(str, size))
                if limit is not None and voxels > limit:
                    print(
                        f"{label:>14} {n_bytes / 2**20:7.0f} {path:>13}   skipped "
                        f"(over --max-voxels-{path.split('-')[0]})"
                    )
                    continue
                row_extra = list(extra.get(path, []))
                if path in ("seg", "evaluate"):
                    row_extra += ["--labels", str(work / "pred.nii.gz")]
                    row_extra += ["--reference", str(work / "ref.nii.gz")]
                if path == "seg":
                    series = work / "series"
                    shutil.rmtree(series, ignore_errors=True)
                    write_series(image, series)
                    row_extra += ["--series", str(series)]
                result = _run_child(path, image, work, row_extra)
                if "error" in result:
                    print(f"{label:>14} {n_bytes / 2**20:7.0f} {path:>13}   failed: {result['error']}")
                    continue
                peak = int(result["vm_hwm"])
                ratio = (peak - model_peak.get(path, 0)) / n_bytes
                line = (
                    f"{label:>14} {n_bytes / 2**20:7.0f} {path:>13} {peak / 2**20:9.0f} "
                    f"{model_peak.get(path, 0) / 2**20:6.0f} {ratio:6.2f} {result['seconds']:6.1f}"
                )
                if args.baseline and voxels > args.baseline_max_voxels:
                    line += "  (baseline not run: --baseline-max-voxels)"
                elif args.baseline:
                    before = _run_child(path, image, work, row_extra, args.baseline)
                    if "error" in before:
                        line += f"  baseline failed: {before['error']}"
                    else:
                        base_ratio = (int(before["vm_hwm"]) - model_peak.get(path, 0)) / n_bytes
                        same = "equal" if before["checksum"] == result["checksum"] else "DIFFER"
                        line += (
                            f" {int(before['vm_hwm']) / 2**20:12.0f} {base_ratio:6.2f} "
                            f"{before['seconds']:6.1f} {same:>7}"
                        )
                print(line, flush=True)
            image.unlink()
        print(
            f"load average after: {os.getloadavg()[0]:.1f}; ratio = (peak - model) / input bytes, target <= 4"
        )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _make_conformed(path: Path) -> None:
    """The small CT resampled onto MeshNet's own grid (256^3, 1 mm, LIA): conform is the identity there."""
    import nibabel as nib

    from models.meshnet.conform import LIA_DIRECTIONS

    make_input(path, (256, 256, 256), 1.0)
    nifti: Any = nib.load(path)
    data = np.asarray(nifti.dataobj).copy()  # a copy: the file is written over below
    affine = np.eye(4)
    affine[:3, :3] = LIA_DIRECTIONS
    affine[:3, 3] = -LIA_DIRECTIONS @ np.full(3, 128.0)
    nib.save(nib.Nifti1Image(data, affine), path)


if __name__ == "__main__":
    sys.exit(main())
