"""A BraTS-like test bundle (4 MRI channels in, 3 nested sigmoid regions out) whose output is known exactly.

    write_brats_like_bundle(directory)   configs/metadata.json and configs/inference.json shaped like the
                                         Zoo's brats_mri_segmentation (channel_def T1c, T1, T2, FLAIR;
                                         outputs TC, WT, ET; NormalizeIntensityd nonzero channel_wise;
                                         Activationsd sigmoid, AsDiscreted threshold 0.5, a ``$lambda``
                                         Lambdad: ET 4, TC 1, WT 2, so installing it needs
                                         --trust-code), and models/model.ts: TorchScript
                                         that returns input channels (T1c, FLAIR, T1) as the (TC, WT, ET)
                                         logits, so each region is where its channel is brighter than the
                                         channel's non-zero mean.
    brats_like_case(shape)               the four channels of a synthetic case and the label map the
                                         service must return for it (1 TC not ET, 2 WT not TC, 4 ET:
                                         the bundle's Lambdad).

The T2 channel holds a decoy region the network never reads: swapping any two channels changes the result.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

CHANNELS = ("T1c", "T1", "T2", "FLAIR")
REGIONS = ("Tumor core", "Whole tumor", "Enhancing tumor")
# Output region c is input channel PICK[c]: TC <- T1c, WT <- FLAIR, ET <- T1.
PICK = (0, 3, 1)


class ChannelPick(nn.Module):
    """Logits (B, len(index), X, Y, Z): the chosen input channels of (B, C, X, Y, Z), minus 0.01.

    The shift keeps background (0 after the non-zero z-score) out of every region: MONAI's AsDiscreted
    thresholds with ``>=``, and sigmoid(0) is exactly 0.5."""

    def __init__(self, index: tuple[int, ...]) -> None:
        super().__init__()
        self.index = nn.Parameter(torch.tensor(index, dtype=torch.long), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.index_select(x, 1, self.index) - 0.01


def write_brats_like_bundle(directory: Path, roi_size: tuple[int, int, int] = (24, 24, 24)) -> Path:
    """Write the bundle into ``directory`` (created) and return it."""
    directory = Path(directory)
    (directory / "configs").mkdir(parents=True, exist_ok=True)
    (directory / "models").mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, len(CHANNELS), 8, 8, 8)
    torch.jit.save(torch.jit.trace(ChannelPick(PICK), example), str(directory / "models" / "model.ts"))
    patch = {"dtype": "float32", "is_patch_data": True, "spatial_shape": ["8*n", "8*n", "8*n"]}
    metadata = {
        "version": "0.1.0",
        "name": "BraTS-like test bundle",
        "task": "Multimodal brain tumour segmentation (test)",
        "description": "Channel picking stand-in for brats_mri_segmentation, generated for tests.",
        "authors": "segserve",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "MR",
                    "num_channels": len(CHANNELS),
                    "value_range": [],
                    "channel_def": {str(i): name for i, name in enumerate(CHANNELS)},
                    **patch,
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": len(REGIONS),
                    "value_range": [0, 1],
                    "channel_def": {str(i): name for i, name in enumerate(REGIONS)},
                    **patch,
                }
            },
        },
    }
    inference = {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True},
            ],
        },
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": list(roi_size),
            "sw_batch_size": 1,
            "overlap": 0.5,
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
                {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
                {
                    "_target_": "Lambdad",
                    "keys": "pred",
                    "func": "$lambda x: torch.where(x[[2]] > 0, 4, torch.where(x[[0]] > 0, 1, 2 * x[[1]]))",
                },
                {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir"},
            ],
        },
    }
    (directory / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2), encoding="utf-8")
    (directory / "configs" / "inference.json").write_text(json.dumps(inference, indent=2), encoding="utf-8")
    return directory


def brats_like_case(shape: tuple[int, int, int] = (40, 36, 30)) -> tuple[list[np.ndarray], np.ndarray]:
    """Four int16 channels (T1c, T1, T2, FLAIR), each (X, Y, Z), and the expected uint8 label map.

    Every channel is 100 inside a head box (0 outside) and 300 in its own box: T1c the tumour core, T1 the
    enhancing part (inside the core), FLAIR the whole tumour (around the core), T2 a decoy elsewhere.
    After the per-channel non-zero z-score, 300 is positive and 100 negative, so the bundle's regions are
    exactly those boxes, and background (0) stays 0, then -0.01 (ChannelPick), which is below 0.
    """
    x, y, z = shape
    head = (slice(2, x - 2), slice(2, y - 2), slice(2, z - 2))
    core = (slice(x // 4, x // 2 + 4), slice(y // 4, y // 2 + 4), slice(z // 4, z // 2 + 4))
    enhancing = (slice(x // 4 + 3, x // 2), slice(y // 4 + 3, y // 2), slice(z // 4 + 3, z // 2))
    whole = (slice(x // 4 - 4, x // 2 + 8), slice(y // 4 - 4, y // 2 + 8), slice(z // 4 - 3, z // 2 + 7))
    decoy = (slice(x - 10, x - 4), slice(4, 10), slice(z - 9, z - 4))
    channels = []
    for bright in (core, enhancing, decoy, whole):
        channel = np.zeros(shape, np.int16)
        channel[head] = 100
        channel[bright] = 300
        channels.append(channel)
    expected = np.zeros(shape, np.uint8)
    expected[whole] = 2
    expected[core] = 1
    expected[enhancing] = 4
    return channels, expected
