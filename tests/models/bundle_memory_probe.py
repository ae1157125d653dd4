"""Peak memory of one bundle prediction, run as its own process (the memory test's child).

    .venv/bin/python -m tests.models.bundle_memory_probe --shape 512 512 400   # the full-size figure

A 14-class MONAI UNet (channels 16..256, strides 2, 2 residual units, batch norm; deterministic weights),
roi 96³, overlap 0.25, sw_batch_size 4, on a synthetic CT-like int16 volume (body ellipse ~40 HU with
noise, organs, bone, air -1000) whose spacing equals the model's, so the network runs at full
resolution (the worst case: no downsampling). Prints JSON: shape, seconds, windows, peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from models.bundle.build import build, tiny_forward
from models.bundle.config import read_bundle
from models.bundle.install import card_from_bundle
from models.bundle.predictor import BundlePredictor
from models.testing.make_bundle import write_unet_bundle
from segserve.imaging.volume import Volume

SPACING = (0.8, 0.8, 1.0)


def synthetic_ct(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """int16 HU volume built one slice at a time (no full-size float temporaries)."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 <= 1
    organ = ((x - 0.3) / 0.25) ** 2 + ((y + 0.1) / 0.2) ** 2 <= 1
    bone = (x / 0.08) ** 2 + ((y - 0.45) / 0.08) ** 2 <= 1
    out = np.empty(shape, np.int16)
    for k in range(shape[2]):
        plane = np.where(body, 40, -1000).astype(np.float32)
        plane[organ] = 60 + 20 * np.sin(k / 15)
        plane[bone] = 700
        plane += rng.normal(0, 15, plane.shape).astype(np.float32)
        out[:, :, k] = plane.astype(np.int16)
    return out


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 400])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = (args.shape[0], args.shape[1], args.shape[2])
    with tempfile.TemporaryDirectory() as tmp:
        labels = {0: "background", **{c: f"organ-{c}" for c in range(1, 14)}}
        bundle = write_unet_bundle(
            Path(tmp) / "ct14",
            labels=labels,
            channels=(16, 32, 64, 128, 256),
            strides=(2, 2, 2, 2),
            num_res_units=2,
            roi_size=(96, 96, 96),
            pixdim=SPACING,
            window=(-1000.0, 1000.0),
            overlap=0.25,
            sw_batch_size=4,
        )
        pipeline = build(bundle)
        tiny_forward(pipeline)  # output channels, as install keeps them: enables the label path
        predictor = BundlePredictor(card_from_bundle(read_bundle(bundle), Path(tmp)), pipeline)
    volume = Volume(synthetic_ct(shape), np.diag([*SPACING, 1.0]), "nifti")
    before = vm_hwm_mb()
    windows: list[int] = []
    start = time.monotonic()
    out = predictor.predict(volume, on_progress=lambda f: windows.append(1))
    seconds = time.monotonic() - start
    assert out.shape == shape
    result = {
        "shape": list(shape),
        "classes": 14,
        "seconds": round(seconds, 1),
        "progress_reports": len(windows),
        "peak_rss_mb_before_predict": round(before),
        "peak_rss_mb": round(vm_hwm_mb()),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
