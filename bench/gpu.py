"""GPU figures (#16, item 4), one prepared script: the 256³ brain end to end and a 512x512x400 CT through a
MONAI UNet bundle, each against the bare forward on the same device.

Run from the repository root on a machine with a CUDA GPU (a few minutes, most of it model loading):

    .venv/bin/python -m bench.gpu                          # device cuda, full sizes
    .venv/bin/python -m bench.gpu --device cpu --quick     # the same code on the CPU with small inputs: a
                                                           # check that the script runs (the test suite does)

(1) Brain: subject-a (``norm.mgz``, 256³ at 1 mm), model brain-mri-structures (MeshNet), weights from
    ../shared/models. ``--quick``: the 3-slice MPRAGE series instead (a small box for the network).
    bare fp32     the MeshNet forward on the Predictor's input tensor, already on the device
    bare bf16     the same under ``torch.autocast(device, torch.bfloat16)``, with its labels' agreement with
                  fp32 (the service's rule for a faster path: >= 99.9 %)
    file to file  one case in this process as a worker runs it: read the file, the service's
                  MeshNetPredictor on the device (host input pinned and copied without blocking on CUDA),
                  write the labels (.nii.gz)
    pipelined     CASES cases back to back, file to file: a reader thread decodes case i+1 and a writer
                  thread writes case i-1 while the device runs case i (seconds per case)
    service       POST -> result ready through ``segserve api`` + one ``segserve worker`` with
                  SEGSERVE_DEVICE set to the device (warm worker; bench.inference's stack)
(2) CT: the abdominal CT of ../shared/data resampled to 512x512x400 at 0.8x0.8x1.0 mm (``--quick``:
    96x96x48 at the bundle's own 1.5x1.5x2 mm), bundle spleen_ct_segmentation from ../shared/zoo with
    seeded weights (models/testing/zoo.py).
    bare fp32 / bf16  the bundle's own inferer (sliding window) and network over its preprocessed tensor,
                      already on the device
    predict       the service's bundle predictor (``predict`` on the volume in memory): preprocessing,
                  windows, postprocessing, labels back on the scan's grid
Times are the best of ``--repeats`` runs after one untimed warm-up, with ``torch.cuda.synchronize`` around
each on CUDA; peak GPU memory from ``torch.cuda.max_memory_allocated``. Goal (#16): the brain file to file
and through the service under 1 s.
"""

from __future__ import annotations

import argparse
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel
import numpy as np
import torch

from bench.bundles import _resample
from bench.inference import MODEL, SCAN, _job_seconds, bare_input, service_stack
from models.catalog import Catalog
from models.meshnet.predictor import MEMORY_FORMAT, MeshNetPredictor
from segserve.imaging.volume import Volume
from segserve.imaging.writers import write_labels_nifti
from segserve.scans.readers import read_image
from tests.support.paths import DATA, WEIGHTS

