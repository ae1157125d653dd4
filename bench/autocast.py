"""Benchmark: the forward pass of a MONAI Zoo UNet and of an nnU-Net 3d_fullres network in fp32 against CPU
bf16 autocast (the bf16 path installed models get after a passing ``segserve models calibrate``), in one run.

Run from the repository root (about 3 minutes on 2 cores):

    .venv/bin/python -m bench.autocast
    .venv/bin/python -m bench.autocast --repeats 3 --threads 2

Networks (seeded random weights: no such weights can be downloaded here, and the arithmetic, so the time,
does not depend on the weights' values):
  - MONAI: ``spleen_ct_segmentation``'s ``network_def`` read from ``../shared/zoo`` and built with MONAI's
    bundle ConfigParser (UNet 16-256 channels, 2 residual units, batch norm), on one batch of its inferer
    (``sw_batch_size`` windows of ``roi_size``: 4 x 96³).
  - nnU-Net: the PlainConvUNet that nnU-Net's planner gives a 3d_fullres CT configuration (6 stages, 32-320
    features, instance norm, leaky ReLU), on one 128³ patch, built with dynamic_network_architectures as
    nnU-Net builds it.
Input: a window of the real spleen CT (``../shared/data/ct/spleen``), scaled as each pipeline scales it
(the Zoo's ScaleIntensityRange -57..164 HU to 0..1 clipped; nnU-Net's CT z-score with fixed statistics).
Baseline: the same network's fp32 forward, measured in the same run, alternating with bf16 (``--repeats``
each, best of each; one untimed warm-up of each first). Also printed: the share of voxels whose argmax
equals fp32's (with random weights the logits are close, so this is a floor on what trained weights give;
the rule a model must pass is measured on its real scans by ``segserve models calibrate``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from models.cpu import cpu_flags, select_cpu_path
from segserve.imaging.nifti import read_nifti

SHARED = Path(os.environ.get("SEGSERVE_SHARED_DIR", Path(__file__).resolve().parents[1].parent / "shared"))


def monai_unet() -> tuple[torch.nn.Module, tuple[int, ...]]:
    """The Zoo spleen bundle's network (seeded) and its inferer's batch shape."""
    from monai.bundle import ConfigParser

    config = json.loads((SHARED / "zoo/spleen_ct_segmentation/configs/inference.json").read_text())
    parser = ConfigParser({"network_def": config["network_def"]})
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    inferer = config["inferer"]
    return network.eval(), (int(inferer["sw_batch_size"]), 1, *inferer["roi_size"])


def nnunet_unet() -> tuple[torch.nn.Module, tuple[int, ...]]:
    """A 3d_fullres PlainConvUNet as nnU-Net plans it for CT (seeded), and one 128³ patch."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    torch.manual_seed(0)
    network = PlainConvUNet(
        input_channels=1,
        n_stages=6,
        features_per_stage=[32, 64, 128, 256, 320, 320],
        conv_op=torch.nn.Conv3d,
        kernel_sizes=[[3, 3, 3]] * 6,
        strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
        n_conv_per_stage=[2] * 6,
        num_classes=4,
        n_conv_per_stage_decoder=[2] * 5,
        conv_bias=True,
        norm_op=torch.nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=torch.nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
    )
    return network.eval(), (1, 1, 128, 128, 128)


def ct_windows(shape: tuple[int, ...], scale: Callable[[np.ndarray], np.ndarray]) -> torch.Tensor:
    """``shape`` (B, 1, D, H, W) filled with windows of the real spleen CT (edge-padded where it is
    smaller), scaled by ``scale``."""
    ct = np.asarray(read_nifti(SHARED / "data/ct/spleen/sub-spleen2_ct.nii.gz", "nifti").array, np.float32)
    size = shape[2:]
    ct = np.pad(ct, [(0, max(0, s - n)) for s, n in zip(size, ct.shape, strict=True)], mode="edge")
    batch = np.empty(shape, np.float32)
    for b in range(shape[0]):
        start = [(n - s) * (b + 1) // (shape[0] + 1) for s, n in zip(size, ct.shape, strict=True)]
        batch[b, 0] = ct[tuple(slice(a, a + s) for a, s in zip(start, size, strict=True))]
    return torch.from_numpy(scale(batch))


def timed(network: torch.nn.Module, x: torch.Tensor, bf16: bool) -> tuple[float, torch.Tensor]:
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
        start = time.perf_counter()
        out = network(x)
        return time.perf_counter() - start, out.float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = select_cpu_path("auto", cpu_flags())
    print(f"CPU path: {path.reason}; torch {torch.__version__}, {args.threads} threads")
    cases = {
        "MONAI spleen_ct_segmentation UNet, 4 x 96³": (
            monai_unet,
            lambda v: np.clip((v + 57.0) / (164.0 + 57.0), 0.0, 1.0),
        ),
        "nnU-Net 3d_fullres PlainConvUNet, 128³": (
            nnunet_unet,
            lambda v: (np.clip(v, -958, 327) - 82.0) / 136.0,
        ),
    }
    print("| network | fp32 s | bf16 autocast s | fp32 / bf16 | argmax equal |")
    print("| --- | --- | --- | --- | --- |")
    for name, (make, scale) in cases.items():
        network, shape = make()
        x = ct_windows(shape, scale)
        timed(network, x, False), timed(network, x, True)  # warm-up: oneDNN builds its kernels
        best = {False: float("inf"), True: float("inf")}
        outs = {}
        for _ in range(args.repeats):
            for bf16 in (False, True):
                seconds, outs[bf16] = timed(network, x, bf16)
                best[bf16] = min(best[bf16], seconds)
        equal = float((outs[True].argmax(1) == outs[False].argmax(1)).float().mean())
        print(
            f"| {name} | {best[False]:.2f} | {best[True]:.2f} | {best[False] / best[True]:.2f} "
            f"| {100 * equal:.3f} % |",
            flush=True,
        )


if __name__ == "__main__":
    main()
