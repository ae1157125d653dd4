"""Benchmark: an nnU-Net v2 model through the service's predictor against ``nnUNetv2_predict``, same run.

Run from the repository root:

    .venv/bin/python -m bench.nnunet                  # CPU; a 512x512x400 CT, about 10-20 minutes on 2 cores
    .venv/bin/python -m bench.nnunet --size 256,256,200 --repeats 1    # quicker
    .venv/bin/python -m bench.nnunet --device cuda    # on a GPU machine

Model: a real nnU-Net v2 model made by ``models.testing.make_nnunet`` (nnU-Net's planner on the CT cases of
``../shared/data``, 4 classes, network built from the plans, 2 folds ensembled, mirroring on all three axes),
target spacing 1.5 mm and patch 64x128x128 unless ``--spacing`` / ``--patch``; or ``--model FOLDER``, any
trained model folder (single-channel). Input: the real abdominal CT (``ct/abdomen-totalseg``, 122x101x30,
3 mm) resampled (trilinear) to 0.75 x 0.75 x 1.0 mm and mirrored at its borders up to ``--size`` voxels,
512x512x400 by default, int16 NIfTI.

Both sides run as fresh processes, so each time includes Python imports, reading the NIfTI, loading every
fold, prediction and the label map (written by nnU-Net; in memory for the service side, as a worker hands it
on), and each peak is that process's VmHWM (``ru_maxrss`` of the waited child; nnU-Net's own command also
starts worker processes for preprocessing and export, whose peaks are separate and shown as its children's):
  (a) nnU-Net: ``nnUNetv2_predict_from_modelfolder -i IN -o OUT -m MODEL -f 0 1 -device DEV`` (its defaults:
      step 0.5, Gaussian, mirroring; ``-npp 1 -nps 1``).
  (b) service: ``python -m bench.nnunet --service-child``: ``segserve.scans.readers.read_image``, the model
      installed with ``models.install.install_models`` into a models dir beforehand (not timed), then
      ``models.predictor.load_predictor(card, models_dir, device).predict(volume)``.
On the CPU both use ``os.cpu_count()`` torch threads (nnU-Net's command sets that itself). The sides alternate
``--repeats`` times; the best of each is compared (target: service / nnU-Net <= 1.15), and the labels of
the last runs are compared voxel by voxel.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def service_child(args: argparse.Namespace) -> None:
    """One service-side prediction in this process; prints a JSON line (seconds, VmHWM)."""
    start = time.perf_counter()
    import torch

    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    from models.catalog import Catalog
    from models.predictor import load_predictor
    from segserve.scans.readers import read_image

    models_dir = Path(args.models_dir)
    volume = read_image([Path(args.image)])
    card = Catalog(models_dir).card(args.model_id)
    loaded = time.perf_counter()
    predictor = load_predictor(card, models_dir, args.device)
    labels = predictor.predict(volume)
    done = time.perf_counter()
    np.save(args.out, labels)
    print(
        json.dumps(
            {
                "seconds": done - start,
                "load_s": loaded - start,
                "vm_hwm_mb": _vm_hwm_mb(),
                "shape": labels.shape,
            }
        )
    )


def _make_model(work: Path, spacing: str, patch: str) -> Path:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    options = ["--kinds", "single", "--folds", "0,1", "--spacing", spacing, "--patch", patch]
    run = subprocess.run(
        [sys.executable, "-m", "models.testing.make_nnunet", str(work), *options],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if run.returncode != 0:
        raise SystemExit(run.stdout[-2000:] + run.stderr[-2000:])
    return work / "results" / "Dataset991_TinyCT" / "nnUNetTrainer__nnUNetPlans__3d_fullres"


def _make_input(path: Path, size: tuple[int, int, int]) -> None:
    """A CT of ``size`` voxels at 0.75 x 0.75 x 1.0 mm (a common clinical grid) from the real abdominal CT:
    resampled (trilinear) to that spacing, then mirrored at its borders up to ``size`` (int16 NIfTI)."""
    import nibabel as nib
    from scipy.ndimage import zoom

    from tests.support.paths import DATA

    image: Any = nib.load(DATA / "ct" / "abdomen-totalseg" / "example_ct_sm.nii.gz")
    data = np.asarray(image.dataobj, dtype=np.float32)
    spacing = np.array([0.75, 0.75, 1.0])
    factors = np.asarray(image.header.get_zooms()[:3], dtype=float) / spacing
    fine = zoom(data, factors, order=1)
    pad = [(0, max(0, s - f)) for s, f in zip(size, fine.shape, strict=True)]
    big = np.pad(fine, pad, mode="symmetric")[: size[0], : size[1], : size[2]].astype(np.int16)
    affine = image.affine @ np.diag([*(1 / factors), 1.0])
    out = nib.Nifti1Image(big, affine)
    out.header.set_xyzt_units("mm")
    nib.save(out, path)


def _run(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, children's peak RSS MB, stdout) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    run = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO, check=False)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"{command[:3]} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak, before) / 1024, run.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--size", default="512,512,400", help="input size in voxels, i,j,k")
    parser.add_argument("--spacing", default="1.5,1.5,1.5", help="the made model's target spacing z,y,x mm")
    parser.add_argument("--patch", default="64,128,128", help="the made model's patch z,y,x")
    parser.add_argument("--model", type=Path, help="a trained model folder instead of a made one")
    parser.add_argument("--folds", default="0,1")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    # internal: the service side in its own process
    parser.add_argument("--service-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--models-dir", help=argparse.SUPPRESS)
    parser.add_argument("--model-id", help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.service_child:
        service_child(args)
        return 0

    from models.formats import InstallOptions
    from models.install import install_models

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-nnunet-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        model = args.model or _make_model(work / "model", args.spacing, args.patch)
        folds = tuple(int(f) for f in args.folds.split(","))
        size = tuple(int(v) for v in args.size.split(","))
        images = work / "in"
        images.mkdir(exist_ok=True)
        image = images / "case_0000.nii.gz"
        _make_input(image, size)  # type: ignore[arg-type]
        models_dir = work / "models"
        install_models(model, models_dir, options=InstallOptions(folds=folds))
        model_id = next(p.name for p in (models_dir / "nnunet").iterdir() if not p.name.startswith("."))
        print(f"setup (model, {size} input, install) {time.perf_counter() - t0:.0f} s; model {model_id}")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            env[name] = str(work / name)
        nnunet_cmd = [str(Path(sys.executable).with_name("nnUNetv2_predict_from_modelfolder"))]
        nnunet_cmd += ["-i", str(images), "-o", str(work / "out"), "-m", str(model), "-device", args.device]
        nnunet_cmd += ["-npp", "1", "-nps", "1", "-f", *map(str, folds)]
        service_cmd = [sys.executable, "-m", "bench.nnunet", "--service-child", "--device", args.device]
        service_cmd += ["--models-dir", str(models_dir), "--model-id", model_id, "--image", str(image)]
        service_cmd += ["--out", str(work / "service.npy")]
        print(f"load average before: {os.getloadavg()[0]:.1f}")
        ours: list[float] = []
        theirs: list[float] = []
        peaks: dict[str, float] = {}
        for repeat in range(args.repeats):
            shutil.rmtree(work / "out", ignore_errors=True)
            seconds, children_peak, _ = _run(nnunet_cmd, env)
            theirs.append(seconds)
            if repeat == 0:  # later, the service child's peak is in the same maximum
                peaks["nnunet_children"] = children_peak
            seconds, _, stdout = _run(service_cmd, env)
            report = json.loads(stdout.strip().splitlines()[-1])
            ours.append(seconds)
            peaks["service"] = report["vm_hwm_mb"]
            print(
                f"run {repeat + 1}: nnUNetv2_predict {theirs[-1]:.1f} s; service {ours[-1]:.1f} s "
                f"(imports+read {report['load_s']:.1f} s), service VmHWM {report['vm_hwm_mb']:.0f} MB"
            )
        import nibabel as nib

        reference = np.asarray(nib.load(work / "out" / "case.nii.gz").dataobj)
        labels = np.load(work / "service.npy")
        equal = float(np.mean(labels == reference))
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        print(f"labels equal to nnUNetv2_predict's: {equal * 100:.4f} % of {labels.size} voxels")
        print(
            f"best: nnUNetv2_predict {min(theirs):.1f} s, service {min(ours):.1f} s, "
            f"ratio {min(ours) / min(theirs):.3f}; medians ratio "
            f"{statistics.median(ours) / statistics.median(theirs):.3f} (target <= 1.15)"
        )
        print(
            f"peak memory: service process {peaks['service']:.0f} MB; nnUNetv2_predict's largest process "
            f"{peaks['nnunet_children']:.0f} MB (ru_maxrss of its process tree, first run)"
        )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
