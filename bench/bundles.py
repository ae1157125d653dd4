"""Peak memory and seconds per case of real Zoo bundles: the service's predictor against MONAI's own runner.

    python -m bench.bundles                       # CPU, both cases
    python -m bench.bundles --device cuda         # the same on a GPU (peak GPU memory too)
    python -m bench.bundles --cases brats_mri_segmentation --threads 2

Cases (seeded random weights from each bundle's own ``network_def``, models/testing/zoo.py; inputs built
from real scans of ../shared/data, resampled up to the sizes such models meet in practice):

    brats_mri_segmentation     4 x 240 x 240 x 155 at 1 mm (the BraTS grid): mri-lesion/brain-tumor resampled,
                               channels T1c/T1/T2/FLAIR derived from it as in the conformance suite.
    wholeBody_ct_segmentation  512 x 512 x 200 CT at 0.8 x 0.8 x 1.5 mm (104 structures + background):
                               ct/abdomen-totalseg (HU) resampled to that grid (its anatomy is stretched; the
                               cost depends on the grid, not on the anatomy).

Each side runs in a fresh subprocess (one case, like a worker process that serves one model):
    service        models.install.install_models (trusting the bundle's code) + the catalog's card +
                   models.predictor.load_predictor(...).predict(volumes), the volumes read as a worker reads
                   them (segserve.scans.readers.read_image)
    monai-runner   MONAI's own ConfigWorkflow on the bundle's inference config (what
                   ``python -m monai.bundle run`` does), output to a temporary folder: the BASELINE.
Reported per side: ``seconds`` (the case: predict() / workflow.run(), data reading included on MONAI's side
since its run reads the files), ``load_s`` (model load / initialize), ``peak_rss_gb`` (VmHWM of that process,
from /proc/self/status, i.e. the whole process, torch and its libraries included) and on CUDA
``peak_gpu_gb`` (torch.cuda.max_memory_allocated); then ratios service / monai-runner and the voxel
agreement of the two label maps. Target: the service's peak within 4 GB per CPU worker.
One run per side (no repeats: a case takes minutes on 2 CPU cores); run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CASES = ("brats_mri_segmentation", "wholeBody_ct_segmentation")
BASELINE = "monai-runner"
TARGET_GB = 4.0
REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEGSERVE_SHARED_DIR", REPO.parent / "shared")).resolve()


def _resample(array: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Trilinear resampling of a 3D array to ``shape`` (voxel centres aligned, as torch align_corners)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    out = torch.nn.functional.interpolate(t, size=shape, mode="trilinear", align_corners=True)
    return out[0, 0].numpy()


def build_case(name: str, dest: Path) -> list[Path]:
    """The realistic-size input files of case ``name`` (one per channel, in the bundle's order)."""
    import nibabel as nib

    from models.testing.zoo import _load, brats_like_channels

    dest.mkdir(parents=True, exist_ok=True)
    if name == "brats_mri_segmentation":
        arr, _ = _load(SHARED / "data" / "mri-lesion" / "brain-tumor" / "brain1_image.nrrd")
        t1c = _resample(arr, (240, 240, 155))
        channels = brats_like_channels(t1c, smooth=(3, 3, 3))
        affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # 1 mm LPS-like grid, as BraTS volumes
        paths = []
        for key, data in channels.items():
            paths.append(dest / f"{key}.nii.gz")
            nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(paths[-1]))
        return paths
    if name == "wholeBody_ct_segmentation":
        arr, _ = _load(SHARED / "data" / "ct" / "abdomen-totalseg" / "example_ct_sm.nii.gz")
        ct = np.round(_resample(arr, (512, 512, 200))).astype(np.int16)
        affine = np.diag([0.8, 0.8, 1.5, 1.0])
        path = dest / "image.nii.gz"
        nib.save(nib.Nifti1Image(ct, affine), str(path))
        return [path]
    raise SystemExit(f"unknown case {name!r} (one of {', '.join(CASES)})")


def _peak_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024**2
    return float("nan")