QUICK_SCAN = DATA / "dicom" / "mr-3slice"
CT = DATA / "ct" / "abdomen-totalseg" / "example_ct_sm.nii.gz"
ZOO = DATA.parent / "zoo"
BUNDLE = "spleen_ct_segmentation"
GOAL_S = 1.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(run: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """The best wall time of ``repeats`` calls of ``run`` after one untimed warm-up (device synchronised)."""
    run()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def _brain_paths(quick: bool) -> list[Path]:
    return sorted(QUICK_SCAN.glob("*")) if quick else [SCAN]


def brain(device: torch.device, quick: bool, repeats: int, cases: int, service: bool) -> dict[str, Any]:
    """The brain rows (module doc): seconds per side, agreement of bf16, peak GPU memory."""
    card = Catalog(WEIGHTS).card(MODEL)
    predictor = MeshNetPredictor.load(card, WEIGHTS, device=str(device))
    paths = _brain_paths(quick)
    volume = read_image(paths)
    network = predictor.network.to(memory_format=MEMORY_FORMAT)  # type: ignore[call-overload]
    x = bare_input(predictor, volume).to(device, memory_format=MEMORY_FORMAT)
    rows: dict[str, Any] = {"input": tuple(x.shape)}

    def forward(bf16: bool) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            return network(x)

    rows["bare fp32"] = best_of(lambda: forward(False), device, repeats)
    rows["bare bf16"] = best_of(lambda: forward(True), device, repeats)
    fp32_labels, bf16_labels = (forward(b)[0].float().argmax(dim=0) for b in (False, True))
    rows["bf16 agreement"] = float((fp32_labels == bf16_labels).float().mean())
    with tempfile.TemporaryDirectory(prefix="segserve-gpu-") as tmp:
        out = Path(tmp) / "labels.nii.gz"

        def file_to_file() -> None:
            case = read_image(paths)
            write_labels_nifti(predictor.predict(case), case, out)

        rows["file to file"] = best_of(file_to_file, device, repeats)
        rows["pipelined"] = pipelined(predictor, paths, Path(tmp), cases)
    if service:
        rows["service"] = _service_seconds(device, paths, repeats)
    if device.type == "cuda":
        rows["peak GPU GiB"] = torch.cuda.max_memory_allocated(device) / 1024**3
    return rows


def pipelined(predictor: MeshNetPredictor, paths: list[Path], tmp: Path, cases: int) -> float:
    """Seconds per case over ``cases`` cases, reading ahead and writing behind in threads (module doc)."""
    inbox: queue.Queue[Volume | None] = queue.Queue(maxsize=2)
    outbox: queue.Queue[tuple[int, np.ndarray, Volume] | None] = queue.Queue(maxsize=2)

    def reader() -> None:
        for _ in range(cases):
            inbox.put(read_image(paths))
        inbox.put(None)

    def writer() -> None:
        while (item := outbox.get()) is not None:
            index, labels, case = item
            write_labels_nifti(labels, case, tmp / f"case{index}.nii.gz")

    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    index = 0
    while (case := inbox.get()) is not None:
        outbox.put((index, predictor.predict(case), case))
        index += 1
    outbox.put(None)
    for thread in threads:
        thread.join()
    return (time.perf_counter() - start) / cases


def _service_seconds(device: torch.device, paths: list[Path], repeats: int) -> float:
    """Best POST -> result ready through the service with a worker on ``device`` (one warm-up job)."""
    with tempfile.TemporaryDirectory(prefix="segserve-gpu-post-") as tmp:
        scan = paths[0]
        if len(paths) > 1:  # a series: post it as one NIfTI file
            volume = read_image(paths)
            scan = Path(tmp) / "scan.nii.gz"
            nibabel.save(nibabel.Nifti1Image(volume.array, volume.affine), scan)  # type: ignore[attr-defined]
        with service_stack(threads=2, device=str(device)) as client:
            _job_seconds(client, scan)  # warm-up: the worker loads the model once and keeps it
            return min(_job_seconds(client, scan)[0] for _ in range(repeats))


def ct(device: torch.device, quick: bool, repeats: int) -> dict[str, Any]:
    """The CT rows (module doc)."""
    from models.formats import InstallOptions
    from models.install import install_models
    from models.predictor import load_predictor
    from models.testing.zoo import seed_bundle

    shape, spacing = ((96, 96, 48), (1.5, 1.5, 2.0)) if quick else ((512, 512, 400), (0.8, 0.8, 1.0))
    scan = nibabel.load(CT)
    array = np.round(_resample(np.asanyarray(scan.dataobj), shape)).astype(np.int16)  # type: ignore[attr-defined]
    volume = Volume(array, np.diag([*spacing, 1.0]), "nifti")
    rows: dict[str, Any] = {"input": shape}
    with tempfile.TemporaryDirectory(prefix="segserve-gpu-ct-") as tmp:
        bundle = seed_bundle(ZOO / BUNDLE, Path(tmp) / BUNDLE)
        models_dir = Path(tmp) / "models"
        install_models(bundle, models_dir, cards=[], options=InstallOptions(trust_code=True))
        predictor = load_predictor(Catalog(models_dir).card(BUNDLE), models_dir, str(device))
        pipeline = predictor.pipeline  # type: ignore[attr-defined]
        path = Path(tmp) / "ct.nii.gz"
        nibabel.save(nibabel.Nifti1Image(array, volume.affine), path)  # type: ignore[attr-defined]
        image = pipeline.preprocessing({"image": str(path)})["image"]
        x = torch.as_tensor(image)[None].to(device)
        rows["preprocessed"] = tuple(x.shape)

        def forward(bf16: bool) -> None:
            with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                pipeline.inferer(x, pipeline.network)

        rows["bare fp32"] = best_of(lambda: forward(False), device, repeats)
        rows["bare bf16"] = best_of(lambda: forward(True), device, repeats)
        rows["predict"] = best_of(lambda: predictor.predict(volume), device, repeats)
        shutil.rmtree(models_dir, ignore_errors=True)
    if device.type == "cuda":
        rows["peak GPU GiB"] = torch.cuda.max_memory_allocated(device) / 1024**3
    return rows


def _print(title: str, rows: dict[str, Any], baseline: str) -> None:
    print(title)
    base = rows.get(baseline)
    for name, value in rows.items():
        if isinstance(value, float) and name not in ("bf16 agreement", "peak GPU GiB"):
            ratio = f"   {value / base:.2f} x {baseline}" if base else ""
            print(f"  {name:<16} {value:8.3f} s{ratio}")
        elif name == "bf16 agreement":
            print(f"  {name:<16} {100 * value:8.3f} % of voxels (rule: >= 99.9 %)")
        else:
            print(f"  {name:<16} {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a check")
    parser.add_argument("--quick", action="store_true", help="small inputs (a check of the script)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side")
    parser.add_argument("--cases", type=int, default=4, help="cases of the pipelined brain side")
    parser.add_argument("--no-service", dest="service", action="store_false", help="skip the service side")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads in this process")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here (torch.cuda.is_available() is False); --device cpu checks the script")
        return 2
    if not SCAN.is_file() or not (ZOO / BUNDLE).is_dir():
        print(f"the real scans or the Zoo configurations are missing under {DATA.parent}")
        return 2
    torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"bench.gpu on {device} ({name}), torch {torch.__version__}, baseline: bare fp32 on the same device"
    )
    rows = brain(device, args.quick, args.repeats, args.cases, args.service)
    _print(f"brain {MODEL}, network input {rows.pop('input')}", rows, "bare fp32")
    for side in ("file to file", "service"):
        if side in rows:
            verdict = "met" if rows[side] < GOAL_S else "not met"
            print(f"  goal: {side} under {GOAL_S:.0f} s: {verdict}")
    rows = ct(device, args.quick, args.repeats)
    _print(f"CT {rows.pop('input')} -> {BUNDLE}, preprocessed {rows.pop('preprocessed')}", rows, "bare fp32")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
