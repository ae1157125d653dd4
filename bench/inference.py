"""Benchmark: the bare network forward pass against the same model through the whole service, in one run.

Run from the repository root:

    .venv/bin/python -m bench.inference                    # (a), (f) and (b); about 4 minutes on 2 cores
    .venv/bin/python -m bench.inference --service-fp32     # also (b32): the service forced to fp32
    .venv/bin/python -m bench.inference --with-brainchop   # also (c), if the brainchop package runs here

Input: subject-a (``../shared/data/mri-brain/subject-a/norm.mgz``, 256³ 1 mm LIA), model
``brain-mri-structures`` (MeshNet, 18 classes), weights from ``../shared/models``.
  (a) bare: the plain MeshNet ``forward`` on the same cropped, min-max normalised (1, 1, d, h, w) tensor the
      Predictor builds, in the Predictor's channels-last memory layout (no service, no argmax, no
      resampling); one untimed warm-up pass first.
  (a0) the same in PyTorch's default (contiguous) layout: what channels-last saves (skip with
      ``--no-layout-baseline``).
  (f) fast bare: the same forward through the bf16 twin the worker may use on a CPU with avx512_bf16 or
      amx_bf16 (``models.meshnet.twin.bf16_twin``: first and last step fp32, the rest bf16), with the share
      of voxels whose labels equal (a)'s (the agreement rule; the 3-scan check is ``python -m
      bench.calibrate``). Not run on a CPU without native bf16.
  (b) service: ``segserve api`` + ``segserve worker`` subprocesses (tests.support.stack, an embedded Redis
      broker, SQLite), POST norm.mgz, poll the job every 0.25 s until ``succeeded``; the time is POST to
      result ready (the job's ``finished_at``). The worker is warmed by one prior job on the same scan,
      so model loading is not counted (a worker keeps its models loaded between jobs). The worker runs
      with its default CPU path (SEGSERVE_CPU_PRECISION=auto: bf16 where the model's calibration passes
      on this CPU); (b32), with ``--service-fp32``, is a second stack forced to fp32.
  (c) the ``brainchop`` PyPI package (tinygrad): not run by default: PROBES.md measured 24 min and 7.7 GB
      for this scan after several workarounds (model list fetched at import, needs clang, no .mgz input).
All sides use the same number of torch threads (``--threads``, default 2: the worker gets
SEGSERVE_TORCH_THREADS). (a) and (b) alternate (``--repeats`` each, default 3) so that both see the same
background load; the seconds shown are the best run of each side (the run least disturbed by other work on a
shared machine), the ratio is given on best runs and on medians, and the load average before and after.
The stack runs with the production lease (120 s) and recovery interval (30 s), not the tests' fast beats.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import nibabel
import numpy as np
import torch

from models.calibration import label_agreement, use_bf16
from models.catalog import Catalog
from models.cpu import CpuPath, cpu_flags, select_cpu_path
from models.meshnet.conform import conform
from models.meshnet.predictor import MEMORY_FORMAT, MeshNetPredictor
from models.meshnet.preprocess import foreground_box, intensity_range, normalise
from models.meshnet.twin import bf16_twin
from segserve.broker import EmbeddedRedis
from segserve.imaging.volume import Volume
from tests.support.paths import DATA, WEIGHTS
from tests.support.stack import Stack

MODEL = "brain-mri-structures"
SCAN = DATA / "mri-brain" / "subject-a" / "norm.mgz"
POLL_S = 0.25  # seconds between polls of a job (see _job_seconds)


def bare_input(predictor: MeshNetPredictor, volume: Volume) -> torch.Tensor:
    """The (1, 1, d, h, w) float32 tensor the Predictor feeds MeshNet for ``volume``."""
    conformed = conform(volume)
    box = foreground_box(conformed.array, predictor.crop_margin or 0)
    assert box is not None, "the scan is empty"
    low, high = intensity_range(conformed.array, predictor.normalisation)
    crop = normalise(conformed.array[box], low, high, clip=predictor.clip)
    return torch.from_numpy(np.ascontiguousarray(crop.transpose(predictor.axis_order)))[None, None]


def bare_forward(
    memory_format: torch.memory_format = MEMORY_FORMAT, bf16: CpuPath | None = None
) -> tuple[Callable[[], float], tuple[int, ...], Callable[[], torch.Tensor]]:
    """A function timing one bare forward pass (seconds), the input tensor's shape, and a function
    giving the labels (argmax of the logits) of one more pass.

    ``memory_format``: the layout of the network's weights and input; the Predictor's (channels-last) for
    (a), PyTorch's default (contiguous) for the layout baseline (a0). ``bf16``: the bf16 twin, for (f).
    """
    card = Catalog(WEIGHTS).card(MODEL)
    predictor = MeshNetPredictor.load(card, WEIGHTS)
    img = nibabel.load(SCAN)
    volume = Volume(np.asanyarray(img.dataobj), img.affine, "mgz")  # type: ignore[attr-defined]
    x = bare_input(predictor, volume).contiguous(memory_format=memory_format)
    network = bf16_twin(predictor.network, blocks=bf16.space_to_batch) if bf16 else predictor.network
    network.to(memory_format=memory_format)  # in place

    def run() -> float:
        with torch.inference_mode():
            start = time.perf_counter()
            network(x)
            return time.perf_counter() - start

    def labels() -> torch.Tensor:
        with torch.inference_mode():
            return network(x)[0].argmax(dim=0)

    return run, tuple(x.shape), labels


def _job_seconds(client: httpx.Client, scan: Path = SCAN) -> tuple[float, dict[str, float]]:
    """POST ``scan`` (subject-a), poll every POLL_S until succeeded.

    Returns seconds from POST to result ready, and a breakdown: the POST itself, queue (accepted ->
    claimed by the worker, from the job's timestamps) and run (claimed -> finished). Result ready is the
    job's ``finished_at`` (the worker's commit after the labels are written; same machine, same clock), not
    the poll that saw it: a poll's lag would count, and polling more often takes CPU from the worker (at
    50 ms the predict stage took 6.15-6.26 s against 5.51-5.78 s at 250 ms, 2 cores, 2026-11-28).
    """
    wall_start = time.time()
    start = time.perf_counter()
    with scan.open("rb") as fh:
        response = client.post("/v1/jobs", data={"model": MODEL}, files={"image": (scan.name, fh)})
    posted = time.perf_counter() - start
    if response.status_code != 202:
        raise RuntimeError(f"POST /v1/jobs answered {response.status_code}: {response.text}")
    job_id = response.json()["id"]
    while True:
        body = client.get(f"/v1/jobs/{job_id}").json()
        if body["status"] == "succeeded":
            created, started, finished = (
                datetime.fromisoformat(body[k]) for k in ("created_at", "started_at", "finished_at")
            )
            if finished.tzinfo is None:
                finished = finished.replace(tzinfo=UTC)
            total = finished.timestamp() - wall_start
            return total, {
                "post": posted,
                "queue": (started - created).total_seconds(),
                "run": (finished - started).total_seconds(),
            }
        if body["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"job {job_id} ended {body['status']}: {body.get('error')}")
        time.sleep(POLL_S)


@contextmanager
def service_stack(threads: int, precision: str = "auto", device: str = "cpu") -> Iterator[httpx.Client]:
    """A fresh api + worker stack (embedded broker, SQLite) and an admin client for it; ``precision``
    is the worker's SEGSERVE_CPU_PRECISION, ``device`` its SEGSERVE_DEVICE."""
    tmp = Path(tempfile.mkdtemp(prefix="segserve-bench-"))
    broker = EmbeddedRedis(tmp / "broker")
    broker.start()
    stack = Stack(
        tmp,
        {
            "SEGSERVE_REDIS_URL": broker.url,
            "SEGSERVE_MODELS_DIR": str(WEIGHTS),
            "SEGSERVE_TORCH_THREADS": str(threads),
            "SEGSERVE_CPU_PRECISION": precision,
            "SEGSERVE_DEVICE": device,
            "SEGSERVE_LOG_LEVEL": "WARNING",
            # Production defaults, not the tests' fast lease and recovery beats (extra CPU while timing).
            "SEGSERVE_LEASE_S": "120",
            "SEGSERVE_RECOVERY_INTERVAL_S": "30",
        },
    )
    try:
        stack.start()
        with stack.client(timeout=300) as client:
            yield client
    finally:
        stack.stop()
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def time_brainchop(model: str) -> tuple[float | None, str]:
    """Seconds for the brainchop CLI on subject-a (converted to NIfTI), or None and why not."""
    exe = shutil.which("brainchop")
    if exe is None:
        return None, "the brainchop package is not installed (pip install brainchop; see PROBES.md)"
    with tempfile.TemporaryDirectory() as tmp:
        nifti = Path(tmp) / "norm.nii.gz"
        img = nibabel.load(SCAN)
        nibabel.save(nibabel.Nifti1Image(np.asanyarray(img.dataobj), img.affine), nifti)  # type: ignore[attr-defined]
        start = time.perf_counter()
        done = subprocess.run(
            [exe, str(nifti), "-m", model, "-o", str(Path(tmp) / "out.nii.gz")],
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        return None, f"brainchop exited {done.returncode}: {done.stderr.strip()[-300:]}"
    return seconds, f"model {model}"


def _row(label: str, runs: list[float], note: str = "") -> str:
    return f"{label:<48} {min(runs):8.2f}   runs {[round(t, 2) for t in runs]}{note}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads, every side")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side, interleaved")
    parser.add_argument("--with-brainchop", action="store_true", help="also run (c), the brainchop package")
    parser.add_argument(
        "--no-layout-baseline",
        dest="layout_baseline",
        action="store_false",
        help="skip (a0), the bare forward in PyTorch's default (contiguous) memory layout",
    )
    parser.add_argument("--service-fp32", action="store_true", help="also (b32): a service forced to fp32")
    parser.add_argument("--brainchop-model", default="subcortical", help="brainchop model name for (c)")
    args = parser.parse_args(argv)
    if not SCAN.is_file() or not (WEIGHTS / "brainchop").is_dir():
        print(f"subject-a or the weights are missing under {DATA.parent} (set SEGSERVE_SHARED_DIR)")
        return 2
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    cpu = select_cpu_path("auto", cpu_flags())
    print(f"CPU path: {cpu.reason}")
    run_bare, shape, labels_bare = bare_forward()
    run_default = bare_forward(torch.contiguous_format)[0] if args.layout_baseline else None
    fast = bare_forward(bf16=cpu) if cpu.precision == "bf16" else None
    sides: dict[str, list[float]] = {"a": [], "a0": [], "f": []}
    runs: dict[str, list[tuple[float, dict[str, float]]]] = {"b": [], "b32": []}
    stacks = [("b", "auto")] + ([("b32", "fp32")] if args.service_fp32 else [])
    run_bare()  # warm-up of (a)
    if fast is not None:
        fast[0]()  # warm-up of (f)
    for name, precision in stacks:
        with service_stack(args.threads, precision) as client:
            _job_seconds(client)  # warm-up: the worker loads the model once and keeps it
            for _ in range(args.repeats):  # interleaved, so every side sees the same background load
                sides["a"].append(run_bare())
                runs[name].append(_job_seconds(client))
                if fast is not None:
                    sides["f"].append(fast[0]())
                if run_default is not None and name == "b":
                    sides["a0"].append(run_default())
    a = min(sides["a"])
    print(f"model {MODEL} on subject-a, input tensor {shape}, {args.threads} torch threads")
    print(f"{'side':<48} {'seconds':>8}")
    print(_row("(a) bare MeshNet forward, fp32 (channels-last)", sides["a"]))
    if sides["a0"]:
        note = f"   (a0)/(a) = {min(sides['a0']) / a:.2f}: what channels-last saves"
        print(_row("(a0) the same, PyTorch's default layout", sides["a0"], note))
    if fast is not None:
        agreement = label_agreement(fast[2]().numpy(), labels_bare().numpy())
        note = (
            f"   (a)/(f) = {a / min(sides['f']):.2f}; labels equal (a)'s on {100 * agreement:.3f} % of voxels"
        )
        print(_row("(f) fast bare forward (bf16 twin)", sides["f"], note))
    for name, label in (
        ("b", "(b) service: POST -> result ready (warm worker)"),
        ("b32", "(b32) service, fp32"),
    ):
        if runs[name]:
            print(_row(label, [total for total, _ in runs[name]]))
            for _, parts in runs[name]:
                print("    of which " + ", ".join(f"{k} {v:.2f} s" for k, v in parts.items()))
    if args.with_brainchop:
        c, why = time_brainchop(args.brainchop_model)
        text = f"{c:8.2f}   ({why}; (c)/(a) = {c / a:.2f})" if c is not None else f"{'not run':>8}   ({why})"
    else:
        text = f"{'not run':>8}   (24 min and 7.7 GB in PROBES.md; pass --with-brainchop)"
    print(f"{'(c) brainchop package (tinygrad)':<48} {text}")
    service = [total for total, _ in runs["b"]]
    b = min(service)
    medians = statistics.median(service) / statistics.median(sides["a"])
    print(
        f"ratio (b)/(a) = {b / a:.3f} on the best runs (target: service <= 6 s on a quiet machine, "
        f"i.e. below the fp32 forward); on medians: {medians:.3f}"
    )
    if sides["f"]:
        # The worker runs the twin only where the model's calibration passes (agreement and speed).
        card = Catalog(WEIGHTS).card(MODEL)
        used = "runs" if use_bf16(card, cpu)[0] else "does not run on this CPU (its calibration keeps fp32)"
        ratio = b / min(sides["f"])
        print(f"ratio (b)/(f) = {ratio:.3f}: the service over the bf16 forward, which it {used}")
    if runs["b32"]:
        print(
            f"ratio (b32)/(b) = {min(t for t, _ in runs['b32']) / b:.3f}: what the fast path saves end to end"
        )
    load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