def _gpu_peak_gb(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 1024**3 if device.startswith("cuda") else None


def side_service(bundle: Path, inputs: list[Path], out: Path, device: str) -> dict[str, Any]:
    """The service's path: install, card, predictor, predict (in this process)."""
    import nibabel as nib

    from models.catalog import Catalog
    from models.formats import InstallOptions
    from models.install import install_models
    from models.predictor import load_predictor
    from segserve.scans.readers import read_image

    models_dir = out / "models"
    install_models(bundle, models_dir, cards=[], options=InstallOptions(trust_code=True))
    card = Catalog(models_dir).card(bundle.name)
    start = time.perf_counter()
    predictor = load_predictor(card, models_dir, device)
    load_s = time.perf_counter() - start
    volumes = [read_image([p]) for p in inputs]
    start = time.perf_counter()
    labels = predictor.predict(volumes if len(volumes) > 1 else volumes[0])
    seconds = time.perf_counter() - start
    nib.save(
        nib.Nifti1Image(np.asarray(labels).astype(np.int16), volumes[0].affine), str(out / "labels.nii.gz")
    )
    return {"seconds": seconds, "load_s": load_s, "peak_gpu_gb": _gpu_peak_gb(device)}


def side_monai(bundle: Path, inputs: list[Path], out: Path, device: str) -> dict[str, Any]:
    """MONAI's own runner (ConfigWorkflow, as ``python -m monai.bundle run``) in this process."""
    import nibabel as nib
    from monai.bundle import ConfigWorkflow

    from models.testing.zoo import config_file, cpu_overrides, run_id

    overrides: dict[str, Any] = {**cpu_overrides(bundle), "output_dir": str(out / "monai")}
    if bundle.name == "brats_mri_segmentation":
        overrides["test_datalist"] = [{"image": [str(p) for p in inputs]}]
    else:
        overrides["datalist"] = [str(inputs[0])]
    # the configs choose cuda:0 when a GPU is there, the CPU otherwise: as MONAI runs them
    sys.path.insert(0, str(bundle))
    start = time.perf_counter()
    workflow = ConfigWorkflow(
        config_file=str(config_file(bundle)),
        meta_file=str(bundle / "configs" / "metadata.json"),
        workflow_type="infer",
        run_id=run_id(bundle),
        bundle_root=str(bundle),
        **overrides,
    )
    workflow.initialize()
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    workflow.run()
    seconds = time.perf_counter() - start
    workflow.finalize()
    saved = sorted((out / "monai").rglob(f"{inputs[0].name.removesuffix('.nii.gz')}*.nii*"))
    img: Any = nib.load(str(saved[0]))
    nib.save(
        nib.Nifti1Image(np.asarray(img.dataobj).squeeze().astype(np.int16), img.affine),
        str(out / "labels.nii.gz"),
    )
    return {"seconds": seconds, "load_s": load_s, "peak_gpu_gb": _gpu_peak_gb(device)}


def _child(args: argparse.Namespace) -> None:
    import torch

    if args.side == "service":  # the worker's process setting (workers/tasks.py)
        from workers.malloc import release_large_blocks

        release_large_blocks()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    side = side_service if args.side == "service" else side_monai
    with torch.no_grad():
        result = side(Path(args.bundle), [Path(p) for p in args.inputs], out, args.device)
    result["peak_rss_gb"] = _peak_rss_gb()
    (out / "result.json").write_text(json.dumps(result))


def _run_side(
    side: str, bundle: Path, inputs: list[Path], out: Path, args: argparse.Namespace
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "bench.bundles", "--child", side, "--bundle", str(bundle)]
    cmd += ["--out", str(out), "--device", args.device, "--threads", str(args.threads)]
    cmd += ["--inputs", *map(str, inputs)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    if args.device == "cpu":  # the Zoo configs pick cuda:0 whenever one is visible: hide it from both sides
        env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: " + (proc.stderr or proc.stdout)[-1500:]}
    return dict(json.loads((out / "result.json").read_text()))


def _agreement(a: Path, b: Path) -> float:
    import nibabel as nib

    x: Any = nib.load(str(a))
    y: Any = nib.load(str(b))
    xa, ya = np.asarray(x.dataobj).squeeze(), np.asarray(y.dataobj).squeeze()
    return float(np.mean(xa == ya)) if xa.shape == ya.shape else float("nan")


def _fmt(v: Any, unit: str = "") -> str:
    return "-" if v is None else f"{v:.2f}{unit}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bundles", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda / cuda:N")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated bundle names")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--child", choices=["service", "monai"], help=argparse.SUPPRESS)
    parser.add_argument("--bundle", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.side = args.child
        _child(args)
        return 0

    from models.testing.zoo import seed_bundle

    print(f"bench.bundles: device {args.device}, {args.threads} torch threads, baseline {BASELINE}, "
          f"target peak <= {TARGET_GB} GB per worker")  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-bundles-") as tmp_name:
        tmp = Path(tmp_name)
        for name in [c for c in args.cases.split(",") if c]:
            bundle = seed_bundle(SHARED / "zoo" / name, tmp / name / name, seed=args.seed)
            inputs = build_case(name, tmp / name / "case")
            import nibabel as nib

            shape = [len(inputs), *nib.load(str(inputs[0])).shape[:3]]  # type: ignore[attr-defined]
            print(f"\n{name}: input {'x'.join(map(str, shape))}", flush=True)
            res = {}
            for side in ("service", "monai"):
                res[side] = _run_side(side, bundle, inputs, tmp / name / side, args)
                print(
                    f"  {side if side == 'service' else BASELINE:13s} {json.dumps(res[side])[:400]}",
                    flush=True,
                )
            ok = "error" not in res["service"] and "error" not in res["monai"]
            agree = (
                _agreement(tmp / name / "service" / "labels.nii.gz", tmp / name / "monai" / "labels.nii.gz")
                if ok
                else None
            )
            rows.append((name, res, agree))
    print("\n| case | side | seconds | load s | peak RSS GB | peak GPU GB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, res, _ in rows:
        for side, label in (("service", "service"), ("monai", BASELINE)):
            r = res[side]
            if "error" in r:
                last = (r["error"].strip().splitlines() or ["killed"])[-1][:80]
                print(f"| {name} | {label} | error: {last} | | | |")
                continue
            cells = [r["seconds"], r["load_s"], r["peak_rss_gb"], r["peak_gpu_gb"]]
            print(f"| {name} | {label} | " + " | ".join(_fmt(c) for c in cells) + " |")
    print(f"\nratios service / {BASELINE} (lower is better), agreement of the label maps:")
    failed = False
    for name, res, agree in rows:
        s, m = res["service"], res["monai"]
        if "error" in s or "error" in m:
            print(f"  {name}: not compared (an error above)")
            failed = True
            continue
        within = s["peak_rss_gb"] <= TARGET_GB
        failed |= not within
        t_ratio, m_ratio = s["seconds"] / m["seconds"], s["peak_rss_gb"] / m["peak_rss_gb"]
        print(f"  {name}: seconds x{t_ratio:.2f}, peak memory x{m_ratio:.2f}"
              f" (service {s['peak_rss_gb']:.2f} GB: {'within' if within else 'OVER'} {TARGET_GB} GB),"
              f" agreement {agree:.4%}")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
